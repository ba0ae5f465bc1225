"""An operation's command line, made from its declaration: a subcommand named by `cli`, one argument per
parameter of its typed input (`--kebab-name`, or what its `Cli(...)` marker says), its help from the docstring
and the fields' descriptions, and one generic command that calls it and shows the result."""
from __future__ import annotations

import argparse
import base64
import getpass
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ...core.operations import Cli, Operation
from .reach import CliError, as_arguments, call, read_or_call
from .render import console, emit, renderer


def subparser(tree: argparse._SubParsersAction, words: list[str], help: str,
              description: str | None = None) -> argparse.ArgumentParser:
    """The parser for command words like ['hypotheses', 'add'], making the groups on the way."""
    for word in words[:-1]:
        group = tree.choices.get(word) or tree.add_parser(word, help=f"{word}: see `arc {word} --help`")
        nested = next((a for a in group._actions if isinstance(a, argparse._SubParsersAction)), None)
        tree = nested or group.add_subparsers(dest=f"{word}_action", required=True, metavar="ACTION")
    return tree.add_parser(words[-1], help=help, description=description or help)


def add_operation(tree: argparse._SubParsersAction, op: Operation) -> argparse.ArgumentParser:
    parser = subparser(tree, op.cli.split(), op.summary, op.help)
    for name, info in op.params.model_fields.items():
        kind = _unwrap(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):      # e.g. compare={a: [...], b: [...]}
            for inner, inner_info in kind.model_fields.items():
                _add(parser, f"{name}.{inner}", inner, Cli(), inner_info.annotation, inner_info.description,
                     required=False)
            continue
        _add(parser, name, name, op.cli_of(name), info.annotation, info.description, required=info.is_required())
    if op.shown.image:
        parser.add_argument("-o", "--out", default=f"arc-{op.cli.split()[-1]}.png", dest="out_file",
                            help="where to write the PNG")
    parser.set_defaults(fn=lambda args: run_operation(op, args))
    return parser


def _add(parser, dest: str, name: str, cli: Cli, annotation: Any, description: str | None, required: bool) -> None:
    kind = _unwrap(annotation)
    origin = typing.get_origin(kind)
    options: dict[str, Any] = {"dest": dest, "help": description, "metavar": name.upper()}
    if kind is bool:
        options.update(action="store_true")
        del options["metavar"]
    elif origin is dict:
        options.update(nargs="+", metavar="KEY=VALUE", type=_override)
    elif origin is list:
        options.update(_scalar(typing.get_args(kind)[0]))
        if cli.repeat:
            options["action"] = "append"
        else:
            options["nargs"] = "*" if cli.positional and not required else "+"
    else:
        options.update(_scalar(kind))
        if cli.positional and not required:
            options["nargs"] = "?"
    if cli.positional:
        options.pop("dest")
        parser.add_argument(dest, **options)
    else:
        parser.add_argument(cli.option or "--" + name.replace("_", "-"), required=required, **options)


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _scalar(kind: Any) -> dict[str, Any]:
    values = [m.value for m in kind] if isinstance(kind, type) and issubclass(kind, Enum) else \
        list(typing.get_args(kind)) if typing.get_origin(kind) is Literal else None
    if values is not None:
        return {"choices": values, "metavar": "{" + ",".join(values) + "}"}
    return {"type": kind} if kind in (int, float) else {}


def _override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"'{item}' is not KEY=VALUE, e.g. depth=10 matrix_lr=0.03")
    key, raw = item.split("=", 1)
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`depth=10 matrix_lr=0.03` → {"depth": 10, "matrix_lr": 0.03}; a value that is not JSON stays a string."""
    try:
        return dict(_override(item) for item in items)
    except argparse.ArgumentTypeError as e:
        raise CliError(f"--set takes key=value: {e}") from None


def arguments_of(op: Operation, args: argparse.Namespace) -> dict[str, Any]:
    """The operation's arguments as the command line gave them."""
    given = vars(args)
    params: dict[str, Any] = {}
    for name, info in op.params.model_fields.items():
        kind = _unwrap(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            inner = {k: given.get(f"{name}.{k}") for k in kind.model_fields}
            if any(v is not None for v in inner.values()) and not all(v is not None for v in inner.values()):
                raise CliError(f"{' and '.join('--' + k.replace('_', '-') for k in inner)} go together: "
                               f"together they give {name}")
            params[name] = inner if any(v is not None for v in inner.values()) else None
        else:
            value = given.get(name)
            if typing.get_origin(kind) is dict and value is not None:
                value = dict(value)
            params[name] = None if value is False or value == [] else value
    return as_arguments(params)


def run_operation(op: Operation, args: argparse.Namespace) -> int:
    params = arguments_of(op, args)
    if op.caller:
        params[op.caller] = getpass.getuser()
    data = read_or_call(args, op.name, **params) if op.offline else call(args, op.name, **params)
    if op.shown.image:
        out = Path(args.out_file)
        out.write_bytes(base64.urlsafe_b64decode(data.pop(op.shown.image)))  # pydantic's bytes: url-safe base64
        emit(args, {**data, "path": str(out)}, lambda c, d: c.print(f"{d['summary']}; saved {d['path']}"))
    else:
        emit(args, data, renderer(op.result))
    return 0


__all__ = ["add_operation", "arguments_of", "console", "parse_overrides", "run_operation", "subparser"]
