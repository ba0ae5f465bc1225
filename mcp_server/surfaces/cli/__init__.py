"""`arc`: the command line. Every service operation is a command here, made from its declaration
(core/operations.py) and run through the same service layer as the MCP tools (human parity).

Commands talk to the daemon of the state dir, starting it when they need the hosts; reads such as `arc jobs` and
`arc sql` go to the history file directly when no daemon runs. Rich tables for people, `--json` for scripts.

- arguments.py: an operation's subcommand and generic command, from its declaration;
- custom.py: the three operations a person says in their own way (`submit`, `logs -f`, `wait`);
- commands.py: the commands that are not operations (hosts, daemon, data, demo, mcp);
- reach.py: how a command reaches the service; render.py: how a result is shown; hints.py: next steps as commands.
"""
from __future__ import annotations

import argparse
import sys

from ...core.operations import registry
from .arguments import add_operation
from .commands import COMMANDS, add_commands
from .custom import CUSTOM
from .hints import as_command_line
from .reach import CliError


def build_parser(operations: bool = True) -> argparse.ArgumentParser:
    """`arc`'s parser; without `operations`, only the commands that are not service operations (`arc mcp`, `arc
    daemon`, ...): those start without importing the service's declarations."""
    p = argparse.ArgumentParser(prog="arc", description="Run autoresearch experiments on a GPU fleet.")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for op in registry().values() if operations else ():
        if op.name in CUSTOM:
            CUSTOM[op.name](sub)
        else:
            add_operation(sub, op)
    add_commands(sub)
    for command in subcommands(p):
        _global_options(command, top=False)
    return p


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its name (`arc hosts check --hosts FILE`). A command's
    copies default to SUPPRESS, so they set only what is given after the name and keep what came before."""
    given_only = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--hosts", help="fleet file (env ARC_HOSTS; default ./hosts.yaml, else your own from "
                                         "`arc init`)", **given_only)
    parser.add_argument("--state-dir", help="history and daemon files (env ARC_STATE_DIR; default ./.arc beside a "
                                            "project's fleet file, else arc's user data dir)", **given_only)
    parser.add_argument("--research", help="campaign rules (env ARC_RESEARCH, default research.yaml beside the "
                                           "hosts file)", **given_only)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables", **given_only)


def subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:      # argparse lists subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield command
                yield from subcommands(command)


def _command_word(argv: list[str]) -> str | None:
    """The command's name: the first word that is neither a global option nor its value."""
    words = iter(argv)
    for word in words:
        if word in ("--hosts", "--state-dir", "--research"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `arc mcp` starts once per Claude session: it and the other non-operation commands skip the declarations.
    args = build_parser(operations=_command_word(argv) not in COMMANDS).parse_args(argv)
    try:
        return args.fn(args)
    except CliError as e:
        print(f"arc: {as_command_line(str(e))}", file=sys.stderr)   # refusals name tools too ("list_jobs shows...")
        return 1
    except KeyboardInterrupt:
        return 130
