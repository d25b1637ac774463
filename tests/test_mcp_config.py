"""`thrum setup mcp`: writes the thrum server entry into an agent tool's MCP config, idempotently."""

from __future__ import annotations

import json
import tomllib

import pytest


def setup_mcp(t, *args, check=True, env=None):
    return t.run("setup", "mcp", *args, check=check, env=env)


def setup_json(t, *args, env=None) -> dict:
    proc = t.run("setup", "mcp", *args, "--json", env=env)
    return json.loads(proc.stdout)


def test_claude_project_config_is_created_then_left_alone(thrum):
    t = thrum
    out = setup_mcp(t, "--runtime", "claude")
    assert "✓ Created" in out.stdout and ".mcp.json" in out.stdout and "Runs: thrum mcp serve" in out.stdout
    path = t.repo / ".mcp.json"
    assert json.loads(path.read_text()) == {
        "mcpServers": {"thrum": {"type": "stdio", "command": "thrum", "args": ["mcp", "serve"]}}}
    before = path.stat().st_mtime_ns, path.read_bytes()
    again = setup_json(t)  # detected from .mcp.json now
    assert again["action"] == "unchanged" and again["runtime"] == "claude"
    assert "found .mcp.json" in again["runtime_source"]
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_update_keeps_everything_else(thrum):
    t = thrum
    path = t.repo / ".mcp.json"
    path.write_text(json.dumps({
        "mcpServers": {"other": {"command": "x", "args": ["y"]},
                       "thrum": {"command": "old-thrum", "args": [], "env": {"THRUM_X": "1"}}},
        "somethingElse": {"keep": True}}))
    res = setup_json(t, "--runtime", "claude", "--agent-id", "@alice")
    assert res["action"] == "update"
    data = json.loads(path.read_text())
    assert data["somethingElse"] == {"keep": True}
    assert data["mcpServers"]["other"] == {"command": "x", "args": ["y"]}
    assert data["mcpServers"]["thrum"] == {"command": "thrum", "args": ["mcp", "serve", "--agent-id", "alice"],
                                           "env": {"THRUM_X": "1"}, "type": "stdio"}
    assert list(data["mcpServers"]) == ["other", "thrum"]


def test_cursor_is_detected_and_gemini_gets_a_long_timeout(thrum):
    t = thrum
    (t.repo / ".cursor").mkdir()
    res = setup_json(t)
    assert res["runtime"] == "cursor" and res["action"] == "create"
    assert json.loads((t.repo / ".cursor" / "mcp.json").read_text())["mcpServers"]["thrum"] == {
        "command": "thrum", "args": ["mcp", "serve"]}
    gemini = t.repo / ".gemini" / "settings.json"
    gemini.parent.mkdir()
    gemini.write_text(json.dumps({"theme": "dark", "mcpServers": {}}))
    res = setup_json(t, "--runtime", "gemini", "--command", "python3 -m thrum")
    assert res["action"] == "add"
    data = json.loads(gemini.read_text())
    assert data["theme"] == "dark"
    assert data["mcpServers"]["thrum"] == {"command": "python3", "args": ["-m", "thrum", "mcp", "serve"],
                                           "timeout": 660000}


def test_codex_toml_is_edited_in_place(thrum, tmp_path):
    t = thrum
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    config = codex_home / "config.toml"
    config.write_text('model = "o4"  # my model\n\n[mcp_servers.docs]\ncommand = "docs-mcp"\n\n'
                      '[mcp_servers.thrum]\ncommand = "old"\ntool_timeout_sec = 900\n\n'
                      '[mcp_servers.thrum.env]\nTHRUM_X = "1"\n\n# profiles below\n[profiles.fast]\nmodel = "mini"\n')
    env = {**t.env, "CODEX_HOME": str(codex_home)}
    res = setup_json(t, "--runtime", "codex", "--agent-id", "bob", env=env)
    assert res["action"] == "update" and res["path"] == str(config)
    text = config.read_text()
    data = tomllib.loads(text)
    assert data["model"] == "o4" and data["profiles"] == {"fast": {"model": "mini"}}
    assert data["mcp_servers"]["docs"] == {"command": "docs-mcp"}
    assert data["mcp_servers"]["thrum"] == {"command": "thrum", "args": ["mcp", "serve", "--agent-id", "bob"],
                                            "tool_timeout_sec": 900, "env": {"THRUM_X": "1"}}
    assert '# my model' in text and "# profiles below\n[profiles.fast]" in text
    assert setup_json(t, "--runtime", "codex", "--agent-id", "bob", env=env)["action"] == "unchanged"
    assert config.read_text() == text
    # a fresh Codex home: the file is created, with a tool timeout long enough for wait_for_message
    other = tmp_path / "codex2"
    res = setup_json(t, "--runtime", "codex", env={**t.env, "CODEX_HOME": str(other)})
    assert res["action"] == "create"
    assert tomllib.loads((other / "config.toml").read_text())["mcp_servers"]["thrum"] == {
        "command": "thrum", "args": ["mcp", "serve"], "tool_timeout_sec": 660}


def test_dry_run_writes_nothing(thrum):
    t = thrum
    out = setup_mcp(t, "--runtime", "cursor", "--dry-run")
    assert "Would create" in out.stdout and '"thrum"' in out.stdout
    assert not (t.repo / ".cursor").exists()
    assert setup_json(t, "--runtime", "cursor", "--dry-run")["dry_run"] is True


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_json_is_left_alone(thrum, content):
    t = thrum
    path = t.repo / ".mcp.json"
    path.write_text(content)
    proc = setup_mcp(t, "--runtime", "claude", check=False)
    assert proc.returncode == 1 and "left unchanged" in proc.stderr
    assert path.read_text() == content


def test_unsafe_toml_is_left_alone(thrum, tmp_path):
    t = thrum
    config = tmp_path / "config.toml"
    config.write_text('mcp_servers = { thrum = { command = "x" } }\n')
    proc = setup_mcp(t, "--runtime", "codex", "--config", str(config), check=False)
    assert proc.returncode == 1 and "by hand" in proc.stderr and "[mcp_servers.thrum]" in proc.stderr
    assert config.read_text() == 'mcp_servers = { thrum = { command = "x" } }\n'


def test_runtime_must_be_clear(thrum):
    t = thrum
    proc = setup_mcp(t, check=False)
    assert proc.returncode == 2 and "--runtime claude|cursor|codex|gemini" in proc.stderr
    (t.repo / ".claude").mkdir()
    (t.repo / ".cursor").mkdir()
    proc = setup_mcp(t, check=False)
    assert proc.returncode == 2 and "several agent tools" in proc.stderr and "claude" in proc.stderr
    proc = setup_mcp(t, "--runtime", "claude", "--agent-id", "No Way", check=False)
    assert proc.returncode == 2 and "invalid --agent-id" in proc.stderr
