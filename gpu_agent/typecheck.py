"""Checks a JSON value against a protocol TypedDict, with the standard library only (hosts have no pydantic).

It understands what protocol.py uses: TypedDicts (required and optional keys, unknown keys refused), Literal,
list[X], dict[str, X], unions (X | None), Any and the JSON scalars. A TypedDict's entries in
protocol.PARAM_RULES run on its well-typed values. The first problem raises Mismatch naming the value's path,
e.g. "params.argv.2: expected str, got int".
"""
from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal, Union

from . import protocol

_JSON_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object",
               type(None): "null"}


class Mismatch(ValueError):
    pass


def check(value: Any, tp: Any, path: str) -> Any:
    """`value` as it is to be used (rules may normalise it), or Mismatch."""
    if _is_typeddict(tp):
        return _check_typeddict(value, tp, path)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise Mismatch(f"{path}: expected one of {list(args)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return check(value, option, path)
            except Mismatch:
                continue
        raise Mismatch(f"{path}: expected {' or '.join(_name(a) for a in args)}, got {_got(value)}")
    if origin is list:
        _expect(value, list, path, tp)
        return [check(item, args[0], f"{path}.{i}") for i, item in enumerate(value)]
    if origin is dict:
        _expect(value, dict, path, tp)
        for key in value:
            if not isinstance(key, str):
                raise Mismatch(f"{path}: keys must be strings, got {key!r}")
        return {key: check(item, args[1], f"{path}.{key}") for key, item in value.items()}
    if tp is float:     # JSON has one number type: an integer is a float too
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise Mismatch(f"{path}: expected float, got {_got(value)}")
    if tp is type(None):
        if value is None:
            return value
        raise Mismatch(f"{path}: expected null, got {_got(value)}")
    if tp in (bool, int, str):
        _expect(value, tp, path, tp)
        return value
    raise TypeError(f"typecheck cannot check {tp!r} (at {path}): extend it or use a simpler type")


def _check_typeddict(value: Any, tp: type, path: str) -> dict[str, Any]:
    _expect(value, dict, path, tp)
    hints = _hints(tp)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise Mismatch(f"{path}: unknown param(s) {unknown}; allowed: {sorted(hints) or 'none'}")
    missing = sorted(tp.__required_keys__ - set(value))
    if missing:
        raise Mismatch(f"{path}.{missing[0]} is required")
    rules = protocol.PARAM_RULES.get(tp, {})
    out = {}
    for key, item in value.items():
        out[key] = check(item, hints[key], f"{path}.{key}")
        if key in rules:
            try:
                out[key] = rules[key](out[key])
            except ValueError as e:
                raise Mismatch(f"{path}.{key}: {e}, got {item!r}") from None
    return out


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def _is_typeddict(tp: Any) -> bool:
    # typing's and typing_extensions' TypedDicts differ in class, not in these attributes (protocol.py uses either)
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _expect(value: Any, cls: type, path: str, tp: Any) -> None:
    if not isinstance(value, cls) or (cls is int and isinstance(value, bool)):
        raise Mismatch(f"{path}: expected {_name(tp)}, got {_got(value)}")


def _name(tp: Any) -> str:
    if _is_typeddict(tp):
        return "object"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"object of {_name(typing.get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)
