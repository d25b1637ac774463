"""`.thrum/config.json` and the environment variables that override it.

Format (Go-compatible): `{"daemon": {"local_only": true, "sync_interval": 60,
"ws_port": "auto"}, "runtime": {"primary": "claude"}}`. Unknown keys are kept on save.
Precedence: environment > config file > default.
"""

from __future__ import annotations

import json
import os

__all__ = ["Settings", "load_settings", "load_config", "save_config"]


def load_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}


def save_config(path: str, data: dict) -> None:
    from thrum.identity import atomic_write

    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode(), 0o600)


class Settings:
    __slots__ = ("local_only", "local_only_source", "sync_interval", "sync_interval_source", "ws_port",
                 "ws_port_source", "runtime")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def load_settings(config_path: str, env: dict | None = None) -> Settings:
    env = os.environ if env is None else env
    data = load_config(config_path)
    daemon = data.get("daemon") if isinstance(data.get("daemon"), dict) else {}
    s = Settings()
    if env.get("THRUM_LOCAL"):
        s.local_only, s.local_only_source = _truthy(env["THRUM_LOCAL"]), "env THRUM_LOCAL"
    elif "local_only" in daemon:
        s.local_only, s.local_only_source = bool(daemon.get("local_only")), "config.json"
    else:
        s.local_only, s.local_only_source = False, "default"
    s.sync_interval, s.sync_interval_source = 60, "default"
    raw = env.get("THRUM_SYNC_INTERVAL")
    if raw and raw.isdigit() and int(raw) > 0:
        s.sync_interval, s.sync_interval_source = int(raw), "env THRUM_SYNC_INTERVAL"
    elif isinstance(daemon.get("sync_interval"), int) and daemon["sync_interval"] > 0:
        s.sync_interval, s.sync_interval_source = daemon["sync_interval"], "config.json"
    port = env.get("THRUM_WS_PORT")
    if port:
        s.ws_port, s.ws_port_source = port, "env THRUM_WS_PORT"
    elif daemon.get("ws_port") not in (None, ""):
        s.ws_port, s.ws_port_source = str(daemon["ws_port"]), "config.json"
    else:
        s.ws_port, s.ws_port_source = "9999", "default"
    runtime = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
    s.runtime = runtime.get("primary", "") if isinstance(runtime.get("primary", ""), str) else ""
    return s
