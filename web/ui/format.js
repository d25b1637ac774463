// Formatting: times, names, recipients, and a deliberately small Markdown subset built from
// DOM nodes (paragraphs, fenced code, inline code, bold, links). No images: a message must never
// make the page fetch anything, and no raw HTML: message text is always text.

import { h } from "./dom.js";

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });

/** <time> with a short text (time today, date otherwise) and the full date as a tooltip. */
export function timeEl(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h("span", null, iso || "");
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return h("time", { datetime: iso, title: fullFmt.format(d) }, sameDay ? timeFmt.format(d) : dateTimeFmt.format(d));
}

/** "just now", "5 min ago", "3 h ago", "2 d ago". */
export function ago(iso) {
  const t = new Date(iso).getTime();
  if (!iso || Number.isNaN(t)) return "";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** `user:leon` -> `leon`; agent ids are names already. */
export function shortName(agentId) {
  return agentId && agentId.startsWith("user:") ? agentId.slice(5) : agentId || "";
}

/** Who a message was addressed to, from its refs and scopes: ["@bob", "@backend"], or [] for a broadcast. */
export function recipients(msg) {
  const out = [];
  const seen = new Set();
  for (const ref of msg.refs || []) {
    if ((ref.type === "mention" || ref.type === "group") && !seen.has(ref.value)) {
      seen.add(ref.value);
      out.push("@" + ref.value);
    }
  }
  for (const sc of msg.scopes || []) {
    if (sc.type === "group" && !seen.has(sc.value)) {
      seen.add(sc.value);
      out.push("@" + sc.value);
    }
  }
  return out;
}

/** Scopes other than groups (e.g. module:auth), shown as tags. */
export function tags(msg) {
  return (msg.scopes || []).filter((s) => s.type !== "group").map((s) => `${s.type}:${s.value}`);
}

// -- Markdown subset --------------------------------------------------------------------------

const LINK_RE = /\bhttps?:\/\/[^\s<>()"']+[^\s<>()"'.,;:!?]/g;

function inline(text) {
  // `code` first (nothing inside it is formatted), then **bold**, then bare links.
  const out = [];
  const parts = text.split(/(`[^`\n]+`)/g);
  for (const part of parts) {
    if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      out.push(h("code", null, part.slice(1, -1)));
      continue;
    }
    const boldParts = part.split(/(\*\*[^*\n]+\*\*)/g);
    for (const bp of boldParts) {
      if (bp.length > 4 && bp.startsWith("**") && bp.endsWith("**")) out.push(h("strong", null, links(bp.slice(2, -2))));
      else out.push(...links(bp));
    }
  }
  return out;
}

function links(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(LINK_RE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    // noreferrer: the daemon's address (and nothing else) stays here; the link opens elsewhere.
    out.push(h("a", { href: m[0], rel: "noopener noreferrer", target: "_blank" }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

/** Render message content: markdown (subset), plain (as is) or json (pretty). */
export function renderBody(body) {
  const content = (body && body.content) || "";
  const format = (body && body.format) || "markdown";
  if (format === "json") {
    let pretty = content;
    try {
      pretty = JSON.stringify(JSON.parse(content), null, 2);
    } catch { /* shown as sent */ }
    return h("div", { class: "body" }, h("pre", null, h("code", null, pretty)));
  }
  if (format === "plain") return h("div", { class: "body plain" }, content);
  const root = h("div", { class: "body" });
  const lines = content.split("\n");
  let para = [];
  const flush = () => {
    if (para.length) {
      const p = h("p");
      para.forEach((line, i) => {
        if (i) p.append(h("br"));
        p.append(...inline(line).map((n) => (n instanceof Node ? n : document.createTextNode(n))));
      });
      root.append(p);
      para = [];
    }
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.trimStart().startsWith("```")) {
      flush();
      const code = [];
      i++;
      while (i < lines.length && !lines[i].trimStart().startsWith("```")) code.push(lines[i++]);
      root.append(h("pre", null, h("code", null, code.join("\n"))));
    } else if (!line.trim()) {
      flush();
    } else {
      para.push(line);
    }
  }
  flush();
  return root;
}

/** First line, cut to `n` characters: for "in reply to …" lines and titles. */
export function snippet(text, n = 80) {
  const first = (text || "").split("\n").find((l) => l.trim()) || "";
  return first.length > n ? first.slice(0, n - 1) + "…" : first;
}
