"""thrum: Git-backed messaging and coordination for AI coding agents.

The public surface is the `thrum` command, the JSON-RPC API of its daemon and the
MCP server. Modules inside this package are internals, not a stable API.
"""

__version__ = "0.5.0"

# The distribution name on PyPI ("thrum" there is an unrelated project); the command stays `thrum`.
DISTRIBUTION = "thrum-agents"

# The Go project this one re-implements (its log format, RPC and CLI); not this program's home.
ORIGINAL_PROJECT_URL = "https://github.com/leonletto/thrum"
