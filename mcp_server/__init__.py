"""arc's controller: MCP tools, the `arc` command, the scheduler, the DuckDB history and the SSH fleet.

Never imports torch.
"""
__version__ = "0.1.0"
