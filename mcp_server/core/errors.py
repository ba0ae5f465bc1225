"""The one refusal type of arc's operations: what was wrong and what to do instead. Every door shows its message
as it is (a ToolError for the agent, `arc: ...` for a person, a 400 answer over RPC)."""


class ArcError(Exception):
    """A refusal meant for the caller: what was wrong and what to do instead."""
