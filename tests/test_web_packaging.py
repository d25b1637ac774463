"""The web UI ships inside the wheel (as thrum/web/) and the zipapp, and the zipapp's daemon serves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

from _rt import http_get
from conftest import FACTOR, ROOT, make_repo, wait_for

WEB = ROOT / "web"


def web_files() -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(WEB):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if not name.endswith(".pyc"):
                out.append(os.path.relpath(os.path.join(dirpath, name), WEB).replace(os.sep, "/"))
    return sorted(out)


def test_web_ui_is_build_free():
    files = web_files()
    assert "index.html" in files and "ui/app.js" in files
    # plain HTML, CSS and JavaScript modules: nothing to build, nothing to fetch
    assert not [f for f in files if f.endswith(("package.json", ".ts", ".jsx", ".tsx", ".scss", ".map"))]
    for f in files:
        if f.endswith((".js", ".html", ".css")):
            text = (WEB / f).read_text()
            for needle in ("https://", "http://", "//cdn", "fonts.googleapis", "@import url("):
                assert needle not in text.replace("http://127.0.0.1", "").replace('"https:"', "") \
                    .replace("https?:", ""), (f, needle)


def test_wheel_contains_the_web_ui(tmp_path, env):
    # Build from a copy of the tracked files, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300 * FACTOR)
    if proc.returncode != 0:  # no index reachable for the isolated build: use the installed setuptools
        proc = subprocess.run(cmd + ["--no-build-isolation"], env=env, capture_output=True, text=True,
                              timeout=300 * FACTOR)
    assert proc.returncode == 0, proc.stderr
    wheels = list(out.glob("thrum_agents-*.whl"))  # the distribution is thrum-agents (pyproject.toml)
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    missing = [f for f in web_files() if f"thrum/web/{f}" not in names]
    assert missing == [], missing


def test_zipapp_serves_the_web_ui(tmp_path, env):
    pyz = tmp_path / "thrum.pyz"
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_zipapp.py"), "--no-deps", "-o", str(pyz)],
                           env=env, capture_output=True, text=True, timeout=120 * FACTOR)
    assert build.returncode == 0, build.stderr
    names = set(zipfile.ZipFile(pyz).namelist())
    assert [f for f in web_files() if f"thrum/web/{f}" not in names] == []
    # websockets, copied beside (the zipapp was built without it, to stay offline): the daemon imports
    # thrum, and so the UI, from the zipapp and nothing else from this checkout.
    import websockets

    deps = tmp_path / "deps"
    shutil.copytree(os.path.dirname(websockets.__file__), deps / "websockets",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    bare.update(PYTHONPATH=str(deps), THRUM_WS_PORT="0")
    repo = make_repo(tmp_path / "zrepo", bare)

    def run(*args):
        proc = subprocess.run([sys.executable, str(pyz), *args], cwd=repo, env=bare, capture_output=True, text=True,
                              timeout=60 * FACTOR)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    run("init")
    run("daemon", "start")
    try:
        var = repo / ".thrum" / "var"
        pid = json.loads((var / "thrum.pid").read_text())["pid"]
        with open(f"/proc/{pid}/environ", "rb") as f:
            path = [e for e in f.read().split(b"\0") if e.startswith(b"PYTHONPATH=")][0]
        assert str(pyz).encode() in path and str(ROOT).encode() not in path, path
        wait_for(lambda: (var / "ws.port").exists(), 10, what="ws.port")
        port = int((var / "ws.port").read_text())
        url = json.loads(run("ui", "--no-open", "--json").stdout)["url"]
        token = url.split("token=")[1]
        auth = {"Authorization": f"Bearer {token}"}
        for path, expected in (("/", "index.html"), ("/agents", "index.html"), ("/ui/app.js", "ui/app.js"),
                               ("/ui/views/thread.js", "ui/views/thread.js"), ("/ui/style.css", "ui/style.css")):
            status, headers, body = http_get(port, path, auth)
            assert status == 200, (path, status)
            assert body == (WEB / expected).read_bytes(), path
    finally:
        run("daemon", "stop")


def test_index_allows_only_same_origin_resources():
    html = (WEB / "index.html").read_text()
    assert "Content-Security-Policy" in html and "default-src 'self'" in html
