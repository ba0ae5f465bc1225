"""The doors to arc's operations: the MCP tools (tools.py), the stdio bridge Claude Code starts (bridge.py) and the
`arc` command (cli/). Each is made from the operations' declarations (core/operations.py), never by hand."""
