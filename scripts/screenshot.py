#!/usr/bin/env python3
"""Refresh docs/screenshot.png: the web UI's live feed on a small demo team, in headless Chromium.

Usage: python3 scripts/screenshot.py [-o docs/screenshot.png] [--path /agents] [--dark] [--size 1280x800]

Everything happens in a temporary directory: a git repository with its own HOME and git
identity, a daemon of its own (any free port), four agents who talk, reply and set intents.
Needs Chromium (apt-get install -y chromium); drives it with tests/_browser.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from _browser import Browser, find_chromium  # noqa: E402


class Demo:
    def __init__(self, tmp: str) -> None:
        self.repo = os.path.join(tmp, "repo")
        home = os.path.join(tmp, "home")
        os.makedirs(home)
        gitconfig = os.path.join(home, ".gitconfig")
        with open(gitconfig, "w") as f:
            f.write("[user]\n\tname = Leon Letto\n\temail = leon@example.com\n[init]\n\tdefaultBranch = main\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
        self.env.update(HOME=home, GIT_CONFIG_GLOBAL=gitconfig, GIT_CONFIG_NOSYSTEM="1", PYTHONPATH=ROOT,
                        THRUM_WS_PORT="0")
        os.makedirs(self.repo)
        for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
            subprocess.run(["git", *args], cwd=self.repo, env=self.env, check=True)

    def thrum(self, *args: str, name: str | None = None) -> str:
        env = dict(self.env, THRUM_NAME=name) if name else self.env
        proc = subprocess.run([sys.executable, "-m", "thrum", *args], cwd=self.repo, env=env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise SystemExit(f"thrum {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def rpc(self, method: str, **params) -> dict:
        sys.path.insert(0, ROOT)
        from thrum.rpc import Client

        with Client(os.path.join(self.repo, ".thrum", "var", "thrum.sock")).connect() as client:
            return client.call(method, params)

    def send(self, text: str, *args: str, name: str) -> str:
        return json.loads(self.thrum("send", text, *args, "--json", name=name))["message_id"]

    def reply(self, mid: str, text: str, name: str) -> str:
        return json.loads(self.thrum("reply", mid, text, "--json", name=name))["message_id"]

    def populate(self) -> None:
        team = [("alice", "implementer", "auth", "OAuth login flow"), ("bob", "reviewer", "auth", "Reviewing PR #214"),
                ("carol", "planner", "web", "Sprint 12 plan"), ("dave", "tester", "web", "")]
        for name, role, module, intent in team:
            args = ["quickstart", "--name", name, "--role", role, "--module", module]
            if intent:
                args += ["--intent", intent]
            self.thrum(*args, name=name)
        self.thrum("session", "set-task", "AUTH-31: token refresh", name="alice")
        self.rpc("group.create", name="backend", description="Server-side work")
        for member in ("alice", "bob"):
            self.rpc("group.member.add", group="backend", member_type="agent", member_value=member)
        plan = self.send("Sprint 12 starts today. Priorities: **OAuth login**, then the settings page.",
                         "--to", "@everyone", name="carol")
        self.reply(plan, "Taking OAuth. Branch `feature/oauth`, first PR by tomorrow.", name="alice")
        q = self.send("Should refresh tokens live in the session store or in a separate table?", "--to", "@reviewer",
                      name="alice")
        a = self.reply(q, "Separate table: we can expire them without touching sessions.", name="bob")
        self.reply(a, "Agreed, doing that.", name="alice")
        self.send("CI is red on main: `test_login_redirect` fails since 10:42.", "--to", "@backend",
                  "--priority", "critical", name="dave")
        self.send("Settings page mock-ups are in docs/design/settings.md", "--to", "@dave", "--priority", "low",
                  name="carol")
        self.send("Fix pushed in 3f2c1ab, CI is green again.", "--to", "@dave", "--priority", "high", name="bob")
        self.thrum("session", "end", name="dave")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=os.path.join(ROOT, "docs", "screenshot.png"))
    parser.add_argument("--path", default="/", help="the page to show (default: the live feed)")
    parser.add_argument("--size", default="1280x800")
    parser.add_argument("--dark", action="store_true", help="the dark colour scheme")
    args = parser.parse_args()
    if not find_chromium():
        print("error: Chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 1
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="thrum-shot-") as tmp:
        demo = Demo(tmp)
        demo.thrum("init")
        demo.thrum("daemon", "start")
        try:
            demo.populate()
            url = json.loads(demo.thrum("ui", "--no-open", "--json"))["url"]
            base, token = url.split("/?token=")
            with Browser.launch() as browser:
                page = browser.new_page(width, height, "dark" if args.dark else "light")
                page.goto(f"{base}{args.path}?token={token}")
                page.wait_for("document.getElementById('conn-text').textContent === 'CONNECTED'", 20)
                page.wait_for("document.getElementById('view').children.length > 0"
                              " && !document.querySelector('#view [aria-busy=true]')"
                              " && !document.querySelector('.arrived')", 20)
                page.eval("document.activeElement && document.activeElement.blur()")
                png = page.screenshot()
        finally:
            demo.thrum("daemon", "stop")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(png)
    print(f"wrote {args.output} ({len(png) // 1024} KiB, {width}x{height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
