// Shared state of the page: the connection, who we are, the team, a small message cache, and the
// delivery receipts of the messages we wrote. Views listen on `bus` instead of on the socket, so
// one notification is fetched once however many views care about it.

export const bus = new EventTarget();

export const state = {
  conn: null,
  user: null,           // {user_id, username, display, source: "git" | "chosen"}
  health: null,         // health result: repo_id, version
  agents: new Map(),    // agent_id -> agent.list row, merged with its team.list row (counts, files)
  groups: [],           // group.list rows
  messages: new Map(),  // message_id -> message (message.get / message.list shape), bounded
  receipts: new Map(),  // message_id -> [{agent_id, state, delivered_at?, read_at?}] of our own messages,
                        // or null when the daemon had none to give; bounded (receipts.js fetches them)
};

export function emit(type, detail) {
  bus.dispatchEvent(new CustomEvent(type, { detail }));
}

export function on(type, fn) {
  const listener = (ev) => fn(ev.detail);
  bus.addEventListener(type, listener);
  return () => bus.removeEventListener(type, listener);
}

const CACHE_LIMIT = 5000;

export function remember(msg) {
  if (!msg || !msg.message_id) return msg;
  state.messages.delete(msg.message_id); // re-insert: Map order doubles as recency
  state.messages.set(msg.message_id, msg);
  if (state.messages.size > CACHE_LIMIT) {
    state.messages.delete(state.messages.keys().next().value);
  }
  // message.get answers carry receipts: as fresh as a message.receipts call, so no second request.
  if (Array.isArray(msg.receipts) && isOwn(msg)) noteReceipts(msg.message_id, msg.receipts);
  return msg;
}

/** Messages by id, from the cache or one batch of message.get. Missing ids are left out. */
export async function getMessages(ids) {
  const want = [...new Set(ids)].filter((id) => id && !state.messages.has(id));
  if (want.length) {
    const replies = await state.conn.batch(want.map((id) => ["message.get", { message_id: id }]));
    replies.forEach((r) => r.result && remember(r.result.message));
  }
  const out = new Map();
  for (const id of ids) if (state.messages.has(id)) out.set(id, state.messages.get(id));
  return out;
}

export function isMe(agentId) {
  return !!state.user && agentId === state.user.user_id;
}

/** Whether we wrote this message: as ourselves, or `acting_as` an agent (then it is `authored_by` us). */
export function isOwn(msg) {
  return !!msg && (isMe(msg.agent_id) || (!!msg.authored_by && isMe(msg.authored_by)));
}

// -- receipts of our own messages ----------------------------------------------------------------

// A recipient's receipt only moves forward (nothing un-delivers or un-reads a message), so an
// answer that crossed a notification on the wire never takes a receipt back.
const RECEIPT_RANK = { pending: 0, delivered: 1, read: 2 };

/** Store a message's receipts as the daemon listed them (its recipients now), never going backwards. */
export function noteReceipts(messageId, list) {
  const before = new Map((state.receipts.get(messageId) || []).map((r) => [r.agent_id, r]));
  const merged = list === null ? null : list.map((r) => {
    const old = before.get(r.agent_id);
    return old && RECEIPT_RANK[old.state] > RECEIPT_RANK[r.state] ? old : { ...r };
  });
  state.receipts.delete(messageId);
  state.receipts.set(messageId, merged);
  if (state.receipts.size > CACHE_LIMIT) state.receipts.delete(state.receipts.keys().next().value);
}

/**
 * Apply one notification.receipt to a stored receipt. Returns true when it changed, false when it
 * told nothing new, null when we hold no receipt for that recipient (ask the daemon instead).
 */
export function advanceReceipt(messageId, agentId, newState, timestamp) {
  const list = state.receipts.get(messageId);
  const r = list && list.find((x) => x.agent_id === agentId);
  if (!r || !(newState in RECEIPT_RANK)) return r ? false : null;
  if (RECEIPT_RANK[newState] <= RECEIPT_RANK[r.state]) return false;
  const at = timestamp || new Date().toISOString();
  r.state = newState;
  r.delivered_at = r.delivered_at || at;
  if (newState === "read") r.read_at = at;
  return true;
}

// -- the team ------------------------------------------------------------------------------

let agentsTimer = null;
let agentsDue = 0;

/** Refresh agents, their inbox counts and groups within `delay` ms (calls coalesce). */
export function refreshAgentsSoon(delay = 300) {
  const due = Date.now() + delay;
  if (agentsTimer && agentsDue <= due) return;
  clearTimeout(agentsTimer);
  agentsDue = due;
  agentsTimer = setTimeout(() => {
    agentsTimer = null;
    refreshAgents().catch(() => { /* offline: the next connect refreshes */ });
  }, delay);
}

export async function refreshAgents() {
  const [agents, team, groups] = await state.conn.batch([
    ["agent.list", {}],
    // team.list adds inbox counts and changed files; an older daemon may not offer it on the WebSocket.
    ["team.list", { include_offline: true }],
    ["group.list", {}],
  ]);
  if (agents.error) throw agents.error;
  const byId = new Map();
  for (const a of agents.result.agents) byId.set(a.agent_id, { ...a });
  for (const m of (team.result && team.result.members) || []) {
    const a = byId.get(m.agent_id);
    if (a) Object.assign(a, { ...m, status: a.status });
  }
  state.agents = byId;
  state.groups = (groups.result && groups.result.groups) || [];
  emit("agents", state.agents);
}

/** Agents (not users) sorted: active first, then by name. */
export function sortedAgents({ includeUsers = false } = {}) {
  return [...state.agents.values()]
    .filter((a) => includeUsers || a.kind !== "user")
    .sort((a, b) => (a.status === "active" ? 0 : 1) - (b.status === "active" ? 0 : 1)
      || a.agent_id.localeCompare(b.agent_id));
}

// -- live messages --------------------------------------------------------------------------

// Notifications carry a 100-character preview; views need the whole message. Ids that arrive
// together are fetched in one batch, so a burst of messages costs one round trip.
const queue = new Map(); // message_id -> event ("created" | "edited" | "deleted")
let flushTimer = null;

export function onMessageNotification(params) {
  const prev = queue.get(params.message_id);
  queue.set(params.message_id, prev === "created" && params.event !== "deleted" ? "created" : params.event);
  if (!flushTimer) flushTimer = setTimeout(flushQueue, 30);
}

async function flushQueue() {
  flushTimer = null;
  const items = [...queue.entries()];
  queue.clear();
  let replies;
  try {
    replies = await state.conn.batch(items.map(([id]) => ["message.get", { message_id: id }]));
  } catch {
    return; // reconnect catches up
  }
  replies.forEach((r, i) => {
    if (!r.result) return;
    const msg = remember(r.result.message);
    emit("message", { kind: items[i][1], message: msg });
  });
}

/** A message this page sent: subscriptions never echo our own messages, so announce it here. */
export async function ownMessageSent(messageId) {
  state.messages.delete(messageId);
  const got = await getMessages([messageId]);
  if (got.has(messageId)) emit("message", { kind: "created", message: got.get(messageId), own: true });
}
