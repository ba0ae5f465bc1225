"""The history's refusals, in a module of their own so that code catching them need not load DuckDB."""


class HistoryError(ValueError):
    """Bad input to the history (unknown id, bad status, unknown column): the message says what and how to fix."""


class HistoryBusyError(RuntimeError):
    """The history file is held read-write by another process (normally the arc daemon)."""
