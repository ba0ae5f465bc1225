"""`arc`: the command line. Every service operation is a command here, made from its declaration
(core/operations.py) and run through the same service layer as the MCP tools (human parity).

Commands talk to the daemon of the state dir, starting it when they need the hosts; reads such as `arc jobs` and
`arc sql` go to the history file directly when no daemon runs. Rich tables for people, `--json` for scripts.

- parser.py: the parser, made of the two kinds of command below; help_index.py: `arc --help` without making it;
- arguments.py: an operation's subcommand and generic command, from its declaration;
- custom.py: the three operations a person says in their own way (`submit`, `logs -f`, `wait`);
- commands.py: the commands that are not operations (hosts, daemon, data, demo, mcp);
- reach.py: how a command reaches the service; render.py: how a result is shown; hints.py: next steps as commands.
"""
from __future__ import annotations

import sys

from .help_index import asks_for_help, cached_help


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_word(argv)
    if command is None and asks_for_help(argv) and (text := cached_help()) is not None:
        sys.stdout.write(text)
        return 0
    from .parser import run

    return run(argv, command)


def _command_word(argv: list[str]) -> str | None:
    """The command's name: the first word that is neither a global option nor its value."""
    words = iter(argv)
    for word in words:
        if word in ("--hosts", "--state-dir", "--research"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None
