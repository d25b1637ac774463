// The composer: write to @name, @role, @group or @everyone, with a priority, or reply.
//
// It sends as the browser user (user.register bound the connection to user:<name>). Each draft
// carries a client_id, so pressing Send again after a dropped connection never posts twice.
// Errors are the daemon's own words; an unknown recipient comes with its close matches as
// buttons that fix the address.

import { h, replace } from "./dom.js";
import { shortName, snippet } from "./format.js";
import { ownMessageSent, state } from "./state.js";

function newClientId() {
  return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
}

export class Composer {
  constructor() {
    this.replyTo = null;
    this.clientId = newClientId();
    this.to = h("input", {
      id: "compose-to", name: "to", type: "text", list: "recipients", autocomplete: "off", spellcheck: "false",
      placeholder: "@everyone", "aria-describedby": "compose-to-hint",
    });
    this.priority = h("select", { id: "compose-priority", name: "priority" },
      ["normal", "high", "critical", "low"].map((p) => h("option", { value: p }, p)));
    this.content = h("textarea", {
      id: "compose-content", name: "content", rows: "2", required: true, "aria-describedby": "compose-content-hint",
    });
    this.sendBtn = h("button", { type: "submit", class: "primary" }, "Send");
    this.replyBox = h("div", { class: "reply-box", hidden: true });
    this.status = h("p", { class: "compose-status", role: "status" });
    this.error = h("div", { class: "compose-error", role: "alert" });
    this.datalist = h("datalist", { id: "recipients" });
    this.el = h("form", { class: "composer", "aria-labelledby": "compose-title", novalidate: true },
      h("h2", { id: "compose-title", class: "sr-only" }, "Write a message"),
      this.replyBox,
      h("div", { class: "compose-row" },
        h("div", { class: "field grow" },
          h("label", { for: "compose-to" }, "To ",
            h("span", { id: "compose-to-hint", class: "hint-inline" }, "@name, @role, @group or @everyone; several: separate with spaces")),
          this.to),
        h("div", { class: "field" },
          h("label", { for: "compose-priority" }, "Priority"),
          this.priority)),
      h("div", { class: "field" },
        h("label", { for: "compose-content" }, "Message ",
          h("span", { id: "compose-content-hint", class: "hint-inline" }, "Markdown; Ctrl+Enter sends")),
        this.content),
      h("div", { class: "compose-actions" }, this.sendBtn, this.status),
      this.error,
      this.datalist);
    this.el.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.send();
    });
    this.content.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        this.send();
      }
    });
    this.content.addEventListener("input", () => this.status.textContent = "");
  }

  /** Autocomplete: every agent, role and group. */
  updateRecipients() {
    const names = new Set(["everyone"]);
    for (const a of state.agents.values()) {
      if (a.kind === "user") continue;
      names.add(a.agent_id);
      if (a.role) names.add(a.role);
    }
    for (const g of state.groups) names.add(g.name);
    replace(this.datalist, [...names].sort().map((n) => h("option", { value: "@" + n })));
  }

  /** Prefill the recipient (an inbox view does this) unless the person already typed one. */
  suggestRecipient(agentId) {
    if (this.to.value.trim() || this.replyTo) return null;
    this.to.value = "@" + shortName(agentId);
    return this.to.value;
  }

  setReply(msg, { focus = true } = {}) {
    this.replyTo = msg;
    replace(this.replyBox,
      h("span", null, "Replying to ", h("strong", null, "@" + shortName(msg.agent_id)), ": ",
        h("q", null, snippet(msg.body && msg.body.content, 70))),
      " ",
      h("button", { type: "button", class: "linkish", onclick: () => this.clearReply(true) }, "Cancel reply"));
    this.replyBox.hidden = false;
    this.to.placeholder = "Optional: the author gets the reply anyway";
    if (focus) this.content.focus();
  }

  clearReply(focus = false) {
    this.replyTo = null;
    this.replyBox.hidden = true;
    this.replyBox.replaceChildren();
    this.to.placeholder = "@everyone";
    if (focus) this.content.focus();
  }

  showError(err) {
    const suggestions = (err.data && err.data.suggestions) || [];
    const unknown = err.data && err.data.unknown;
    replace(this.error,
      h("p", null, h("strong", null, "Not sent: "), err.message),
      suggestions.length ? h("p", { class: "suggestions" }, `Replace @${unknown} with: `,
        suggestions.map((s, i) => [i ? " " : "",
          h("button", { type: "button", class: "secondary", onclick: () => this.fixRecipient(unknown, s) }, "@" + s)]))
        : null);
  }

  fixRecipient(unknown, suggestion) {
    const parts = this.to.value.split(/[\s,]+/).filter(Boolean)
      .map((p) => (p.replace(/^@/, "") === unknown ? "@" + suggestion : p));
    this.to.value = parts.join(" ");
    this.error.replaceChildren();
    this.to.focus();
  }

  async send() {
    this.error.replaceChildren();
    this.status.textContent = "";
    const content = this.content.value;
    const mentions = this.to.value.split(/[\s,]+/).filter(Boolean);
    if (!content.trim()) {
      this.showError({ message: "the message is empty." });
      this.content.focus();
      return;
    }
    if (!mentions.length && !this.replyTo) {
      this.showError({ message: "add a recipient: @name, @role, @group, or @everyone for all." });
      this.to.focus();
      return;
    }
    const params = { content, priority: this.priority.value, client_id: this.clientId, format: "markdown" };
    if (mentions.length) params.mentions = mentions;
    if (this.replyTo) params.reply_to = this.replyTo.message_id;
    this.sendBtn.disabled = true;
    this.status.textContent = "Sending…";
    try {
      const res = await state.conn.call("message.send", params);
      this.content.value = "";
      this.priority.value = "normal";
      this.clientId = newClientId();
      this.clearReply();
      this.status.textContent = `Sent (${res.message_id}).`;
      ownMessageSent(res.message_id).catch(() => {});
    } catch (err) {
      this.status.textContent = "";
      this.showError(err.code === -1 || err.code === -2
        ? { message: `${err.message}. Your text is kept: press Send again once the page is connected.` }
        : err);
    } finally {
      this.sendBtn.disabled = false;
    }
  }
}
