"""The UI's static files: content types, caching, SPA fallback, and no way out of the UI directory."""

from __future__ import annotations

import os
import pathlib

import pytest

from _rt import http_get, raw_http, ws_port, ws_token
from thrum.ws import StaticFiles, derive_username, parse_port

TRAVERSALS = [
    "/../../etc/passwd", "/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd", "/assets/../../secret.txt",
    "/%2e%2e%2fsecret.txt", "/..\\secret.txt", "/%5c..%5csecret.txt", "/secret.txt%00.html",
    "/.%2e/secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt", "/link/secret.txt", "/outside",
]


@pytest.fixture
def ui(tmp_path) -> pathlib.Path:
    root = tmp_path / "ui"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>UI</title>")
    (root / "assets" / "app.js").write_text("console.log('hi')")
    (root / "assets" / "app.css").write_text("body{}")
    (root / "logo.svg").write_text("<svg/>")
    (root / "manifest.webmanifest").write_text("{}")
    (root / ".hidden").write_text("no")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    os.symlink(tmp_path, root / "link")  # a symlink that leads out of the UI dir
    os.symlink(tmp_path / "secret.txt", root / "outside")
    return root


def test_static_lookup(ui):
    files = StaticFiles(ui)
    status, headers, body = files.lookup("/")
    assert (status, headers["Content-Type"], headers["Cache-Control"]) == (200, "text/html; charset=utf-8",
                                                                           "no-cache")
    assert body.startswith(b"<!doctype html>")
    status, headers, body = files.lookup("/assets/app.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert files.lookup("/assets/app.css")[1]["Content-Type"] == "text/css; charset=utf-8"
    assert files.lookup("/logo.svg")[1]["Content-Type"] == "image/svg+xml"
    assert files.lookup("/manifest.webmanifest")[1]["Content-Type"] == "application/manifest+json"
    # the SPA fallback: unknown routes get index.html, unknown assets a 404
    status, headers, body = files.lookup("/inbox/msg_123")
    assert status == 200 and body.startswith(b"<!doctype html>")
    assert files.lookup("/assets/missing.js")[0] == 404
    assert files.lookup("/.hidden")[0] == 404


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_traversal(ui, path):
    files = StaticFiles(ui)
    try:
        status, _, body = files.lookup(path.split("?")[0])
    except UnicodeError:
        return
    assert b"TOP SECRET" not in body and b"root:" not in body
    assert status in (200, 404)
    if status == 200:
        assert body.startswith(b"<!doctype html>")  # the SPA page, never the file asked for


def test_no_ui_installed():
    assert StaticFiles(None).lookup("/")[0] == 404


def test_derive_username_and_port_parsing():
    assert derive_username("Test User") == "test-user"
    assert derive_username("José  O'Brien_Jr") == "jose-obrien-jr"
    assert derive_username("李雷") == "user"
    assert derive_username("x" * 50) == "x" * 32
    assert parse_port("auto") == parse_port("0") == parse_port("") == 0
    assert parse_port("9999") == parse_port(9999) == 9999
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ValueError):
            parse_port(bad)


# -- over HTTP, against a real daemon ----------------------------------------------------------------

@pytest.fixture
def env(env, ui):
    env["THRUM_WS_PORT"] = "0"
    env["THRUM_UI_DEV"] = str(ui)
    return env


def test_http_static_and_traversal(daemon):
    port = ws_port(daemon)
    cookie = {"Cookie": f"thrum_token_{port}={ws_token(daemon)}"}
    status, headers, body = http_get(port, "/assets/app.js", cookie)
    assert status == 200 and body == b"console.log('hi')"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = http_get(port, "/some/route", cookie)
    assert status == 200 and body.startswith(b"<!doctype html>")
    status, headers, body = http_get(port, "/assets/app.js", cookie, method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len("console.log('hi')"))
    for path in TRAVERSALS:
        answer = raw_http(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                f"Cookie: thrum_token_{port}={ws_token(daemon)}\r\n\r\n".encode())
        assert b"TOP SECRET" not in answer and b"root:" not in answer, path
        assert answer.startswith(b"HTTP/1.1 "), path
    # other methods are refused
    status, headers, _ = http_get(port, "/", {**cookie, "Content-Length": "0"}, method="DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD"
