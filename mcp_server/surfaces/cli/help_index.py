"""`arc --help` without building the parser: the text is stored (core/startup_cache.py) whenever arc builds its full
parser, and printed from there while arc's code and the terminal's width are the same."""
from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from ...core import startup_cache

if TYPE_CHECKING:
    import argparse

KIND = "cli-help"


def asks_for_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


def cached_help() -> str | None:
    text = startup_cache.read(KIND, _width())
    return text if isinstance(text, str) else None


def store_help(parser: argparse.ArgumentParser) -> None:
    if cached_help() is None:       # an entry is this build's (core/startup_cache.py): the same text
        startup_cache.write(KIND, parser.format_help(), _width())


def _width() -> str:
    return str(shutil.get_terminal_size().columns)     # what argparse wraps the text to
