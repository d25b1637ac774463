"""The README's user story, end to end: init, daemon, quickstart, send, inbox, reply."""


def test_user_story(agents):
    t = agents
    sent = t.json("send", "hi bob", "--to", "@bob", name="alice")
    assert sent["message_id"].startswith("msg_")
    inbox = t.json("inbox", name="bob")
    assert [m["body"]["content"] for m in inbox["messages"]] == ["hi bob"]
    assert inbox["messages"][0]["agent_id"] == "alice"
    reply = t.json("reply", sent["message_id"], "hello alice", name="bob")
    alice_inbox = t.json("inbox", name="alice")
    assert [(m["message_id"], m["reply_to"]) for m in alice_inbox["messages"]] == \
        [(reply["message_id"], sent["message_id"])]


def test_readme_try_it_command(env, tmp_path):
    """The README's one-line try-it command, as written, after its install step.

    The install part (venv + pip) is what CI itself does with `pip install -e`; here `thrum` on
    PATH runs this checkout, and everything from `cd "$(mktemp -d)"` on is the README's text.
    """
    import os
    import re
    import subprocess
    import sys

    from conftest import FACTOR, ROOT

    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```sh\n(.*?)\n```", section, re.S).group(1).strip()
    assert "\n" not in command, "the try-it command must stay one line"
    install, sep, rest = command.partition('cd "$(mktemp -d)"')
    assert sep and "pip install" in install, command
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "thrum"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m thrum "$@"\n')
    shim.chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run_env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", TMPDIR=str(scratch))
    try:
        proc = subprocess.run(["bash", "-c", "set -e; " + sep + rest], env=run_env, capture_output=True,
                              text=True, timeout=120 * FACTOR)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Hello bob, the auth API is ready" in proc.stdout and "@alice → @bob" in proc.stdout
    finally:
        for repo in scratch.iterdir():  # the command started a daemon in its scratch repository
            subprocess.run([sys.executable, "-m", "thrum", "daemon", "stop"], cwd=repo, env=run_env,
                           capture_output=True, timeout=60 * FACTOR)
