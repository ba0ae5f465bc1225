"""The controller sees the workload only through trainer/contract.py, and never imports torch.

Checked on the source (every import statement under mcp_server/, wherever it sits: module top, function body) and
on a real import of every controller module in a fresh process, after which torch must not be loaded."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTRACT = "trainer.contract"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file; `from . import x` inside trainer/ would not reach here."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)]
            # `from trainer import config` names the submodule in the alias
            if node.module == "trainer":
                out += [(node.lineno, f"trainer.{alias.name}") for alias in node.names]
    return out


def _controller_imports() -> list[tuple[str, int, str]]:
    return [(str(p.relative_to(REPO)), line, module) for p in sorted((REPO / "mcp_server").rglob("*.py"))
            for line, module in _imports(p)]


def test_mcp_server_imports_the_trainer_only_through_its_contract():
    wrong = [f"{path}:{line} imports {module}" for path, line, module in _controller_imports()
             if (module == "trainer" or module.startswith("trainer.")) and module != CONTRACT]
    assert wrong == [], "import what the controller needs from trainer.contract (add it there if missing)"
    assert any(module == CONTRACT for _, _, module in _controller_imports())


def test_mcp_server_never_imports_torch_in_source():
    assert [f"{path}:{line}" for path, line, module in _controller_imports()
            if module.split(".")[0] == "torch"] == []


def test_importing_every_controller_module_loads_no_torch():
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "mcp_server").rglob("*.py") if p.stem != "__main__")  # entry points run arc
    code = ("import importlib, sys\n"
            f"for m in {['trainer.contract', *modules]!r}: importlib.import_module(m)\n"
            "from trainer.contract import code_folder, lookup, resolve_config\n"
            "assert (code_folder() / 'train.py').is_file()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
