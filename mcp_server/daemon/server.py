"""`arc daemon`: the single owner of the DuckDB file, the host sessions and the scheduler.

One per state dir, guarded by an flock on `<state>/daemon.lock` (the kernel drops it when the process dies, so a
`kill -9` never leaves a stale lock). It serves, on an owner-only unix socket and on a loopback TCP port:
  /mcp          MCP over streamable HTTP (what `arc mcp` bridges stdio to, and what `claude mcp add --transport http`
                registers);
  /rpc/<name>   the same service operations as JSON, for the `arc` command;
  /health       liveness;
  /dashboard/   the person's view (surfaces/dashboard): its own gate, a session cookie set by a one-time
                `?token=` link, loopback Host and Origin only.
Every other request must carry `Authorization: Bearer <token>`; the token is generated into `<state>/daemon.token`
(mode 0600). The daemon holds the user's SSH reach to every GPU host, so nothing else may talk to it.
"""
from __future__ import annotations

import ctypes
import functools
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..core.errors import ArcError
from ..core.operations import registry
from ..core.paths import StatePaths, default_research_file
from ..core.scheduler import SchedulerSettings
from ..core.service import Service
from ..fleet.hosts_config import load_hosts
from ..fleet.slurm import SlurmCluster, owner_id
from ..fleet.sources import StaticHosts
from ..research import load_research
from .state import acquire_lock, ensure_token, read_info, socket_path


log = logging.getLogger("arc.daemon")


def _bind_unix(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)   # owner-only from the moment the file exists
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def _bind_tcp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        if port == 0:
            raise
        log.warning("port %d is taken; using a free one", port)
        sock.bind(("127.0.0.1", 0))
    return sock


# The MCP SDK's own cap on /mcp bodies, for every path: no operation needs more inline (code and data go by path).
MAX_BODY_BYTES = 4 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _foreign(headers: dict[bytes, bytes]) -> str | None:
    """Why a request comes from somewhere other than this machine's own clients, or None. A web page the user
    visits can aim a request at a loopback port (DNS rebinding); its Origin, or a Host naming another site, gives
    it away. The MCP specification asks local servers to refuse both, on every path, not only /mcp."""
    for name in (b"origin", b"host"):
        value = headers.get(name)
        if value is None:
            continue
        text = value.decode("latin-1")
        try:
            host = urlsplit(text if name == b"origin" else "//" + text).hostname
        except ValueError:
            host = None
        if host not in LOOPBACK or (name == b"origin" and not text.startswith(("http://", "https://"))):
            return f"foreign {name.decode().title()} header {text[:100]!r}"
    return None


class TokenGate:
    """ASGI wrapper: every HTTP request needs the bearer token, comes from this machine (Origin and Host), and
    carries a bounded body; refusals are logged, never silent."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        foreign = _foreign(headers)
        if foreign:
            log.warning("refused %s %s from %s: %s", scope.get("method"), scope.get("path"),
                        scope.get("client") or "unix socket", foreign)
            response = JSONResponse({"error": f"forbidden: {foreign}; the daemon answers only clients on this "
                                              "machine (http://127.0.0.1 or localhost), not web pages"},
                                    status_code=403)
            return await response(scope, receive, send)
        auth = headers.get(b"authorization", b"")
        if hmac.compare_digest(auth, self.expected):
            length = headers.get(b"content-length", b"0")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                log.warning("refused %s %s: a body of %s bytes", scope.get("method"), scope.get("path"),
                            length.decode())
                why = (f"request body too large: {int(length):,} bytes is over the daemon's "
                       f"{MAX_BODY_BYTES // 2**20} MiB limit; pass big inputs by reference (a code folder, a "
                       "dataset) instead of inline")
                # An MCP client shows a JSON-RPC error's message; any other body it reads as a bare failure.
                body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": why}} \
                    if scope.get("path") == "/mcp" else {"error": why}
                response = JSONResponse(body, status_code=413)
                return await response(scope, receive, send)
            return await self.app(scope, receive, send)
        log.warning("refused %s %s from %s: %s bearer token", scope.get("method"), scope.get("path"),
                    scope.get("client") or "unix socket", "wrong" if auth else "no")
        response = JSONResponse({"error": "unauthorized: send 'Authorization: Bearer <token>' with the token "
                                          "from the state dir's daemon.token (owner-only)"}, status_code=401)
        await response(scope, receive, send)


def _rpc_error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _memory() -> dict[str, Any]:
    """Where the daemon's resident memory is: Python's objects (pymalloc blocks in use), and glibc malloc's bytes in use
    and free but kept (DuckDB, pyarrow's system allocations and other native code allocate there). None where this
    platform has no such figure (not Linux, not glibc)."""
    out: dict[str, Any] = {"rss_mb": None, "python_blocks": sys.getallocatedblocks(), "malloc_in_use_mb": None,
                           "malloc_free_mb": None}
    try:
        status = Path("/proc/self/status").read_text()
        out["rss_mb"] = next(round(int(line.split()[1]) / 2**10, 1) for line in status.splitlines()
                             if line.startswith("VmRSS:"))
    except OSError:
        pass
    try:
        info = _mallinfo2()
    except (OSError, AttributeError):
        return out
    out["malloc_in_use_mb"] = round((info.uordblks + info.hblkhd) / 2**20, 1)
    out["malloc_free_mb"] = round(info.fordblks / 2**20, 1)
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2() -> _MallInfo2:
    fn = ctypes.CDLL(None).mallinfo2       # glibc >= 2.33; AttributeError elsewhere
    fn.restype = _MallInfo2
    return fn()


def build_app(service: Service, token: str, server_name: str = "arc"):
    from mcp.server.transport_security import TransportSecuritySettings

    from ..surfaces.tools import build_server

    mcp = build_server(service, name=server_name)

    @mcp.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "pid": os.getpid(), "version": __version__})

    @mcp.custom_route("/memory", methods=["GET"])
    async def memory(request: Request) -> JSONResponse:
        """The daemon's resident memory and what the history's DuckDB holds of it (bench/scale.py reads this)."""
        return JSONResponse({**_memory(), "history": await anyio.to_thread.run_sync(service.history.memory)})

    @mcp.custom_route("/rpc/{method}", methods=["POST"])
    async def rpc(request: Request) -> JSONResponse:
        method = request.path_params["method"]
        if method == "shutdown":
            os.kill(os.getpid(), signal.SIGTERM)
            return JSONResponse({"summary": "daemon stopping"})
        op = registry().get(method)
        if op is None:
            return _rpc_error(f"unknown operation '{method}'; known: {', '.join(registry())}", 404)
        try:
            params = await request.json()
            if not isinstance(params, dict):
                raise ValueError("the body must be a JSON object of arguments")
        except ValueError as e:
            return _rpc_error(f"bad request body: {e}")
        # Over the owner-only socket the caller is the person, who says who they are (`arc` sends the user name).
        by = params.pop(op.caller, None) if op.caller else None
        try:
            result = await anyio.to_thread.run_sync(functools.partial(op.call, service, params, by=by))
        except ArcError as e:
            return _rpc_error(str(e))
        except Exception:
            log.exception("rpc %s failed", method)
            return _rpc_error(f"internal error in {method}; the daemon log has the traceback", 500)
        # pydantic's JSON writes a diverged run's NaN metric as null; json.dumps would refuse it.
        return Response(result.model_dump_json(), media_type="application/json")

    security = TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                         allowed_hosts=["127.0.0.1:*", "localhost:*", "localhost", "127.0.0.1"],
                                         allowed_origins=["http://127.0.0.1:*", "http://localhost:*"])
    app = mcp.streamable_http_app(transport_security=security)
    return _with_dashboard(TokenGate(app, token), service, token)


def _with_dashboard(gated, service: Service, token: str):
    """Paths under /dashboard go to the dashboard's own gate (a browser cannot send a bearer header); every other
    path keeps the bearer check."""
    from ..surfaces.dashboard import PREFIX
    from ..surfaces.dashboard.app import build

    dashboard = build(service, token)

    async def app(scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == PREFIX or path.startswith(PREFIX + "/")):
            return await dashboard(scope, receive, send)
        return await gated(scope, receive, send)

    return app


class _Terminated(Exception):
    """SIGTERM outside uvicorn's own handling (before it runs, or re-raised once it stopped)."""


def _terminated(*_: Any) -> None:
    raise _Terminated


def serve(state_dir: str | None, hosts_path: Path, research_path: Path | None = None, port: int | None = None,
          settings: SchedulerSettings | None = None) -> None:
    """Run the daemon in this process until SIGTERM/SIGINT."""
    import uvicorn

    paths = StatePaths.resolve(state_dir).ensure()
    lock_fd = acquire_lock(paths)
    hosts = load_hosts(hosts_path)
    research_path = research_path or default_research_file(hosts_path)
    research = load_research(research_path)
    token = ensure_token(paths)
    previous = read_info(paths)
    sock_path = socket_path(paths)
    unix = _bind_unix(sock_path)
    tcp = _bind_tcp(port if port is not None else int(previous.get("port") or 0))
    sources = [StaticHosts(hosts), *(SlurmCluster(c, owner_id(paths.root)) for c in hosts.clusters)]
    service = Service(paths, sources, settings, research=research, research_file=Path(research_path).resolve(),
                      hosts_file=Path(hosts_path).resolve())
    app = build_app(service, token)
    info = {"pid": os.getpid(), "socket": str(sock_path), "port": tcp.getsockname()[1], "version": __version__,
            "hosts_file": str(Path(hosts_path).resolve()), "research_file": str(Path(research_path).resolve()),
            "log": str(paths.daemon_log), "started_at": time.time()}
    tmp = paths.daemon_info.with_name(paths.daemon_info.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, paths.daemon_info)   # clients never read half of it
    log.info("daemon %s serving %s and http://127.0.0.1:%d/mcp for %s", os.getpid(), sock_path, info["port"],
             paths.root)
    # uvicorn re-raises the SIGTERM it caught once it has stopped, with the handler that was there before it
    # started: with the default one, that kills the process before the history is closed and the socket removed.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        service.start()
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=3)
        uvicorn.Server(config).run(sockets=[tcp, unix])
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second SIGTERM must not cut the close short
        log.info("daemon stopping")
        service.close()
        for p in (sock_path, paths.daemon_info):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        os.close(lock_fd)
