"""The service's next-step hints, written for the agent as MCP tool calls (`list_jobs(limit=3, offset=3)`), as arc
command lines for a person at a terminal (`arc jobs --limit 3 --offset 3`). One hint serves both: the agent reads
the tool call, `arc` shows the command, and `arc --json` keeps the hint as the service wrote it.

Which command and option say each tool and parameter is read off `arc`'s own parser, which is made from the same
declarations as the tools: a hint can never name an option arc lacks."""
from __future__ import annotations

import ast
import functools
import re
import shlex
from typing import Any



# tool: (command, {parameter: its option; "" = positional; None = the command needs no such option (the hint
# leaves it out); a dict = the options of an object's keys}). A parameter missing from the map has no command line
# that says it, so a hint using it stays a tool call. A list goes as one option per item (`--status a --status b`),
# or after one option where the option ends in "+" (nargs="+": `--seeds 1 2`).
Options = dict[str, "str | None | Options"]


@functools.cache
def commands() -> dict[str, tuple[str, Options]]:
    from ...core.operations import tools
    from .parser import build_parser, subcommands

    parsers = {parser.prog: parser for parser in subcommands(build_parser())}
    found: dict[str, tuple[str, Options]] = {}
    for op in tools():
        parser = parsers[f"arc {op.cli}"]
        options: Options = {}
        for action in parser._actions:
            outer, _, inner = action.dest.partition(".")
            if outer not in op.params.model_fields:
                continue
            option = max(action.option_strings, key=len) + ("+" if action.nargs == "+" else "") \
                if action.option_strings else ""
            if inner:
                options.setdefault(outer, {})[inner] = option
            else:
                options[outer] = option
        for dropped in parser.get_default("hint_drops") or ():
            options[dropped] = None
        found[op.name] = (parser.prog, options)
    return found


def __getattr__(name: str) -> Any:
    if name == "COMMANDS":
        return commands()
    raise AttributeError(name)


# a tool's name, and its argument list when one follows (one level of brackets inside, as in job_ids=['j1']); not
# a quoted name, which is a value echoed back ("no table 'digest'")
@functools.cache
def _tool_pattern() -> re.Pattern:
    from ...core.operations import tools

    names = "|".join(op.name for op in tools())
    return re.compile(r"(?<![\w'\"])(" + names + r")(?![\w'\"])(\((?:[^()]|\([^()]*\))*\))?")


def as_command_line(hint: str) -> str:
    return _tool_pattern().sub(_command, hint)


def _command(match: re.Match) -> str:
    tool, arguments = match.groups()
    command, options = commands()[tool]
    if not arguments:
        return command
    try:
        call = ast.parse(tool + arguments, mode="eval").body   # a Call: the pattern ends in its brackets
        given = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
        return match.group(0)
    words = None if call.args else _words(options, given)
    return match.group(0) if words is None else " ".join([command, *words])   # None: no command line says it


def _words(options: Options, given: dict) -> list[str] | None:
    words: list[str] = []
    for key, value in given.items():
        if key not in options:
            return None
        option = options[key]
        if isinstance(option, dict):
            inner = _words(option, value) if isinstance(value, dict) else None
            if inner is None:
                return None
            words += inner
        elif option is not None:
            items = [_word(key, item) for item in (value if isinstance(value, list) else [value])]
            if option.endswith("+"):
                words += [option[:-1], *items]
            else:
                words += [w for item in items for w in ([option, item] if option else [item])]
    return words


def _word(key: str, value: Any) -> str:
    """A value for the shell; `...` (the hint leaves it to the reader) becomes a placeholder named after it."""
    return key.upper() if value is Ellipsis else shlex.quote(str(value))
