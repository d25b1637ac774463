// Recent threads: the conversations among the latest messages. A reply names its parent, so
// we climb from each recent reply to the first message of its chain and group by that.

import { h, replace } from "../dom.js";
import { ago, shortName, snippet } from "../format.js";
import { getMessages, on, remember, state } from "../state.js";

const SCAN = 200; // latest messages looked at

export function threadsView() {
  const list = h("div", { class: "threads" });
  let off = [];
  let timer = null;

  async function load() {
    list.setAttribute("aria-busy", "true");
    try {
      const pages = await state.conn.batch([1, 2].map((page) => ["message.list", { page, page_size: SCAN / 2 }]));
      const recent = pages.flatMap((p) => (p.result ? p.result.messages : []));
      recent.forEach(remember);
      const rootOf = new Map();
      // Climb level by level: one batch of message.get per level for the parents we lack.
      let frontier = recent.filter((m) => m.reply_to);
      const climb = new Map(frontier.map((m) => [m.message_id, m.reply_to]));
      for (let depth = 0; depth < 50 && frontier.length; depth++) {
        const parents = await getMessages(frontier.map((m) => m.reply_to));
        const next = [];
        for (const m of frontier) {
          const p = parents.get(m.reply_to);
          if (p && p.reply_to) next.push(p);
        }
        frontier = next;
      }
      for (const m of recent.filter((x) => x.reply_to)) {
        let cur = m;
        for (let i = 0; i < 50 && cur.reply_to && state.messages.has(cur.reply_to); i++) cur = state.messages.get(cur.reply_to);
        rootOf.set(m.message_id, cur);
      }
      const threads = new Map();
      for (const m of recent.filter((x) => climb.has(x.message_id))) {
        const root = rootOf.get(m.message_id);
        const t = threads.get(root.message_id) || { root, replies: [], people: new Set([root.agent_id]), last: root.created_at };
        t.replies.push(m);
        t.people.add(m.agent_id);
        if (Date.parse(m.created_at) > Date.parse(t.last)) t.last = m.created_at;
        threads.set(root.message_id, t);
      }
      const sorted = [...threads.values()].sort((a, b) => Date.parse(b.last) - Date.parse(a.last));
      if (!sorted.length) {
        replace(list, h("p", null, `No replies among the latest ${SCAN} messages. Reply to a message to start a thread.`));
        return;
      }
      replace(list, h("ol", { class: "thread-list", "aria-label": "Threads, most recent activity first" },
        sorted.map((t) => h("li", null,
          h("a", { href: `/thread/${encodeURIComponent(t.root.message_id)}`, class: "thread-link" },
            snippet(t.root.body && t.root.body.content, 90) || "(empty message)"),
          h("p", { class: "muted" },
            `${t.replies.length} recent repl${t.replies.length === 1 ? "y" : "ies"} · `,
            [...t.people].map((p) => "@" + shortName(p)).join(", "),
            " · last ", h("time", { datetime: t.last, title: t.last }, ago(t.last)))))));
    } catch (err) {
      replace(list, h("p", null, `Could not load threads: ${err.message}`));
    } finally {
      list.setAttribute("aria-busy", "false");
    }
  }

  return {
    title: "Threads",
    heading: "Threads",
    intro: `Conversations with replies among the latest ${SCAN} messages, most recent activity first.`,
    mount(container) {
      container.append(list);
      load();
      off = [
        on("message", ({ kind, message }) => {
          if (kind === "created" && message.reply_to) {
            clearTimeout(timer);
            timer = setTimeout(load, 300);
          }
        }),
        on("ready", ({ reconnected }) => reconnected && load()),
      ];
    },
    destroy() {
      clearTimeout(timer);
      off.forEach((f) => f());
    },
  };
}
