// Search: message.search over the WebSocket, best matches first. The daemon marks the matching
// words with two control characters we ask for, so the snippet is split into text and <mark>
// nodes here (never markup from the message); each hit opens its message in its thread.

import { h, replace } from "../dom.js";
import { ago, shortName, timeEl } from "../format.js";
import { state } from "../state.js";

const START = "\u0002";
const END = "\u0003";
const LIMIT = 50;

/** A snippet with START…END markers -> text nodes and <mark> elements. */
export function highlighted(text) {
  const out = [];
  let inside = false;
  for (const part of (text || "").split(/([\u0002\u0003])/)) {
    if (part === START) inside = true;
    else if (part === END) inside = false;
    else if (part) out.push(inside ? h("mark", null, part) : part);
  }
  return out;
}

function hitItem(hit) {
  return h("li", { class: "hit" },
    h("a", { href: `/thread/${encodeURIComponent(hit.message_id)}`, class: "hit-link", dataset: { messageId: hit.message_id } },
      h("span", { class: "hit-head" },
        h("strong", { class: "author" }, "@" + shortName(hit.author)), " · ", timeEl(hit.created_at),
        h("span", { class: "muted" }, ` (${ago(hit.created_at)})`),
        hit.thread_id ? h("span", { class: "muted" }, ` · thread ${hit.thread_id}`) : null),
      h("span", { class: "hit-snippet" }, highlighted(hit.snippet))));
}

export function searchView(app, query) {
  const status = h("p", { class: "muted", role: "status" });
  const list = h("ol", { class: "search-results", "aria-label": "Search results" });
  let alive = true;
  const view = {
    title: query ? `Search: ${query}` : "Search",
    heading: query ? `Search: ${query}` : "Search",
    intro: "Words (all must match), \"a phrase\", prefix*, AND / OR / NOT. Best matches first; open one to read it in its thread.",
    mount(container) {
      container.append(status, list);
      const box = document.getElementById("search-q");
      if (box && box.value !== query) box.value = query;
      if (query.trim()) run();
      else status.textContent = "Type what you are looking for in the search box.";
    },
    destroy() {
      alive = false;
    },
  };

  async function run() {
    list.setAttribute("aria-busy", "true");
    status.textContent = "Searching…";
    try {
      const r = await state.conn.call("message.search", { query, limit: LIMIT, highlight: [START, END] });
      if (!alive) return;
      const n = r.hits.length;
      const building = r.not_indexed_yet
        ? ` The search index is catching up: ${r.not_indexed_yet.toLocaleString()} messages not searched yet.`
        : "";
      status.textContent = (n
        ? `${n}${n === LIMIT ? "+" : ""} message${n === 1 ? "" : "s"} found, best first${r.searched_all || building ? "" : " (ranked among the newest)"}.`
        : `No messages match “${query}”.`) + building;
      replace(list, r.hits.map(hitItem));
    } catch (err) {
      if (!alive) return;
      status.textContent = "";
      replace(list, h("li", { class: "search-error", role: "alert" }, `Cannot search for that: ${err.message}`));
    } finally {
      list.setAttribute("aria-busy", "false");
    }
  }

  return view;
}
