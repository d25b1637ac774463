"""The web UI in headless Chromium, against a real daemon: what a person directing agents sees and does.

Chromium is driven over the DevTools protocol (tests/_browser.py). Without Chromium these tests
are skipped, except under CI (CI=true), where .ci/run installs it and a missing browser is a failure.
Every wait polls the page's DOM with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import socket
from urllib.parse import urlsplit

import pytest

from _browser import Browser, find_chromium
from _rt import ws_token

CHROMIUM = find_chromium()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; .ci/run must install it (apt-get install -y chromium)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the web UI browser tests need it")
    b = Browser.launch(CHROMIUM)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def env(env):
    # A fixed port for this test's daemon, so a restarted daemon comes back at the page's origin.
    env["THRUM_WS_PORT"] = str(free_port())
    return env


def base_url(t) -> str:
    return f"http://127.0.0.1:{(t.var / 'ws.port').read_text().strip()}"


class UI:
    """One browser tab on one daemon's web UI."""

    def __init__(self, t, browser, path: str = "/", scheme: str = "light", size=(1280, 900)) -> None:
        self.t = t
        self.page = browser.new_page(*size, color_scheme=scheme)
        self.base = base_url(t)
        self.page.goto(f"{self.base}{path}{'&' if '?' in path else '?'}token={ws_token(t)}")
        self.wait_connected()

    def wait_connected(self, timeout: float = 15) -> None:
        self.page.wait_for("document.getElementById('conn-text').textContent === 'CONNECTED'", timeout,
                           what="CONNECTED in the footer")

    def js(self, expression: str):
        return self.page.eval(expression)

    def wait(self, expression: str, timeout: float = 10, what: str | None = None):
        return self.page.wait_for(expression, timeout, what)

    def feed_texts(self) -> list[str]:
        return self.js("[...document.querySelectorAll('#view .msg .body')].map(e => e.innerText.trim())")

    def wait_text(self, text: str, timeout: float = 10, where: str = "#view"):
        return self.wait(f"(document.querySelector({json.dumps(where)}) || {{innerText: ''}}).innerText"
                         f".includes({json.dumps(text)})", timeout, what=f"{text!r} in {where}")

    def go(self, path: str) -> None:
        """Navigate inside the app, as a click on a link does."""
        self.js(f"history.pushState(null, '', {json.dumps(path)}); dispatchEvent(new PopStateEvent('popstate'))")

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def ui(agents, browser):
    opened = []

    def open_ui(path: str = "/", **kw) -> UI:
        u = UI(agents, browser, path, **kw)
        opened.append(u)
        return u

    yield open_ui
    for u in opened:
        errors = u.page.console_errors()
        u.close()
        # Failed requests while a daemon is down or the token is stale are expected; script errors never are.
        assert [e for e in errors if not e.startswith("network:")] == [], errors


# -- the page ---------------------------------------------------------------------------------------

def test_page_loads_and_shows_connected(ui):
    u = ui()
    assert u.js("document.title").endswith("· thrum")
    assert u.js("document.getElementById('view-title').textContent") == "Live feed"
    # the browser user comes from git config (conftest: "Test User"), registered through user.register
    u.wait_text("Test User", where="#me")
    assert "(@test-user)" in u.page.text("#me")
    assert u.js("JSON.parse(localStorage.getItem('thrum_user')).user_id") == "user:test-user"
    # the token left the address bar (the daemon set a cookie and redirected)
    assert "token=" not in u.js("location.href")
    # both agents are listed in the navigation with their status
    u.wait_text("@alice", where="#inboxes")
    assert "@bob" in u.page.text("#inboxes")


def test_cli_message_appears_live(ui):
    u = ui()
    u.wait("document.querySelector('#view .message-list').getAttribute('aria-busy') === 'false'")
    u.t.run("send", "Deploy finished on **staging**", "--to", "@bob", "--priority", "high", name="alice")
    # pushed, not polled: no reload, and it is on top of the feed within a couple of seconds
    u.wait("document.querySelector('#view .msg .body') && "
           "document.querySelector('#view .msg .body').innerText.includes('Deploy finished on staging')", 3,
           what="the CLI message at the top of the feed")
    head = u.page.text("#view .msg .msg-head")
    assert "@alice" in head and "@bob" in head and "high" in head.lower()
    assert u.js("document.querySelector('#view .msg .body strong').textContent") == "staging"


def test_send_from_the_page_reaches_the_agents_inbox(ui):
    u = ui()
    u.js("""(() => {
        document.getElementById('compose-to').value = '@bob';
        document.getElementById('compose-priority').value = 'critical';
        document.getElementById('compose-content').value = 'Please look at the failing build';
        document.querySelector('.composer button[type=submit]').click(); })()""")
    u.wait_text("Sent (msg_", where=".composer")
    inbox = u.t.json("inbox", name="bob")
    mine = [m for m in inbox["messages"] if m["body"]["content"] == "Please look at the failing build"]
    assert mine, inbox
    assert mine[0]["agent_id"] == "user:test-user" and mine[0]["priority"] == "critical"
    # our own message shows in our feed too (subscriptions never echo it; the page adds it)
    u.wait_text("Please look at the failing build")
    # the form is ready for the next message
    assert u.js("document.getElementById('compose-content').value") == ""


def test_unknown_recipient_shows_the_daemons_error_and_suggestions(ui):
    u = ui()
    u.js("""(() => {
        document.getElementById('compose-to').value = '@bbo';
        document.getElementById('compose-content').value = 'hello?';
        document.querySelector('.composer button[type=submit]').click(); })()""")
    u.wait_text("unknown recipient @bbo", where=".compose-error")
    assert u.js("document.querySelector('.compose-error').getAttribute('role')") == "alert"
    # the close match is offered as a button that fixes the address
    u.js("[...document.querySelectorAll('.compose-error button')].find(b => b.textContent === '@bob').click()")
    assert u.js("document.getElementById('compose-to').value") == "@bob"
    assert u.js("document.getElementById('compose-content').value") == "hello?"  # nothing was lost
    assert "hello?" not in json.dumps(u.t.json("inbox", "--peek", name="bob"))


def test_message_content_is_text_never_markup(ui):
    u = ui()
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> ![i](http://example.com/a.png)'
    u.t.run("send", evil, "--to", "@bob", name="alice")
    u.wait_text("<img src=x", timeout=5)
    assert u.js("window.pwned === undefined")
    assert u.js("document.querySelectorAll('#view .msg img, #view .msg script').length") == 0


def test_agents_panel_shows_status_intent_task_branch_and_files(ui):
    u = ui("/agents")
    u.wait("document.querySelector('[data-agent=alice]')", what="alice's card")
    # set from the CLI while the page is open: the panel follows without a reload
    u.t.run("session", "set-intent", "Refactor the login flow", name="alice")
    u.t.run("session", "set-task", "TASK-42", name="alice")
    u.wait("(document.querySelector('[data-agent=alice]') || {innerText: ''}).innerText.includes('Refactor the login flow')"
           " && document.querySelector('[data-agent=alice]').innerText.includes('TASK-42')",
           what="alice's intent and task in the agents panel")
    card = u.page.text("[data-agent=alice]")
    assert "active" in card and "TASK-42" in card and "implementer @ auth" in card
    # git context: the branch and the changed files of alice's checkout, after a heartbeat re-reads git
    (u.t.repo / "README.md").write_text("changed by alice\n")
    (u.t.repo / "login.py").write_text("print('hi')\n")
    u.t.run("session", "heartbeat", name="alice")
    u.wait("(document.querySelector('[data-agent=alice] details') || {textContent: ''}).textContent.includes('login.py')",
           what="alice's changed files in the agents panel")
    card = u.js("document.querySelector('[data-agent=alice]').textContent")
    assert "README.md" in card and "main" in card
    u.t.run("session", "end", name="bob")
    u.wait("(document.querySelector('[data-agent=bob]') || {innerText: ''}).innerText.includes('offline')",
           what="bob offline after session end")


def test_inbox_view_counts_unread_for_that_agent(ui):
    u = ui("/inbox/bob")
    u.t.run("send", "first for bob", "--to", "@bob", name="alice")
    u.t.run("send", "second for bob", "--to", "@reviewer", name="alice")
    u.wait_text("second for bob")
    u.wait("document.querySelector('.inbox-counts').textContent.startsWith('2 unread')", what="2 unread")
    assert u.js("document.querySelectorAll('#view .msg.unread').length") == 2
    u.t.run("inbox", name="bob")  # bob reads them with the CLI
    u.js("document.getElementById('unread-only').click()")
    u.wait("document.querySelector('.inbox-counts').textContent.startsWith('0 unread')", what="0 unread")
    assert u.js("document.querySelectorAll('#view .msg').length") == 0


def test_thread_view_shows_the_reply_chain(ui):
    u = ui()
    t = u.t
    root = t.json("send", "Should we split the auth module?", "--to", "@bob", name="alice")["message_id"]
    reply = t.json("reply", root, "Yes, into login and tokens", name="bob")["message_id"]
    t.json("reply", reply, "Agreed, I will start with tokens", name="alice")
    # the thread link appears on the root in the feed, live
    u.wait(f"document.querySelector('[data-id={root}] a[href=\"/thread/{root}\"]')", what="a thread link on the root")
    # a reload on a client-side route works (the daemon serves index.html for it)
    u.page.goto(f"{u.base}/thread/{reply}")
    u.wait_connected()
    u.wait("document.querySelectorAll('.thread-tree .msg').length === 3", what="3 messages in the thread")
    texts = u.js("[...document.querySelectorAll('.thread-tree .msg .body')].map(e => e.innerText.trim())")
    assert texts == ["Should we split the auth module?", "Yes, into login and tokens", "Agreed, I will start with tokens"]
    # nested: each reply sits inside the list of replies of its parent
    assert u.js("document.querySelectorAll('.thread-tree .replies .replies .msg').length") == 1
    assert u.js(f"document.querySelector('[data-id={reply}]').getAttribute('aria-current')") == "true"
    # the thread offered to reply to the message it was opened on; leaving it untouched undoes that
    assert "Replying to @bob" in u.page.text(".reply-box")
    # the threads overview lists it
    u.go("/threads")
    u.wait_text("Should we split the auth module?")
    assert u.js("document.querySelector('.reply-box').hidden")


def receipts_requested(u) -> list[list[str]]:
    """The message ids of each WebSocket frame this page sent that asked for message.receipts."""
    frames = []
    for e in u.page.browser.events(u.page.session, "Network.webSocketFrameSent"):
        try:
            sent = json.loads(e["params"]["response"]["payloadData"])
        except (KeyError, ValueError):
            continue
        ids = [r["params"]["message_id"] for r in (sent if isinstance(sent, list) else [sent])
               if isinstance(r, dict) and r.get("method") == "message.receipts"]
        if ids:
            frames.append(ids)
    return frames


def test_receipts_on_own_messages_update_live(ui):
    u = ui()
    t = u.t
    u.wait("document.querySelector('#view .message-list').getAttribute('aria-busy') === 'false'")
    others = t.json("send", "Not written by the person", "--to", "@bob", name="alice")["message_id"]
    u.wait(f"document.querySelector('article[data-id={others}]')", what="alice's message in the feed")
    u.js("window.notReloaded = true")
    u.js("""(() => {
        document.getElementById('compose-to').value = '@bob';
        document.getElementById('compose-content').value = 'Please review the token refresh';
        document.querySelector('.composer button[type=submit]').click(); })()""")
    u.wait_text("Sent (msg_", where=".composer")
    mine = u.js("document.querySelector('.compose-status').textContent.match(/msg_[0-9A-Za-z]+/)[0]")
    line = f"document.querySelector('article[data-id={mine}] .receipts')"
    bob = f"(({line} || document).querySelector('[data-agent=bob]') || {{dataset: {{}}}}).dataset.state"
    shown = f"[...{line}.querySelectorAll('.rcpt')].map(e => e.innerText).join(' · ')"  # minus screen-reader text
    u.wait(f"{bob} === 'pending'", what="bob pending on the message the person sent")
    assert u.js(shown) == "pending: @bob"
    # someone else's message shows no receipts, and nobody asked the daemon for them
    assert u.js(f"document.querySelector('article[data-id={others}] .receipts')") is None
    asked = lambda: [i for frame in receipts_requested(u) for i in frame]  # noqa: E731
    assert others not in asked()
    before = len(asked())

    # bob's side: the message reached his context (a hook, `inbox --peek`), then he read it in full
    t.call("message.markDelivered", caller_agent_id="bob", message_ids=[mine])
    u.wait(f"{bob} === 'delivered'", timeout=5, what="delivered to @bob, pushed")
    assert u.js(shown) == "✓ delivered to @bob"
    assert "not read yet" in u.js(f"{line}.querySelector('[data-agent=bob]').title")
    t.run("message", "get", mine, name="bob")
    u.wait(f"{bob} === 'read'", timeout=5, what="read by @bob, pushed")
    assert u.js(shown) == "✓✓ read by @bob"
    assert u.js(f"{line}.querySelector('[data-agent=bob]').title").startswith("read ")
    # live: no reload, and no polling (the notifications carried the states)
    assert u.js("window.notReloaded") is True
    assert len(asked()) == before

    # a message the person typed as an agent (acting_as) is theirs too; a role reaches its agents
    typed = t.call("message.send", caller_agent_id="user:test-user", acting_as="alice",
                   content="Typed for alice", mentions=["@reviewer"])["message_id"]
    plain = t.call("message.send", caller_agent_id="user:test-user", content="And one as myself",
                   mentions=["@bob"])["message_id"]
    t.call("message.markDelivered", caller_agent_id="bob", message_ids=[typed])
    first_frame = len(receipts_requested(u))
    u.go("/inbox/bob")
    typed_line = f"document.querySelector('article[data-id={typed}] .receipts')"
    u.wait(f"{typed_line} && {typed_line}.innerText.includes('delivered to @bob')", what="receipts in bob's inbox")
    u.wait(f"document.querySelector('article[data-id={mine}] .receipts [data-agent=bob][data-state=read]')")
    assert u.js(f"document.querySelector('article[data-id={others}] .receipts')") is None
    # fetched in one batch, only for the person's own messages
    frames = receipts_requested(u)[first_frame:]
    assert len(frames) == 1 and {typed, plain} <= set(frames[0]) and others not in frames[0], frames
    assert u.js(f"document.querySelector('article[data-id={plain}] .receipts [data-agent=bob]').dataset.state") \
        == "pending"

    # the thread view: the person's message with its receipts, bob's reply without
    reply = t.json("reply", mine, "Looks good", name="bob")["message_id"]
    u.go(f"/thread/{mine}")
    u.wait("document.querySelectorAll('.thread-tree .msg').length === 2", what="2 messages in the thread")
    u.wait(f"document.querySelector('.thread-tree article[data-id={mine}] .receipts [data-state=read]')")
    assert u.js(f"document.querySelector('article[data-id={reply}] .receipts')") is None


def test_client_side_routes_survive_a_reload(ui):
    u = ui()
    for path, heading in (("/agents", "Agents"), ("/inbox/alice", "Inbox of @alice"), ("/threads", "Threads"),
                          ("/inbox", "Your inbox"), ("/no/such/page", "Nothing here")):
        u.page.goto(u.base + path)
        u.wait_connected()
        u.wait(f"document.getElementById('view-title').textContent === {json.dumps(heading)}", what=heading)


def test_every_request_goes_to_the_daemon(ui):
    u = ui()
    u.t.run("send", "see http://example.com/page and ![logo](http://example.com/logo.png)", "--to", "@bob",
            name="alice")
    u.wait_text("http://example.com/page")
    for path in ("/agents", "/threads", "/inbox/bob"):
        u.go(path)
        u.wait("document.querySelector('#view [aria-busy=true]') === null && document.getElementById('view').children.length > 0")
    origin = urlsplit(u.base).netloc
    urls = u.page.requested_urls()
    assert urls, "no requests recorded"
    foreign = [x for x in urls if urlsplit(x).netloc != origin or urlsplit(x).scheme not in ("http", "ws")]
    assert foreign == [], foreign


def test_keyboard_only_send(ui):
    u = ui()
    page = u.page
    page.eval("document.activeElement && document.activeElement.blur(); window.focus()")
    page.press("Tab")
    assert page.focused().startswith("a:Skip to main content")
    for _ in range(80):  # through the header and the navigation, as a keyboard user would
        page.press("Tab")
        if page.focused().startswith("input#compose-to"):
            break
    else:
        raise AssertionError(f"Tab never reached the To field (stuck at {page.focused()})")
    page.type("@bob")
    page.press("Tab")
    assert page.focused().startswith("select#compose-priority")
    page.press("Tab")
    assert page.focused().startswith("textarea#compose-content")
    page.type("Sent without a mouse")
    page.press("Tab")
    assert page.focused().startswith("button:Send")
    page.press("Enter")
    u.wait_text("Sent (msg_", where=".composer")
    assert "Sent without a mouse" in json.dumps(u.t.json("inbox", name="bob"))
    # Ctrl+Enter in the message field sends too
    page.eval("document.getElementById('compose-content').focus()")
    page.type("And with Ctrl+Enter")
    page.press("Enter", modifiers=2)
    u.wait("document.querySelector('.compose-status').textContent.startsWith('Sent') && "
           "document.getElementById('compose-content').value === ''")
    u.wait(lambda_js_contains("And with Ctrl+Enter"))


def lambda_js_contains(text: str) -> str:
    return f"document.getElementById('view').innerText.includes({json.dumps(text)})"


def test_reconnects_after_a_daemon_restart(ui):
    u = ui()
    t = u.t
    t.stop()
    u.wait("document.getElementById('conn-text').textContent === 'RECONNECTING…'", what="RECONNECTING…")
    assert "Reconnecting" in u.page.text("#banner")
    t.start()
    # the cookie still holds (the token is kept across restarts) and the page signs in again by itself
    u.wait_connected(timeout=30)
    assert u.js("document.getElementById('banner').hidden")
    t.run("send", "after the restart", "--to", "@bob", name="alice")
    u.wait_text("after the restart", timeout=5)


def test_a_replaced_token_sends_the_person_to_thrum_ui(ui):
    u = ui()
    t = u.t
    t.stop()
    (t.var / "ws.token").unlink()  # a new token at the next start: the browser's cookie is stale
    t.start()
    u.wait("document.getElementById('conn-text').textContent === 'NOT AUTHORIZED'", timeout=30,
           what="NOT AUTHORIZED")
    assert "thrum ui" in u.page.text("#banner")


def test_without_a_token_the_page_says_how_to_get_in(agents, browser):
    page = browser.new_page()
    try:
        page.goto(base_url(agents) + "/agents")
        page.wait_for("document.body && document.body.innerText.includes('thrum ui')", what="the sign-in help")
        assert page.eval("document.title").startswith("thrum")
        assert page.eval("!!document.querySelector('main h1')")
    finally:
        page.close()


# -- accessibility -------------------------------------------------------------------------------------

CONTRAST_JS = r"""
(() => {
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = ({r, g, b}) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bgOf = (el) => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0.5) return c; } return parse(getComputedStyle(document.documentElement).backgroundColor) || {r:255,g:255,b:255}; };
  const bad = [];
  let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    if (!el.offsetParent && getComputedStyle(el).position !== 'fixed') continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest('.sr-only, [disabled], .deleted')) continue;
    const fg = parse(getComputedStyle(el).color); const bg = bgOf(el);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    checked++;
    if (ratio < 4.5) bad.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return {checked, bad};
})()
"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_in_both_colour_schemes(ui, scheme):
    u = ui(scheme=scheme)
    u.t.run("send", "critical thing", "--to", "@bob", "--priority", "critical", name="alice")
    u.t.run("send", "low thing", "--to", "@bob", "--priority", "low", name="alice")
    # the person's own messages carry receipts in each state: read, delivered, pending
    both = u.t.call("message.send", caller_agent_id="user:test-user", content="to both", mentions=["@alice", "@bob"])
    u.t.call("message.send", caller_agent_id="user:test-user", content="to bob", mentions=["@bob"])
    u.t.call("message.markRead", caller_agent_id="bob", message_ids=[both["message_id"]])
    u.t.call("message.markDelivered", caller_agent_id="alice", message_ids=[both["message_id"]])
    u.wait_text("low thing")
    for path in ("/", "/agents", "/inbox/bob"):
        u.go(path)
        u.wait("document.getElementById('view').children.length > 0 && !document.querySelector('#view [aria-busy=true]')")
        if path != "/agents":
            u.wait("document.querySelector('.receipts [data-state=read]') && document.querySelector('.receipts "
                   "[data-state=delivered]') && document.querySelector('.receipts [data-state=pending]')",
                   what="receipts in every state")
        result = u.js(CONTRAST_JS)
        assert result["checked"] > 20, result
        assert result["bad"] == [], f"{scheme} {path}: {result['bad']}"


def test_landmarks_labels_and_live_regions(ui):
    u = ui()
    roles = u.js("""({
        banner: document.querySelectorAll('body > header').length,
        main: document.querySelectorAll('main').length,
        nav: [...document.querySelectorAll('nav')].map(n => n.getAttribute('aria-label')),
        contentinfo: document.querySelectorAll('body > footer').length,
        lang: document.documentElement.lang,
        h1: document.querySelectorAll('h1').length,
        live: [...document.querySelectorAll('[aria-live], [role=status], [role=alert]')].map(e => e.id || e.className),
    })""")
    assert roles["banner"] == 1 and roles["main"] == 1 and roles["contentinfo"] == 1 and roles["h1"] == 1
    assert roles["nav"] == ["Views and inboxes"] and roles["lang"] == "en"
    # few live regions: the connection status, the composer's outcome, its errors, and one announcer
    assert len(roles["live"]) <= 5, roles["live"]
    unlabeled = u.js("""[...document.querySelectorAll('input, select, textarea, button')].filter(e =>
        !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.outerHTML)""")
    assert unlabeled == []
    # a new message is announced once, briefly, through the polite announcer
    u.t.run("send", "Announce me", "--to", "@bob", name="alice")
    u.wait("document.getElementById('announcer').textContent.includes('Announce me')", what="the announcement")
    assert u.js("document.getElementById('announcer').getAttribute('aria-live')") == "polite"


# -- the 10,000-message fixture -------------------------------------------------------------------------

@pytest.fixture
def fixture_daemon(fixture_tar, repo, env):
    from conftest import Thrum, extract_fixture

    extract_fixture(fixture_tar, repo)
    t = Thrum(repo, env)
    t.run("migrate")
    t.start()
    try:
        yield t
    finally:
        t.stop()


def test_ten_thousand_messages_are_paged_not_rendered(fixture_daemon, browser):
    u = UI(fixture_daemon, browser)
    try:
        u.wait("document.querySelectorAll('#view .msg').length > 0")
        u.wait("document.querySelector('.list-summary').textContent.includes('of 10,000')", what="the summary")
        assert u.js("document.querySelectorAll('#view .msg').length") == 50
        u.js("document.querySelector('.list-foot button').click()")
        u.wait("document.querySelectorAll('#view .msg').length === 100", what="a second page")
        # scrolling to the end loads more by itself, and the window never grows past its cap
        shown = "document.querySelectorAll('#view .msg').length"
        idle = "document.querySelector('.message-list').getAttribute('aria-busy') === 'false'"

        def scroll_away_and_back_to_the_end() -> None:
            # As a reader does: the end leaves the view and comes back, a rendered frame apart (the
            # observer only sees states that were rendered, and ignores the end while a page loads).
            u.wait(idle, what="the list to be idle")
            u.js("document.querySelector('#view .msg').scrollIntoView(); window.__framed = false; "
                 "requestAnimationFrame(() => requestAnimationFrame(() => { window.__framed = true; }))")
            u.wait("window.__framed", what="a rendered frame")
            u.js("document.querySelector('.sentinel').scrollIntoView()")

        for _ in range(15):
            n = u.js(shown)
            if n >= 600:
                break
            scroll_away_and_back_to_the_end()
            u.wait(f"{shown} > {n}", what="the next page, loaded by scrolling to the end")
        scroll_away_and_back_to_the_end()  # once more at the cap: a page loads, the newest are dropped
        u.wait(f"{idle} && {shown} === 600", what="the window to stay at its cap")
        count = u.js(shown)
        assert count == 600, count
        # the agents panel and an agent's inbox counts come from the daemon, not from rendering
        u.go("/agents")
        u.wait("document.querySelectorAll('.agent-card').length === 50", what="50 agent cards")
        u.go("/inbox/coordinator_0000")
        u.wait("/^[0-9,]+ unread/.test(document.querySelector('.inbox-counts').textContent)")
        u.wait("document.querySelectorAll('#view .msg').length === 50", what="one page of the inbox")
    finally:
        u.close()


def test_theme_button_overrides_the_system_scheme(ui):
    # The page follows the system's scheme until the Theme button picks one; the choice is kept.
    u = ui(scheme="light")
    background = "getComputedStyle(document.body).backgroundColor"
    system_light = u.js(background)
    seen = {}
    for _ in range(3):  # system -> light -> dark -> system, in some order: every state is reachable
        u.js("document.getElementById('theme').click()")
        seen[u.js("document.documentElement.dataset.theme || 'system'")] = u.js(background)
    assert set(seen) == {"system", "light", "dark"}, seen
    assert seen["dark"] != system_light and seen["light"] == system_light == seen["system"]
