// A thread: the reply chain around one message. We walk up `reply_to` to the first message,
// then down through the replies of each level (one batched round trip per level), and show
// the result as a nested list. Messages that share a thread_id are included too.

import { h, replace } from "../dom.js";
import { shortName, snippet } from "../format.js";
import { renderMessage } from "../messages.js";
import { getMessages, on, remember, state } from "../state.js";

const MAX_DEPTH = 50;
const MAX_MESSAGES = 500;

export async function loadThread(messageId) {
  // Up to the root.
  let id = messageId;
  let root = null;
  for (let i = 0; i < MAX_DEPTH && id; i++) {
    const got = await getMessages([id]);
    const msg = got.get(id);
    if (!msg) break;
    root = msg;
    id = msg.reply_to;
  }
  if (!root) return null;
  const all = new Map([[root.message_id, root]]);
  // Down, one level per round trip.
  let level = [root.message_id];
  for (let depth = 0; depth < MAX_DEPTH && level.length && all.size < MAX_MESSAGES; depth++) {
    const replies = await state.conn.batch(level.map((pid) => ["message.list",
      { reply_to: pid, sort_order: "asc", page_size: 100, include_deleted: true }]));
    level = [];
    for (const r of replies) {
      for (const m of (r.result && r.result.messages) || []) {
        if (!all.has(m.message_id)) {
          all.set(m.message_id, remember(m));
          level.push(m.message_id);
        }
      }
    }
  }
  if (root.thread_id) {
    const res = await state.conn.call("message.list", { thread_id: root.thread_id, sort_order: "asc", page_size: 100 });
    res.messages.forEach((m) => all.has(m.message_id) || all.set(m.message_id, remember(m)));
  }
  return { root, messages: all };
}

function byTime(a, b) {
  return Date.parse(a.created_at) - Date.parse(b.created_at) || (a.message_id < b.message_id ? -1 : 1);
}

export function threadView(app, messageId) {
  const tree = h("div", { class: "thread" });
  const info = h("p", { class: "muted" });
  let messages = new Map();
  let root = null;
  let off = [];
  let autoReply = null; // the reply this view chose (not the person): undone when leaving it untouched
  const view = {
    title: "Thread",
    heading: "Thread",
    mount(container) {
      container.append(info, tree);
      load();
      off = [
        on("message", ({ kind, message }) => {
          const belongs = messages.has(message.message_id) || (message.reply_to && messages.has(message.reply_to))
            || (root && root.thread_id && message.thread_id === root.thread_id);
          if (!belongs) return;
          messages.set(message.message_id, message);
          render();
          if (kind === "created") app.announceMessage(message);
        }),
        on("ready", ({ reconnected }) => reconnected && load()),
      ];
    },
    destroy() {
      off.forEach((f) => f());
      if (autoReply && app.composer.replyTo === autoReply && !app.composer.content.value.trim()) app.composer.clearReply();
    },
  };

  async function load() {
    tree.setAttribute("aria-busy", "true");
    try {
      const result = await loadThread(messageId);
      if (!result) {
        replace(tree, h("p", null, `No message ${messageId} here. `, h("a", { href: "/" }, "Back to the feed")));
        info.textContent = "";
        return;
      }
      root = result.root;
      messages = result.messages;
      render();
      const focused = messages.get(messageId);
      if (focused && !app.composer.replyTo) {
        app.composer.setReply(focused, { focus: false });
        autoReply = focused;
      }
    } catch (err) {
      replace(tree, h("p", null, `Could not load the thread: ${err.message}`));
    } finally {
      tree.setAttribute("aria-busy", "false");
    }
  }

  function render() {
    const children = new Map();
    for (const m of messages.values()) {
      const parent = m.reply_to && messages.has(m.reply_to) ? m.reply_to : (m === root ? null : root.message_id);
      if (m === root) continue;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(m);
    }
    const people = new Set([...messages.values()].map((m) => "@" + shortName(m.agent_id)));
    info.textContent = `${messages.size} message${messages.size === 1 ? "" : "s"} · ${[...people].join(", ")}`;
    document.title = `Thread: ${snippet(root.body && root.body.content, 40)} · thrum`;
    const branch = (m, depth) => h("li", { class: depth ? "reply" : "root" },
      renderMessage(m, { inThread: true, current: m.message_id === messageId, onReply: (x) => app.composer.setReply(x) }),
      children.has(m.message_id)
        ? h("ol", { class: "replies", "aria-label": `Replies to @${shortName(m.agent_id)}` },
          children.get(m.message_id).sort(byTime).map((c) => branch(c, depth + 1)))
        : null);
    replace(tree, h("ol", { class: "thread-tree", "aria-label": "Messages in this thread" }, branch(root, 0)));
    const cur = tree.querySelector(".msg.current");
    if (cur) cur.setAttribute("aria-current", "true");
  }

  return view;
}
