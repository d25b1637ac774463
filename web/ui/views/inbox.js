// An agent's inbox: what is addressed to it (by name, role, group, or to everyone), with what
// it has not read yet. The browser user's own inbox marks messages read as they are shown,
// like `thrum inbox`; other agents' inboxes are only looked at, never marked.

import { h, replace } from "../dom.js";
import { shortName } from "../format.js";
import { MessageList } from "../messages.js";
import { isMe, on, refreshAgentsSoon, state } from "../state.js";

export function inboxView(app, agentId) {
  const mine = isMe(agentId);
  const unreadOnly = h("input", { type: "checkbox", id: "unread-only" });
  const counts = h("p", { class: "inbox-counts", "aria-live": "off" });
  const agentInfo = h("p", { class: "muted" });
  let list = null;
  let off = [];
  let refreshTimer = null;
  let suggested = null;

  function params() {
    const p = { for_agent: agentId };
    if (mine) p.exclude_self = true; // our own read state: the caller's
    else Object.assign(p, { exclude_author: agentId, read_state_for: agentId });
    if (unreadOnly.checked) p.unread = true;
    return p;
  }

  function makeList() {
    if (list) list.destroy();
    list = new MessageList({
      params: params(), label: `Inbox of @${shortName(agentId)}`, onReply: (m) => app.composer.setReply(m),
      readState: (m) => m.is_read === false, markRead: mine,
      empty: unreadOnly.checked ? "Nothing unread." : "Nothing addressed to this agent yet.",
      onCounts: (res) => {
        counts.textContent = `${res.unread.toLocaleString()} unread · ${(unreadOnly.checked ? "" : res.total.toLocaleString() + " in total")}`
          .replace(/ · $/, "");
      },
    });
    return list;
  }

  function describe() {
    const a = state.agents.get(agentId);
    if (!a) {
      agentInfo.textContent = state.agents.size ? "This agent is not registered here." : "";
      return;
    }
    replace(agentInfo, [a.display, a.kind === "user" ? "person using the web UI" : `${a.role} @ ${a.module}`,
      a.status === "active" ? "active" : "offline"].filter(Boolean).join(" · "));
  }

  return {
    title: mine ? "Your inbox" : `Inbox of @${shortName(agentId)}`,
    heading: mine ? "Your inbox" : `Inbox of @${shortName(agentId)}`,
    mount(container) {
      describe();
      const box = h("div", { class: "toolbar" },
        counts,
        h("label", { class: "check" }, unreadOnly, " Unread only"));
      container.append(agentInfo, box);
      const holder = h("div");
      container.append(holder);
      holder.append(makeList().el);
      list.reload();
      unreadOnly.addEventListener("change", () => {
        holder.replaceChildren(makeList().el);
        list.reload();
      });
      if (!mine) suggested = app.composer.suggestRecipient(agentId);
      off = [
        // Whether a new message is addressed to this agent depends on its roles and groups, which
        // the daemon knows: ask it again (coalesced) rather than guess.
        on("message", ({ kind, message }) => {
          if (kind !== "created") {
            list.live(message, kind);
            return;
          }
          clearTimeout(refreshTimer);
          refreshTimer = setTimeout(() => refreshTop(), 150);
        }),
        on("agents", describe),
        on("read", () => mine && refreshAgentsSoon()),
        on("ready", ({ reconnected }) => reconnected && list.reload()),
      ];
    },
    destroy() {
      clearTimeout(refreshTimer);
      off.forEach((f) => f());
      if (list) list.destroy();
      // Leaving the inbox: an address we filled in, still untouched and unused, goes too.
      if (suggested && app.composer.to.value === suggested && !app.composer.content.value.trim()) app.composer.to.value = "";
    },
  };

  async function refreshTop() {
    try {
      const res = await list.fetchPage(1);
      if (list.opts.onCounts) list.opts.onCounts(res);
      const fresh = res.messages.filter((m) => !list.items.has(m.message_id)).reverse();
      await list.decorate(fresh);
      for (const m of fresh) if (list.live(m, "created")) app.announceMessage(m);
      list.total = res.total; // live() counted them too
      list.renderSummary();
    } catch { /* reconnect reloads */ }
  }
}
