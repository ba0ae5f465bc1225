"""`arc`'s parser, made from the operations' declarations and the commands that are not operations."""
from __future__ import annotations

import argparse
import sys

from .commands import COMMANDS, add_commands
from .help_index import store_help
from .hints import as_command_line
from .reach import CliError


def build_parser(operations: bool = True) -> argparse.ArgumentParser:
    """`arc`'s parser; without `operations`, only the commands that are not service operations (`arc mcp`, `arc
    daemon`, ...): those start without importing the service's declarations."""
    p = argparse.ArgumentParser(prog="arc", description="Run autoresearch experiments on a GPU fleet.")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if operations:
        _add_operations(sub)
    add_commands(sub)
    for command in subcommands(p):
        _global_options(command, top=False)
    if operations:
        store_help(p)
    return p


def _add_operations(sub) -> None:
    # Imported here: the declarations cost the non-operation commands (`arc mcp` first) a tenth of a second.
    from ...core.operations import registry
    from .arguments import add_operation
    from .custom import CUSTOM

    for op in registry().values():
        if op.name in CUSTOM:
            CUSTOM[op.name](sub)
        else:
            add_operation(sub, op)


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


def run(argv: list[str], command: str | None) -> int:
    # `arc mcp` starts once per Claude session: it and the other non-operation commands skip the declarations.
    args = build_parser(operations=command not in COMMANDS).parse_args(argv)
    try:
        return args.fn(args)
    except CliError as e:
        print(f"arc: {as_command_line(str(e))}", file=sys.stderr)   # refusals name tools too ("list_jobs shows...")
        return 1
    except KeyboardInterrupt:
        return 130
