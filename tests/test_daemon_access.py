"""Only the daemon's owner may talk to it: it holds the owner's SSH reach to every GPU host. The unix socket and the
token file are owner-only; every HTTP request, on the socket or the loopback port, must carry the bearer token;
anything else is refused (401) and logged. Another user (`nobody`) can neither connect nor read the token."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mcp_server.daemon.client import _UnixConnection
from tests.daemon_support import Arc


NOBODY_PROBE = """
import http.client, json, socket, sys
sock_path, token_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    out["socket"] = "connected"
except OSError as e:
    out["socket"] = type(e).__name__
try:
    open(token_path).read()
    out["token"] = "read"
except OSError as e:
    out["token"] = type(e).__name__
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
conn.request("POST", "/rpc/list_jobs", body="{}", headers={"Content-Type": "application/json"})
out["http"] = conn.getresponse().status
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def daemon(netns_hosts):
    # A state dir whose parents other users may traverse, so that only the daemon's own modes keep them out.
    root = Path(tempfile.mkdtemp(prefix="arc-access-", dir="/tmp"))
    os.chmod(root, 0o755)
    arc = Arc(root / "state", netns_hosts.hosts_yaml)
    arc.start()
    yield arc
    arc.stop()
    shutil.rmtree(root)


def http_status(arc: Arc, method: str, path: str, token: str | None, unix: bool = False) -> tuple[int, dict]:
    info = arc.client.info()
    conn = _UnixConnection(info["socket"], 10) if unix else http.client.HTTPConnection("127.0.0.1", info["port"],
                                                                                       timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=None if method == "GET" else "{}", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, {}


def test_socket_token_and_state_dir_are_owner_only(daemon):
    socket_path = Path(daemon.client.info()["socket"])
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.paths.daemon_token.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.paths.root.stat().st_mode) == 0o700
    assert socket_path.stat().st_uid == daemon.paths.daemon_token.stat().st_uid == os.getuid()


@pytest.mark.parametrize("method, path", [("GET", "/health"), ("GET", "/memory"), ("POST", "/rpc/list_jobs"),
                                          ("POST", "/mcp")])
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_requests_without_the_right_token_are_refused_and_logged(daemon, method, path, unix):
    token = daemon.client.token()
    for sent, why in ((None, "no"), ("not-" + token, "wrong")):
        status, body = http_status(daemon, method, path, sent, unix=unix)
        assert status == 401
        assert body["error"].startswith("unauthorized: send 'Authorization: Bearer <token>'")
        origin = "unix socket" if unix else "('127.0.0.1', "
        refusals = [line.split("arc.daemon: ", 1)[1] for line in daemon.log().splitlines()
                    if "WARNING arc.daemon: refused" in line]
        assert any(r.startswith(f"refused {method} {path} from {origin}") and r.endswith(f": {why} bearer token")
                   for r in refusals), refusals
    if path != "/mcp":
        assert http_status(daemon, method, path, token, unix=unix)[0] == 200


def test_another_user_can_neither_connect_nor_read_the_token(daemon):
    info = daemon.client.info()
    probe = [sys.executable, "-c", NOBODY_PROBE, info["socket"], str(daemon.paths.daemon_token), str(info["port"])]
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

    def run() -> dict:
        proc = subprocess.run(as_nobody + probe, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    # Kept out by the state dir (0700)...
    assert run() == {"socket": "PermissionError", "token": "PermissionError", "http": 401}
    # ...and by the files themselves (0600), were the state dir opened up.
    os.chmod(daemon.paths.root, 0o711)
    try:
        assert run() == {"socket": "PermissionError", "token": "PermissionError", "http": 401}
    finally:
        os.chmod(daemon.paths.root, 0o700)


def test_memory_says_where_the_daemons_memory_is(daemon):
    memory = daemon.client.get("/memory")
    assert memory["rss_mb"] > memory["malloc_in_use_mb"] > 0 and memory["malloc_free_mb"] >= 0
    assert memory["python_blocks"] > 0
    assert set(memory["history"]) == {"buffers_mb", "eviction_queue_records"}
    assert memory["history"]["buffers_mb"] > 0        # the history's tables are open
