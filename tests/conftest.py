"""Shared pytest setup: the netns/sshd host harness fixtures (see tests/harness/__init__.py for their API)."""
import os
import sys
import tempfile
from pathlib import Path

# `tests.harness` must import whether pytest runs as `pytest` or `python -m pytest`.
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

# arc's start-up cache (core/startup_cache.py) outside the person's own, so no test starts from what another run kept.
os.environ["ARC_CACHE_DIR"] = tempfile.mkdtemp(prefix="arc-test-cache-")

from tests.harness.fixtures import local_hosts_yaml, netns_factory, netns_hosts, slurm  # noqa: E402,F401
from tests.daemon_support import arcs  # noqa: E402,F401
