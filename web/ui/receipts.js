// Delivery receipts on the messages we wrote: which recipients have the message in their context
// (delivered: a runtime hook injected it, `inbox --peek` showed it) and which have read it.
//
// Only our own messages get a receipts line, and only they are asked about. message.get answers
// carry receipts already (state.remember keeps them); for messages that came from message.list,
// the ids on screen are gathered and asked for in one batch of message.receipts (rpc.js cuts it
// into frames of at most 100). After that, notification.receipt keeps them current: the daemon
// pushes it to the author's connections, this page's included, so nothing polls.

import { h, replace } from "./dom.js";
import { shortName } from "./format.js";
import { advanceReceipt, isOwn, noteReceipts, state } from "./state.js";

const MAX_NAMES = 8; // names shown per state; the rest as "and N more" (a broadcast reaches everyone)
const GATHER_MS = 10;

const timeFmt = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

const queued = new Set();
const inflight = new Set();
let flushing = null; // the promise of the next batch, shared by everyone who queued into it

/**
 * Ask the daemon for these messages' receipts, batched with whatever else is asked for within a
 * few milliseconds. Ids we hold (or are fetching) are skipped unless `force`. Resolves when done.
 */
export function wantReceipts(ids, { force = false } = {}) {
  for (const id of ids) {
    if (force || (!state.receipts.has(id) && !inflight.has(id))) queued.add(id);
  }
  if (!queued.size) return Promise.resolve();
  if (!flushing) {
    flushing = new Promise((resolve) => setTimeout(() => {
      flushing = null;
      flush().then(resolve);
    }, GATHER_MS));
  }
  return flushing;
}

async function flush() {
  const ids = [...queued];
  queued.clear();
  ids.forEach((id) => inflight.add(id));
  let replies = [];
  try {
    replies = await state.conn.batch(ids.map((id) => ["message.receipts", { message_id: id }]));
  } catch {
    return; // not connected: receiptsReconnected() asks again for what is on screen
  } finally {
    ids.forEach((id) => inflight.delete(id));
  }
  // An error (the message is gone, an older daemon) is an answer too: no line, and no asking again.
  replies.forEach((r, i) => noteReceipts(ids[i], r.result ? r.result.receipts || [] : null));
  refresh(ids);
}

/** notification.receipt {agent_id, state, message_ids, timestamp}: update the lines in place. */
export function onReceiptNotification(params) {
  const changed = [];
  const ask = [];
  for (const id of params.message_ids || []) {
    const moved = advanceReceipt(id, params.agent_id, params.state, params.timestamp);
    if (moved) changed.push(id);
    // A receipt we do not hold: the message was not fetched yet, or the reader is not among the
    // recipients we know (a new group member, or someone who is no recipient at all). The daemon
    // decides who counts, so ask it, but only for messages on screen.
    else if (moved === null && state.receipts.get(id) !== null && linesFor(id).length) ask.push(id);
  }
  refresh(changed);
  if (ask.length) wantReceipts(ask, { force: true });
}

/** After a reconnect: receipts may have moved while we were away, so ask again for those on screen. */
export function receiptsReconnected() {
  state.receipts.clear();
  const ids = new Set([...document.querySelectorAll(".receipts[data-for]")].map((el) => el.dataset.for));
  wantReceipts([...ids]);
}

/** The receipts line for a message we wrote (null for anyone else's, and for a deleted one). */
export function receiptsLine(msg) {
  if (!isOwn(msg) || msg.deleted) return null;
  const el = h("span", { class: "receipts", dataset: { for: msg.message_id } });
  if (state.receipts.has(msg.message_id)) fill(el, state.receipts.get(msg.message_id));
  else {
    el.hidden = true;
    wantReceipts([msg.message_id]);
  }
  return el;
}

function linesFor(id) {
  return document.querySelectorAll(`.receipts[data-for="${CSS.escape(id)}"]`);
}

function refresh(ids) {
  for (const id of new Set(ids)) {
    const list = state.receipts.get(id);
    for (const el of linesFor(id)) fill(el, list);
  }
}

function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : timeFmt.format(d);
}

function tooltip(r) {
  if (r.state === "read") {
    return r.delivered_at && r.delivered_at !== r.read_at
      ? `read ${when(r.read_at)} (delivered ${when(r.delivered_at)})` : `read ${when(r.read_at)}`;
  }
  if (r.state === "delivered") return `delivered ${when(r.delivered_at)}, not read yet`;
  return "not delivered yet";
}

const GROUPS = [
  // state, check marks (decoration), words before the names
  ["read", "✓✓", "read by"],
  ["delivered", "✓", "delivered to"],
  ["pending", "", "pending:"],
];

function names(rs) {
  const shown = rs.slice(0, MAX_NAMES);
  const rest = rs.slice(MAX_NAMES);
  const out = [];
  shown.forEach((r, i) => {
    if (i) out.push(", ");
    out.push(h("span", { class: "who", title: tooltip(r), dataset: { agent: r.agent_id, state: r.state } },
      "@" + shortName(r.agent_id)));
  });
  if (rest.length) {
    out.push(" and ", h("span", { class: "who", title: rest.map((r) => "@" + shortName(r.agent_id)).join(", ") },
      `${rest.length} more`));
  }
  return out;
}

function fill(el, list) {
  if (list === null || list === undefined) {
    el.hidden = true;
    el.replaceChildren();
    return;
  }
  el.hidden = false;
  if (!list.length) {
    replace(el, h("span", { class: "sr-only" }, "Receipts: "), "no recipients");
    return;
  }
  const parts = [];
  for (const [st, mark, words] of GROUPS) {
    const rs = list.filter((r) => r.state === st);
    if (!rs.length) continue;
    if (parts.length) parts.push(h("span", { class: "sep", "aria-hidden": "true" }, " · "), h("span", { class: "sr-only" }, "; "));
    parts.push(h("span", { class: `rcpt rcpt-${st}` },
      mark ? [h("span", { class: "mark", "aria-hidden": "true" }, mark), " "] : null,
      words, " ", names(rs)));
  }
  const n = (st) => list.filter((r) => r.state === st).length;
  const counts = `${list.length} recipient${list.length === 1 ? "" : "s"}`;
  replace(el, h("span", { class: "sr-only" }, `Receipts (${counts}): `), parts);
  el.title = `${counts}: ${n("read")} read, ${n("delivered")} delivered, ${n("pending")} pending`;
}
