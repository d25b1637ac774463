"""What the daemon is made of, and the Store they share: kept below daemon.py and migrate.py.

The component modules (each may define `make_component(paths)`), the Store opened with the
tables and appliers they add, this clone's origin id, and the name of the lock that whoever
writes the store (the daemon, `thrum migrate`, `thrum backup restore`) holds for as long as it does.
Both the daemon and the offline tools import from here, so neither imports the other.
"""

from __future__ import annotations

import os
import socket

__all__ = ["COMPONENT_MODULES", "LOCK_NAME", "component_factories", "make_store", "origin_daemon_id"]

LOCK_NAME = "thrum.lock"

# Modules that may contribute a daemon component through make_component(paths).
COMPONENT_MODULES = ("thrum.sync", "thrum.push", "thrum.ws", "thrum.coordination", "thrum.delivery", "thrum.search")


def origin_daemon_id(thrum_dir: str) -> str:
    import hashlib

    from thrum.events import crockford_lower

    host = socket.gethostname()
    return "d_" + crockford_lower(hashlib.sha256(f"{host}\0{os.path.realpath(thrum_dir)}".encode()).digest(), 12)


def component_factories() -> list:
    """Optional parts of the daemon, each a factory(paths) -> component or None."""
    import importlib
    import importlib.util

    factories = []
    for module_name in COMPONENT_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        factory = getattr(importlib.import_module(module_name), "make_component", None)
        if factory is not None:
            factories.append(factory)
    return factories


def make_store(paths, sync_dir: str, components: list | None = None):
    """The Store as the daemon opens it, with the tables its components add."""
    from thrum.store import Store

    if components is None:
        components = [c for c in (f(paths) for f in component_factories()) if c is not None]
    store = Store(sync_dir, paths.db, paths.var, origin_daemon_id(paths.thrum))
    for component in components:
        extend = getattr(component, "extend_store", None)
        if extend is not None:
            extend(store)
    return store
