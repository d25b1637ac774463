"""Headless Chromium driven over the Chrome DevTools Protocol, for the web UI tests and scripts/screenshot.py.

No new dependency: Chromium is started with `--remote-debugging-pipe`, which speaks CDP as
NUL-separated JSON over two inherited file descriptors (3: commands in, 4: replies and events
out). A reader thread collects replies and events; every wait has a deadline.

    with Browser.launch() as b:
        page = b.new_page(width=1280, height=800)
        page.goto("http://127.0.0.1:9999/")
        page.wait_for("document.title.includes('thrum')")
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

__all__ = ["Browser", "Page", "find_chromium", "CDPError"]

FACTOR = float(os.environ.get("THRUM_TEST_TIMEOUT_FACTOR", "1"))
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# The machine has no network: keep Chromium from trying (component updates, safe browsing, …).
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-default-apps", "--disable-extensions", "--disable-sync",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--no-first-run",
    "--no-default-browser-check", "--metrics-recording-only", "--mute-audio", "--no-pings",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-color-profile=srgb", "--lang=en-US",
]


def _above_4(fd: int) -> int:
    """The same pipe end on a descriptor >= 10, so `3<&N` never means 3 or 4 themselves."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class CDPError(RuntimeError):
    pass


def find_chromium() -> str | None:
    env = os.environ.get("THRUM_CHROMIUM")
    if env:
        return env if os.path.exists(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, proc: subprocess.Popen, cmd_w: int, evt_r: int, profile: str) -> None:
        self.proc = proc
        self._w = os.fdopen(cmd_w, "wb", buffering=0)
        self._r = os.fdopen(evt_r, "rb", buffering=0)
        self.profile = profile
        self._id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

    @classmethod
    def launch(cls, binary: str | None = None, extra_flags: list[str] | None = None) -> "Browser":
        binary = binary or find_chromium()
        if not binary:
            raise FileNotFoundError("Chromium is not installed (apt-get install -y chromium)")
        profile = tempfile.mkdtemp(prefix="thrum-chromium-")
        cmd_r, cmd_w = os.pipe()   # we write commands, Chromium reads fd 3
        evt_r, evt_w = os.pipe()   # Chromium writes fd 4, we read
        cmd_r, evt_w = _above_4(cmd_r), _above_4(evt_w)
        args = [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", *(extra_flags or []),
                "about:blank"]
        # bash (dash takes one-digit fds only) puts the pipe ends on fds 3 and 4 exactly.
        script = f'exec "$@" 3<&{cmd_r} 4>&{evt_w} {cmd_r}<&- {evt_w}>&-'
        log = open(os.path.join(profile, "chromium.log"), "wb")
        try:
            proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", script, "bash", *args], pass_fds=(cmd_r, evt_w),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
            os.close(cmd_r)
            os.close(evt_w)
        return cls(proc, cmd_w, evt_r, profile)

    # -- protocol ------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._r.read(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._events.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        with self._lock:
            self._id += 1
            mid = self._id
            msg = {"id": mid, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            self._w.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout * FACTOR
        with self._cond:
            while mid not in self._replies:
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise CDPError(f"Chromium exited while waiting for {method}")
                if remaining <= 0:
                    raise CDPError(f"no reply to {method} within {timeout * FACTOR:g}s")
                self._cond.wait(remaining)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def events(self, session: str | None = None, method: str | None = None) -> list[dict]:
        with self._cond:
            return [e for e in self._events if (session is None or e.get("sessionId") == session)
                    and (method is None or e.get("method") == method)]

    # -- pages ---------------------------------------------------------------------------------

    def new_page(self, width: int = 1280, height: int = 800, color_scheme: str = "light") -> "Page":
        """A tab in a fresh browser context: its own cookies and storage, like a private window."""
        context = self.send("Target.createBrowserContext", {"disposeOnDetach": True})["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session, context)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=session)
        page.resize(width, height)
        page.color_scheme(color_scheme)
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except CDPError:
                    pass
                try:
                    self.proc.wait(timeout=10 * FACTOR)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for f in (self._w, self._r):
                try:
                    f.close()
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, target: str, session: str, context: str | None = None) -> None:
        self.browser, self.target, self.session, self.context = browser, target, session, context

    def close(self) -> None:
        try:
            self.browser.send("Target.closeTarget", {"targetId": self.target}, timeout=10)
            if self.context:
                self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context}, timeout=10)
        except CDPError:
            pass

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def resize(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def color_scheme(self, scheme: str) -> None:
        self.send("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})

    def goto(self, url: str) -> None:
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")

    def reload(self) -> None:
        self.send("Page.reload", {"ignoreCache": True})

    def eval(self, expression: str, timeout: float = 30):
        """The value of a JavaScript expression (promises are awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text")
            raise CDPError(f"JavaScript error: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10, what: str | None = None):
        """Poll a JavaScript expression until it is truthy; its value. Fails after `timeout` (scaled)."""
        deadline = time.monotonic() + timeout * FACTOR
        interval = 0.02
        last_error = None
        while True:
            try:
                # An element does not survive returnByValue: report it as true.
                value = self.eval(f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()")
                if value:
                    return value
            except CDPError as exc:  # e.g. the page is navigating
                last_error = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout * FACTOR:g}s waiting for {what or expression}"
                                     + (f" (last error: {last_error})" if last_error else ""))
            time.sleep(interval)
            interval = min(interval * 1.5, 0.2)

    def text(self, selector: str = "body") -> str:
        return self.eval(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")

    # keyboard: what a person without a mouse does

    def press(self, key: str, modifiers: int = 0) -> None:
        """Press and release a named key: Tab, Enter, Escape, ArrowDown…; modifiers 2 = Ctrl, 8 = Shift."""
        codes = {"Tab": 9, "Enter": 13, "Escape": 27, "Space": 32, "ArrowDown": 40, "ArrowUp": 38, "Backspace": 8}
        code = codes.get(key, 0)
        base = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
                "modifiers": modifiers}
        down = {**base, "type": "keyDown"}
        if key == "Enter" and not modifiers:
            down["text"] = "\r"
        self.send("Input.dispatchKeyEvent", down)
        self.send("Input.dispatchKeyEvent", {**base, "type": "keyUp"})

    def type(self, text: str) -> None:
        """Type text into whatever has the focus."""
        self.send("Input.insertText", {"text": text})

    def focused(self) -> str:
        """A short description of the focused element: tag#id or its label/text."""
        return self.eval("""(() => { const e = document.activeElement; if (!e) return '';
            return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ':' +
              (e.getAttribute('aria-label') || e.textContent || e.value || '').trim().slice(0, 60); })()""")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def requested_urls(self) -> list[str]:
        """Every URL this page asked for: documents, scripts, styles, images, fetches and WebSockets."""
        urls = [e["params"]["request"]["url"] for e in self.browser.events(self.session, "Network.requestWillBeSent")]
        urls += [e["params"]["url"] for e in self.browser.events(self.session, "Network.webSocketCreated")]
        return urls

    def console_errors(self) -> list[str]:
        out = []
        for e in self.browser.events(self.session, "Runtime.exceptionThrown"):
            d = e["params"]["exceptionDetails"]
            out.append((d.get("exception") or {}).get("description") or d.get("text", ""))
        for e in self.browser.events(self.session, "Log.entryAdded"):
            entry = e["params"]["entry"]
            if entry.get("level") == "error":
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return out
