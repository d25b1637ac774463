// A message, and a paged list of messages that grows live.
//
// Lists load 50 messages at a time (newest first) and never hold more than MAX_RENDERED in the
// page: with 10,000 messages in a repository, the browser only ever sees a window of them.

import { h, replace } from "./dom.js";
import { recipients, renderBody, shortName, snippet, tags, timeEl } from "./format.js";
import { receiptsLine, wantReceipts } from "./receipts.js";
import { emit, getMessages, isOwn, remember, state } from "./state.js";

const PAGE_SIZE = 50;
const MAX_RENDERED = 600;

// RFC 3339 strings with different fractional digits do not sort as text; message ids (ULIDs) break ties.
function newer(a, b) {
  const d = Date.parse(a.created_at) - Date.parse(b.created_at);
  return d > 0 || (d === 0 && a.message_id > b.message_id);
}

/** Link to an agent's inbox (client-side route). */
export function agentLink(agentId, cls = "author") {
  const agent = state.agents.get(agentId);
  const label = "@" + shortName(agentId);
  return h("a", {
    href: `/inbox/${encodeURIComponent(agentId)}`, class: cls,
    title: agent ? [agent.display, agent.role && `${agent.role} @ ${agent.module}`].filter(Boolean).join(" · ") : null,
  }, label);
}

/**
 * One message as an <article>. opts: {unread, replies, onReply, current}.
 * Everything the author wrote goes in as text nodes (format.js), never as markup.
 */
export function renderMessage(msg, opts = {}) {
  const to = recipients(msg);
  const headId = `m-${msg.message_id}-h`;
  const parent = msg.reply_to ? state.messages.get(msg.reply_to) : null;
  const prio = msg.priority && msg.priority !== "normal" ? msg.priority : null;
  const edited = msg.updated_at && !msg.deleted;
  const actions = [];
  if (opts.onReply && !msg.deleted) {
    actions.push(h("button", {
      type: "button", class: "linkish", onclick: () => opts.onReply(msg),
      "aria-label": `Reply to @${shortName(msg.agent_id)}`,
    }, "Reply"));
  }
  const replies = opts.replies || 0;
  if (!opts.inThread && (msg.reply_to || replies > 0)) {
    actions.push(h("a", { href: `/thread/${encodeURIComponent(msg.message_id)}` },
      replies ? `Thread (${replies} ${replies === 1 ? "reply" : "replies"})` : "Thread"));
  } else if (!opts.inThread) {
    actions.push(h("a", { href: `/thread/${encodeURIComponent(msg.message_id)}`, class: "quiet" }, "Open"));
  }
  return h("article", {
    class: ["msg", opts.unread && "unread", prio && `prio-${prio}`, msg.deleted && "deleted", opts.current && "current"]
      .filter(Boolean).join(" "),
    "aria-labelledby": headId, dataset: { id: msg.message_id },
  },
  h("header", { class: "msg-head", id: headId },
    agentLink(msg.agent_id),
    msg.authored_by ? h("span", { class: "muted" }, ` (written by @${shortName(msg.authored_by)})`) : null,
    h("span", { class: "to" },
      h("span", { class: "arrow", "aria-hidden": "true" }, " → "),
      h("span", { class: "sr-only" }, " to "),
      to.length ? to.join(", ") : h("span", { class: "muted" }, "everyone (broadcast)")),
    prio ? h("span", { class: `badge prio prio-${prio}` }, prio) : null,
    opts.unread ? h("span", { class: "badge unread-badge" }, "unread") : null,
    " ", timeEl(msg.created_at)),
  msg.reply_to ? h("p", { class: "inreply" },
    h("span", { "aria-hidden": "true" }, "↳ "), "in reply to ",
    h("a", { href: `/thread/${encodeURIComponent(msg.reply_to)}` },
      parent ? `@${shortName(parent.agent_id)}: ${snippet(parent.body && parent.body.content, 60)}` : "a message")) : null,
  msg.deleted ? h("p", { class: "body muted" }, "This message was deleted.") : renderBody(msg.body),
  h("footer", { class: "msg-foot" },
    ...actions,
    ...tags(msg).map((t) => h("span", { class: "tag" }, t)),
    edited ? h("span", { class: "muted", title: `edited ${msg.updated_at}` }, "(edited)") : null,
    receiptsLine(msg)));
}

/**
 * A list of messages from message.list with `params`, newest first, with "Load older" and
 * live insertion. opts: {params, onReply, readState: (msg) => unread?, markRead: bool, empty: text}
 */
export class MessageList {
  constructor(opts) {
    this.opts = opts;
    this.items = new Map();     // message_id -> {msg, li}
    this.replyCounts = new Map();
    this.page = 0;              // pages loaded so far
    this.total = 0;
    this.done = false;
    this.trimmedTop = false;    // newer messages were dropped to keep the window small
    this.pendingNew = 0;        // live messages not shown while trimmedTop
    this.loading = false;
    this.list = h("ol", { class: "messages", "aria-label": opts.label || "Messages" });
    this.topNote = h("div", { class: "list-note" });
    this.summary = h("p", { class: "list-summary muted" });
    this.moreBtn = h("button", { type: "button", class: "secondary", onclick: () => this.loadOlder() }, "Load older messages");
    this.sentinel = h("div", { class: "sentinel", "aria-hidden": "true" });
    this.el = h("section", { class: "message-list", "aria-busy": "true" },
      this.topNote, this.list, h("div", { class: "list-foot" }, this.summary, this.moreBtn), this.sentinel);
    // Load more when the end of the list scrolls into view, as well as on the button.
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && this.page > 0 && !this.done && !this.loading) this.loadOlder();
    }, { rootMargin: "400px" });
    this.observer.observe(this.sentinel);
  }

  destroy() {
    this.observer.disconnect();
  }

  async reload() {
    this.items.clear();
    this.replyCounts.clear();
    this.list.replaceChildren();
    this.page = 0;
    this.done = false;
    this.trimmedTop = false;
    this.pendingNew = 0;
    this.renderTopNote();
    await this.loadOlder();
  }

  async fetchPage(page) {
    return state.conn.call("message.list", { ...this.opts.params, page, page_size: PAGE_SIZE });
  }

  async loadOlder() {
    if (this.loading || this.done) return;
    this.loading = true;
    this.el.setAttribute("aria-busy", "true");
    this.moreBtn.disabled = true;
    try {
      // Pages shift while messages arrive, so a page can hold only messages we already show:
      // then take the next one too.
      for (let tries = 0; tries < 3; tries++) {
        const res = await this.fetchPage(this.page + 1);
        this.page += 1;
        this.total = res.total;
        if (this.opts.onCounts) this.opts.onCounts(res);
        const fresh = res.messages.filter((m) => !this.items.has(m.message_id));
        fresh.forEach(remember);
        await this.decorate(fresh);
        for (const m of fresh) this.add(m, false);
        if (res.page >= res.total_pages || res.messages.length === 0) this.done = true;
        if (fresh.length || this.done) break;
      }
      this.trimBottomFirst();
      this.markRead([...this.items.values()].map((i) => i.msg));
    } catch (err) {
      this.summary.textContent = `Could not load messages: ${err.message}`;
      this.loading = false;
      this.moreBtn.disabled = false;
      this.el.setAttribute("aria-busy", "false");
      return;
    }
    this.loading = false;
    this.el.setAttribute("aria-busy", "false");
    this.renderSummary();
  }

  // Parents (for "in reply to"), reply counts and our own messages' receipts, asked for at once:
  // the page waits one round trip, however many messages it has.
  async decorate(msgs) {
    if (!msgs.length) return;
    const parents = msgs.map((m) => m.reply_to).filter(Boolean);
    const counts = state.conn.batch(msgs.map((m) => ["message.list", { reply_to: m.message_id, page_size: 1 }]));
    const receipts = wantReceipts(msgs.filter(isOwn).map((m) => m.message_id));
    const [, countReplies] = await Promise.all([getMessages(parents).catch(() => null), counts, receipts]);
    countReplies.forEach((r, i) => {
      if (r.result && r.result.total) this.replyCounts.set(msgs[i].message_id, r.result.total);
    });
  }

  renderItem(msg) {
    return renderMessage(msg, {
      unread: this.opts.readState ? this.opts.readState(msg) : false,
      replies: this.replyCounts.get(msg.message_id) || 0,
      onReply: this.opts.onReply,
    });
  }

  /** Insert in created_at order (newest first); `live` marks it as just arrived. */
  add(msg, live) {
    const existing = this.items.get(msg.message_id);
    if (existing) {
      existing.msg = msg;
      existing.li.replaceChildren(this.renderItem(msg));
      return false;
    }
    const li = h("li", null, this.renderItem(msg));
    if (live) li.classList.add("arrived");
    const entry = { msg, li };
    // Newest first: find the first rendered message older than this one.
    let before = null;
    for (const child of this.list.children) {
      const other = this.items.get(child.dataset.id);
      if (other && newer(msg, other.msg)) {
        before = child;
        break;
      }
    }
    li.dataset.id = msg.message_id;
    this.list.insertBefore(li, before);
    this.items.set(msg.message_id, entry);
    return true;
  }

  /** A message that arrived by push. Returns whether it was shown. */
  live(msg, kind) {
    if (this.items.has(msg.message_id)) {
      this.add(msg, false);
      return true;
    }
    if (kind !== "created") return false;
    if (msg.reply_to && this.items.has(msg.reply_to)) {
      this.replyCounts.set(msg.reply_to, (this.replyCounts.get(msg.reply_to) || 0) + 1);
      this.add(this.items.get(msg.reply_to).msg, false); // re-render its "Thread (n)" link
    }
    if (this.trimmedTop) {
      this.pendingNew += 1;
      this.renderTopNote();
      return false;
    }
    this.add(msg, true);
    this.total += 1;
    this.trimTopFirst();
    this.markRead([msg]);
    this.renderSummary();
    return true;
  }

  // Keep at most MAX_RENDERED: loading older history drops the newest, and vice versa.
  trimBottomFirst() {
    while (this.items.size > MAX_RENDERED) {
      const first = this.list.firstElementChild;
      this.items.delete(first.dataset.id);
      first.remove();
      this.trimmedTop = true;
    }
    this.renderTopNote();
  }

  trimTopFirst() {
    while (this.items.size > MAX_RENDERED) {
      const last = this.list.lastElementChild;
      this.items.delete(last.dataset.id);
      last.remove();
      this.done = false;
      this.page = Math.max(0, Math.floor(this.items.size / PAGE_SIZE));
    }
  }

  renderTopNote() {
    if (!this.trimmedTop) {
      this.topNote.replaceChildren();
      return;
    }
    replace(this.topNote,
      h("span", null, this.pendingNew
        ? `${this.pendingNew} newer message${this.pendingNew === 1 ? "" : "s"} not shown. `
        : "Newer messages are not shown while you read older ones. "),
      h("button", { type: "button", class: "secondary", onclick: () => this.reload() }, "Jump to newest"));
  }

  renderSummary() {
    const shown = this.items.size;
    if (!shown) {
      this.summary.textContent = this.opts.empty || "No messages yet.";
    } else {
      this.summary.textContent = `Showing ${shown.toLocaleString()} of ${this.total.toLocaleString()} message${this.total === 1 ? "" : "s"}.`;
    }
    this.moreBtn.hidden = this.done;
    this.moreBtn.disabled = this.loading;
  }

  // Only the page's own user's inbox marks messages read: what the person has seen.
  markRead(msgs) {
    if (!this.opts.markRead) return;
    const ids = msgs.filter((m) => this.opts.readState && this.opts.readState(m)).map((m) => m.message_id);
    if (!ids.length) return;
    state.conn.call("message.markRead", { message_ids: ids }).then(() => emit("read", ids), () => {});
  }
}
