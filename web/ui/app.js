// The thrum web UI: bootstrap, the page's chrome (header, navigation, status footer), routing.
//
// Build-free: plain ES modules served by the daemon from web/ (packaged as thrum.web). Routes
// are real paths (/agents, /inbox/alice, /thread/msg_…); the daemon answers unknown paths with
// index.html, so a reload or a shared link lands on the same view.

import { Composer } from "./composer.js";
import { h, replace } from "./dom.js";
import { shortName, snippet } from "./format.js";
import { onReceiptNotification, receiptsReconnected } from "./receipts.js";
import { Connection } from "./rpc.js";
import {
  emit, on, onMessageNotification, refreshAgents, refreshAgentsSoon, sortedAgents, state,
} from "./state.js";
import { agentsView } from "./views/agents.js";
import { feedView } from "./views/feed.js";
import { inboxView } from "./views/inbox.js";
import { searchView } from "./views/search.js";
import { threadView } from "./views/thread.js";
import { threadsView } from "./views/threads.js";

const $ = (id) => document.getElementById(id);
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

const app = {
  composer: new Composer(),
  view: null,
  announceMessage,
};

// -- routing ---------------------------------------------------------------------------------

const ROUTES = [
  [/^\/(?:feed\/?)?$/, () => feedView(app)],
  [/^\/agents\/?$/, () => agentsView(app)],
  [/^\/threads\/?$/, () => threadsView(app)],
  [/^\/thread\/([^/]+)\/?$/, (m) => threadView(app, decodeURIComponent(m[1]))],
  [/^\/inbox\/?$/, () => inboxView(app, state.user.user_id)],
  [/^\/inbox\/([^/]+)\/?$/, (m) => inboxView(app, decodeURIComponent(m[1]))],
  [/^\/search\/?$/, () => searchView(app, new URLSearchParams(location.search).get("q") || "")],
];

function notFoundView() {
  return {
    title: "Not found", heading: "Nothing here",
    mount(container) {
      container.append(h("p", null, `There is no page at ${location.pathname}. `, h("a", { href: "/" }, "Go to the live feed"), "."));
    },
    destroy() {},
  };
}

function route(focus) {
  if (state.conn.state !== "connected" && !app.view) return; // rendered once connected
  if (app.view) app.view.destroy();
  let view = null;
  for (const [re, make] of ROUTES) {
    const m = location.pathname.match(re);
    if (m) {
      view = make(m);
      break;
    }
  }
  view = view || notFoundView();
  app.view = view;
  document.title = `${view.title} · thrum`;
  $("view-title").textContent = view.heading;
  $("view-intro").textContent = view.intro || "";
  $("view-intro").hidden = !view.intro;
  const container = $("view");
  container.replaceChildren();
  view.mount(container);
  markCurrentNav();
  // After a navigation, put the keyboard where the new content starts (not on first load).
  if (focus) $("view-title").focus();
}

function navigate(path) {
  if (path === location.pathname + location.search) return;
  history.pushState(null, "", path);
  route(true);
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href]");
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  if (a.target || a.origin !== location.origin || !a.pathname.startsWith("/")) return;
  ev.preventDefault();
  navigate(a.pathname + a.search);
});
window.addEventListener("popstate", () => route(true));

function markCurrentNav() {
  for (const a of document.querySelectorAll("#nav a")) {
    const here = a.pathname === location.pathname
      || (a.pathname === "/" && location.pathname === "/feed")
      || (a.dataset.me && location.pathname === "/inbox");
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

// -- navigation: views and inboxes ------------------------------------------------------------

function unreadBadge(n) {
  if (!n) return null;
  return h("span", { class: "count", title: `${n.toLocaleString()} unread` },
    compact.format(n), h("span", { class: "sr-only" }, " unread"));
}

function renderInboxes() {
  const me = state.user && state.agents.get(state.user.user_id);
  const mine = $("my-inbox");
  replace(mine, "Your inbox", unreadBadge(me && me.inbox_unread));
  mine.href = state.user ? `/inbox/${encodeURIComponent(state.user.user_id)}` : "/inbox";
  mine.dataset.me = "1";
  replace($("inboxes"), sortedAgents().map((a) => h("li", null,
    h("a", { href: `/inbox/${encodeURIComponent(a.agent_id)}` },
      h("span", { class: `dot ${a.status === "active" ? "on" : "off"}`, "aria-hidden": "true" }),
      h("span", { class: "name" }, "@" + shortName(a.agent_id)),
      h("span", { class: "sr-only" }, a.status === "active" ? " (active)" : " (offline)"),
      unreadBadge(a.inbox_unread)))));
  const active = sortedAgents().filter((a) => a.status === "active").length;
  $("inboxes-summary").textContent = `${active} active of ${sortedAgents().length}`;
  markCurrentNav();
  app.composer.updateRecipients();
}

// -- announcements for screen readers: few, short, never one per message in a burst ----------

let pendingAnnounce = [];
let announceTimer = null;
let lastAnnounce = 0;

function announceMessage(msg) {
  if (state.user && msg.agent_id === state.user.user_id) return;
  pendingAnnounce.push(msg);
  if (announceTimer) return;
  const wait = Math.max(500, 8000 - (Date.now() - lastAnnounce));
  announceTimer = setTimeout(() => {
    announceTimer = null;
    lastAnnounce = Date.now();
    const msgs = pendingAnnounce;
    pendingAnnounce = [];
    const last = msgs[msgs.length - 1];
    $("announcer").textContent = msgs.length === 1
      ? `New message from @${shortName(last.agent_id)}: ${snippet(last.body && last.body.content, 80)}`
      : `${msgs.length} new messages, the latest from @${shortName(last.agent_id)}.`;
  }, wait);
}

// -- connection status -----------------------------------------------------------------------

function showState({ state: s, reason, message, attempt }) {
  const conn = $("conn");
  conn.className = `conn ${s}`;
  const words = {
    connecting: "CONNECTING…", connected: "CONNECTED", reconnecting: "RECONNECTING…",
    unauthorized: "NOT AUTHORIZED", failed: "CONNECTED WITH ERRORS",
  };
  $("conn-text").textContent = words[s] || s;
  $("retry").hidden = s === "connected" || s === "connecting";
  const banner = $("banner");
  banner.className = `banner ${s}`;
  if (s === "reconnecting") {
    replace(banner, h("strong", null, "Reconnecting… "),
      `The connection to the thrum daemon was lost (${reason || "no answer"}). `,
      "This page keeps trying and catches up when the daemon is back",
      attempt > 2 ? h("span", null, "; if it was stopped, start it with ", h("code", null, "thrum daemon start")) : null, ".");
    banner.hidden = false;
  } else if (s === "unauthorized") {
    replace(banner, h("strong", null, "This browser's access token is no longer accepted. "),
      "In a terminal inside the repository, run ", h("code", null, "thrum ui"), " and open the link it prints.");
    banner.hidden = false;
  } else if (s === "failed") {
    replace(banner, h("strong", null, "Connected, but the daemon refused to sign this page in: "), message || "");
    banner.hidden = false;
  } else if (s === "connected" && state.user && state.user.notice) {
    replace(banner, state.user.notice);
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

function renderIdentity() {
  const u = state.user;
  if (!u) return;
  replace($("me"), h("span", { class: "muted" }, "You: "),
    h("strong", null, u.display || u.username), " ", h("span", { class: "muted" }, `(@${u.username})`));
  const hInfo = state.health;
  if (hInfo) {
    $("repo").textContent = hInfo.repo_id || "";
    $("daemon-info").textContent = `thrum ${hInfo.version} · ${hInfo.repo_id} · ${location.host}`;
  }
}

// When git has no user.name the daemon cannot name us; let the person pick a name instead.
function nameForm(reason) {
  const input = h("input", { id: "pick-name", type: "text", required: true, pattern: "[A-Za-z0-9_-]{1,32}", maxlength: "32" });
  const form = h("form", { class: "inline-form" },
    h("span", null, `The daemon could not read your name (${reason}), so your messages are signed @user. `),
    h("label", { for: "pick-name" }, "Your name"), " ", input, " ",
    h("button", { type: "submit", class: "secondary" }, "Use this name"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = input.value.trim();
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(name)) {
      input.setCustomValidity("1 to 32 letters, digits, - or _");
      input.reportValidity();
      return;
    }
    localStorage.setItem("thrum_username", name);
    location.reload();
  });
  return form;
}

async function setup(conn) {
  const [health, ident] = await conn.batch([["health", {}], ["user.identify", {}]]);
  state.health = health.result || null;
  const chosen = localStorage.getItem("thrum_username");
  let username;
  let display = "";
  let notice = null;
  if (ident.result) {
    username = ident.result.username;
    display = ident.result.display;
  } else if (chosen) {
    username = chosen;
  } else {
    username = "user";
    notice = nameForm(ident.error.message.replace(/^git config /, "git config "));
  }
  const reg = await conn.call("user.register", display ? { username, display } : { username });
  state.user = { user_id: reg.user_id, username: reg.username, display: reg.display_name || display, notice };
  // The upstream UI keeps this key; scripts written for it may look.
  localStorage.setItem("thrum_user", JSON.stringify({
    user_id: reg.user_id, username: reg.username, display_name: reg.display_name || "",
  }));
  // Every message, pushed to this connection only, for as long as it is open (nothing stored).
  await conn.call("subscribe", { all: true, temporary: true });
  await refreshAgents();
}

// -- theme -------------------------------------------------------------------------------------

const THEMES = ["system", "light", "dark"];

function applyTheme(theme) {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $("theme").textContent = `Theme: ${theme}`;
  $("theme").setAttribute("aria-label", `Colour theme: ${theme}. Change`);
}

function initTheme() {
  let theme = localStorage.getItem("thrum_theme") || "system";
  if (!THEMES.includes(theme)) theme = "system";
  applyTheme(theme);
  $("theme").addEventListener("click", () => {
    theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
    localStorage.setItem("thrum_theme", theme);
    applyTheme(theme);
  });
}

// -- start -------------------------------------------------------------------------------------

function start() {
  initTheme();
  $("composer-slot").append(app.composer.el);
  const conn = new Connection(setup);
  state.conn = conn;
  conn.addEventListener("state", (ev) => showState(ev.detail));
  conn.addEventListener("ready", (ev) => {
    renderIdentity();
    renderInboxes();
    showState({ state: "connected" });
    if (!app.view) route(false);
    else {
      if (ev.detail.reconnected) receiptsReconnected();
      emit("ready", ev.detail);
    }
  });
  conn.addEventListener("notification", (ev) => {
    const { method, params } = ev.detail;
    if (method === "notification.message") {
      onMessageNotification(params);
      refreshAgentsSoon(2000); // inbox counts
    } else if (method === "notification.receipt") {
      onReceiptNotification(params); // our own messages' receipts, updated in place
    } else if (method === "notification.agent" || method === "notification.session" || method === "notification.group") {
      refreshAgentsSoon(300);
    }
    emit(method, params);
  });
  on("agents", renderInboxes);
  on("read", () => refreshAgentsSoon(300));
  $("retry").addEventListener("click", () => conn.retryNow());
  $("search").addEventListener("submit", (ev) => {
    ev.preventDefault(); // the page's CSP allows no form submission: search is a client-side route
    const q = $("search-q").value.trim();
    if (q) navigate(`/search?q=${encodeURIComponent(q)}`);
  });
  // last_seen times and anything a notification does not cover.
  setInterval(() => conn.state === "connected" && refreshAgentsSoon(0), 60000);
  conn.start();
}

start();
