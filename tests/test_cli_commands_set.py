"""`arc`'s commands that are not service operations are parsed without the operations' declarations (so `arc mcp`
starts fast), and that list matches the commands the parser really has."""
from __future__ import annotations

import subprocess
import sys

from mcp_server.surfaces.cli.parser import build_parser, subcommands
from mcp_server.surfaces.cli.commands import COMMANDS


def test_the_fast_list_names_exactly_the_non_operation_commands():
    full = {p.prog.split()[1] for p in subcommands(build_parser())}
    light = {p.prog.split()[1] for p in subcommands(build_parser(operations=False))}
    assert light == set(COMMANDS)
    assert light < full and "jobs" in full - light


def test_arc_mcp_and_daemon_commands_do_not_import_the_service():
    code = ("import sys\nfrom mcp_server.surfaces.cli import main\n"
            "try:\n    main(['daemon', 'status', '--state-dir', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in ('mcp_server.core.service', 'duckdb', 'paramiko')))")
    out = subprocess.run([sys.executable, "-c", code, "/nonexistent-arc-state"], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
