#!/usr/bin/env python3
"""Build `thrum.pyz`: the thrum package, its web UI and its pure-Python dependencies in one file.

Usage: python3 scripts/build_zipapp.py [-o dist/thrum.pyz] [--no-deps]

The archive runs on a bare Python 3.11+ (`python3 thrum.pyz init`, `... daemon start`).
`websockets` is vendored without its optional C speedups (it falls back to pure
Python). `mcp` is not: it needs compiled packages (pydantic-core), so in a zipapp
`thrum mcp serve` explains how to install it instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = "import sys\nfrom thrum.__main__ import main\nsys.exit(main())\n"


def _copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd"))


def build(output: str, with_deps: bool) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        stage = os.path.join(tmp, "app")
        _copy_tree(os.path.join(ROOT, "thrum"), os.path.join(stage, "thrum"))
        _copy_tree(os.path.join(ROOT, "web"), os.path.join(stage, "thrum", "web"))
        if with_deps:
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                                   "--target", os.path.join(tmp, "deps"), "websockets>=13"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"warning: could not vendor websockets ({proc.stderr.strip()[:200]}); "
                      "the zipapp will run without the WebSocket server", file=sys.stderr)
            else:
                _copy_tree(os.path.join(tmp, "deps", "websockets"), os.path.join(stage, "websockets"))
        with open(os.path.join(stage, "__main__.py"), "w") as f:
            f.write(MAIN)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        zipapp.create_archive(stage, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=os.path.join(ROOT, "dist", "thrum.pyz"))
    parser.add_argument("--no-deps", action="store_true", help="do not vendor websockets")
    args = parser.parse_args()
    path = build(args.output, not args.no_deps)
    print(f"built {path} ({os.path.getsize(path) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
