"""A package's names imported from their modules on first use (PEP 562), so that importing one light part of a
package (a result model, a type, an error) does not load its heavy parts: `arc` starts without DuckDB or paramiko."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """`__getattr__` and `__all__` for `package`, whose names live in the modules `exports` maps them to."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, list(exports)
