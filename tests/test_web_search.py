"""The web UI's search box in headless Chromium, against a real daemon (fixtures from test_web_ui)."""

from __future__ import annotations

import json

from test_web_ui import UI, browser, env, ui  # noqa: F401 (fixtures)


def search_from_the_box(u, query: str) -> None:
    u.js(f"""(() => {{
        document.getElementById('search-q').value = {json.dumps(query)};
        document.getElementById('search').requestSubmit();
    }})()""")


def test_search_box_lists_hits_and_a_hit_opens_its_thread(ui):
    u = ui()
    t = u.t
    root = t.call("message.send", caller_agent_id="alice", content="The nightly build fails on arm64")
    reply = t.call("message.send", caller_agent_id="bob", content="arm64 runner ran out of disk",
                   reply_to=root["message_id"])
    t.call("message.send", caller_agent_id="bob", content="unrelated lunch plans")
    t.call("message.send", caller_agent_id="alice", content="<b>arm64</b> markup stays text")
    search_from_the_box(u, "arm64 disk")
    u.wait("location.pathname === '/search' && document.querySelectorAll('#view .hit').length === 1",
           what="one hit for 'arm64 disk'")
    assert u.js("new URLSearchParams(location.search).get('q')") == "arm64 disk"
    assert u.js("document.getElementById('view-title').textContent") == "Search: arm64 disk"
    head = u.page.text("#view .hit .hit-head")
    assert "@bob" in head
    marks = u.js("[...document.querySelectorAll('#view .hit mark')].map(m => m.textContent)")
    assert marks == ["arm64", "disk"]
    # message text is text: no element came out of the snippet
    search_from_the_box(u, "markup")
    u.wait("document.querySelectorAll('#view .hit').length === 1 && "
           "document.querySelector('#view .hit-snippet').textContent.includes('<b>')", what="the markup hit")
    assert u.js("document.querySelectorAll('#view .hit-snippet b').length") == 0
    # back to the first search, then open the hit: its thread, with that message current
    search_from_the_box(u, "arm64 disk")
    u.wait("document.querySelectorAll('#view .hit').length === 1 && "
           "document.querySelector('#view .hit-snippet').textContent.includes('disk')")
    u.js("document.querySelector('#view .hit-link').click()")
    u.wait(f"location.pathname === '/thread/{reply['message_id']}' && "
           "document.querySelectorAll('#view .thread-tree .msg').length === 2", what="the thread of the hit")
    assert "runner ran out of disk" in u.page.text("#view .msg.current")
    assert "nightly build" in u.page.text("#view .thread-tree")


def test_search_errors_and_empty_results_are_said_in_the_view(ui):
    u = ui()
    search_from_the_box(u, '"unbalanced')
    u.wait("document.querySelector('#view .search-error')", what="the error")
    assert "unbalanced quote" in u.page.text("#view .search-error")
    search_from_the_box(u, "nothingmatchesthis")
    u.wait("document.querySelector('#view [role=status]') && document.querySelector('#view [role=status]')"
           ".textContent.includes('No messages match')", what="the empty result")
    # a reload of /search?q=… lands on the same results
    u.t.call("message.send", caller_agent_id="alice", content="找到认证问题了")
    u.page.reload()
    u.wait_connected()
    search_from_the_box(u, "认证")
    u.wait("document.querySelectorAll('#view .hit').length === 1", what="the Chinese hit")
    assert u.js("document.querySelector('#view .hit mark').textContent") == "认证"
    u.page.reload()
    u.wait_connected()
    u.wait("document.querySelectorAll('#view .hit').length === 1", what="the hit again after a reload")


import pytest  # noqa: E402

from test_web_ui import CONTRAST_JS  # noqa: E402


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_search_results_are_readable_in_both_colour_schemes(ui, scheme):
    u = ui(scheme=scheme)
    for i in range(3):
        u.t.call("message.send", caller_agent_id="alice", content=f"contrast check number {i} for the search view")
    search_from_the_box(u, "contrast search")
    u.wait("document.querySelectorAll('#view .hit mark').length >= 6", what="highlighted hits")
    result = u.js(CONTRAST_JS)
    assert result["checked"] > 10, result
    assert result["bad"] == [], f"{scheme}: {result['bad']}"
