"""`arc --help` without building the parser: the text is stored (core/startup_cache.py) whenever arc builds its full
parser, and printed from there while arc's code and the terminal's width are the same."""
from __future__ import annotations

import shutil

from ...core import startup_cache

KIND = "cli-help"


def asks_for_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


def cached_help() -> str | None:
    text = startup_cache.read(KIND, _width())
    return text if isinstance(text, str) else None


def store_help(text: str) -> None:
    if cached_help() != text:
        startup_cache.write(KIND, text, _width())


def _width() -> str:
    return str(shutil.get_terminal_size().columns)     # what argparse wraps the text to
