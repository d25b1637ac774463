"""thrum: Git-backed messaging and coordination for AI coding agents.

The public surface is the `thrum` command, the JSON-RPC API of its daemon and the
MCP server. Modules inside this package are internals, not a stable API.
"""

__version__ = "0.5.0"
