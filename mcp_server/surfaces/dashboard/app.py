"""The dashboard's routes and its gate.

Who may see it: the daemon's token opens it, once, in the URL (`/dashboard/?token=...`); the answer sets an
HttpOnly, SameSite=Strict session cookie and redirects to the URL without the token, so that it leaves the address
bar and the history. `arc report` sends the bearer token instead. A request whose Host is not loopback (DNS
rebinding) or whose Origin is foreign is refused before anything else. The approval POST also needs the
anti-forgery token the page carries (HMAC of the daemon token), so a cross-site form cannot approve.
"""
from __future__ import annotations

import asyncio
import functools
import getpass
import hashlib
import hmac
import html
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, \
    StreamingResponse
from starlette.routing import Route

from ...core.errors import ArcError
from ...core.operations import registry
from . import PREFIX, data

log = logging.getLogger("arc.dashboard")
STATIC = Path(__file__).parent / "static"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
# How often the event stream looks for new events in the history: one indexed query, server-side, per open page.
EVENT_POLL_S = 0.5


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _hostname(value: str) -> str:
    return urlsplit(f"//{value}").hostname or ""


class Gate:
    """ASGI: loopback Host and Origin only; then the session cookie, the bearer token, or the one-time ?token=."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token
        self.session = _derive(token, "dashboard-session")
        self.bearer = f"Bearer {token}".encode()

    def cookie_name(self, scope) -> str:
        # Cookies ignore ports: two daemons on one machine would otherwise overwrite each other's session.
        server = scope.get("server") or ("", 0)
        return f"arc_session_{server[1] or 'unix'}"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        # http.client over the unix socket sends no useful Host; a browser always sends the one it connected to.
        if host and _hostname(host) not in {"127.0.0.1", "localhost", "::1"}:
            return await self._refuse(scope, receive, send, 403, f"foreign Host '{host}'")
        if origin is not None and (urlsplit(origin).hostname not in {"127.0.0.1", "localhost", "::1"}
                                   or (host and urlsplit(origin).netloc != host)):
            return await self._refuse(scope, receive, send, 403, f"foreign Origin '{origin}'")
        cookie = request.cookies.get(self.cookie_name(scope), "")
        if hmac.compare_digest(cookie.encode(), self.session.encode()):
            return await self.app(scope, receive, send)
        if hmac.compare_digest(request.headers.get("authorization", "").encode(), self.bearer):
            return await self.app(scope, receive, send)
        given = request.query_params.get("token")
        if given is not None and request.method == "GET" and hmac.compare_digest(given.encode(), self.token.encode()):
            response = RedirectResponse(request.url.remove_query_params("token").path, status_code=303)
            response.set_cookie(self.cookie_name(scope), self.session, httponly=True, samesite="strict",
                                path=PREFIX)
            return await response(scope, receive, send)
        return await self._refuse(scope, receive, send, 401, "no session: open the link `arc dashboard` prints")

    async def _refuse(self, scope, receive, send, status: int, why: str) -> None:
        log.warning("dashboard refused %s %s: %s", scope.get("method"), scope.get("path"), why)
        response = HTMLResponse(f"<!doctype html><title>arc: refused</title><h1>{status}</h1>"
                                f"<p>{html.escape(why)}</p>", status_code=status)
        await response(scope, receive, send)


def build(service, token: str):
    """The dashboard as an ASGI app for the paths under PREFIX, behind its gate."""
    csrf = _derive(token, "dashboard-csrf")
    page = (STATIC / "page.html").read_text().replace("{{csrf}}", csrf)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(fn, service, *args))

    async def api(fn: Callable[..., Any], *args: Any) -> Response:
        try:
            result = await run(fn, *args)
        except ArcError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return Response(json.dumps(_finite(result), default=str, allow_nan=False), media_type="application/json")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if "/" in name or not path.is_file() or name == "page.html":
            return JSONResponse({"error": f"no asset '{name}'"}, status_code=404)
        return FileResponse(path)

    async def fleet(request: Request) -> Response:
        return await api(data.fleet)

    async def campaign(request: Request) -> Response:
        return await api(data.campaign)

    async def status(request: Request) -> Response:
        return await api(data.guardrails)

    async def report(request: Request) -> Response:
        return await api(data.report)

    async def jobs(request: Request) -> Response:
        q = request.query_params
        return await api(data.jobs, q.get("status"), q.get("tag"), q.get("hypothesis"), q.get("gpu_class"))

    async def job(request: Request) -> Response:
        return await api(data.job, request.path_params["job_id"])

    async def log_since(request: Request) -> Response:
        try:
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return JSONResponse({"error": "offset must be a byte offset (an integer)"}, status_code=400)
        return await api(data.log_since, request.path_params["job_id"], offset)

    async def hypotheses(request: Request) -> Response:
        return await api(data.hypotheses)

    async def events(request: Request) -> Response:
        """Server-sent events: each new history event as it is recorded, so the page refreshes what it touches."""
        last = await run(lambda s: (s.history.events(limit=1) or [{"event_id": 0}])[-1]["event_id"])

        async def stream():
            nonlocal last
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                new = await run(lambda s: s.history.events(after_id=last, limit=200))
                for e in new:
                    last = e["event_id"]
                    payload = {k: e.get(k) for k in ("event_id", "kind", "job_id", "host", "new_status", "reason")}
                    yield f"event: arc\ndata: {json.dumps(payload, default=str)}\n\n"
                if not new:
                    yield ": idle\n\n"     # a closed page shows up as a failed write
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def approve(request: Request) -> Response:
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), csrf.encode()):
            return _message(403, "the approval form's anti-forgery token is missing or wrong; reload the dashboard "
                                 "and approve from it")
        note = str(form.get("note", "")).strip()
        if not note:
            return _message(400, "an approval needs a note (what the agent should do next); nothing was approved")
        by = f"{getpass.getuser()} (dashboard)"
        try:
            await anyio.to_thread.run_sync(functools.partial(registry()["approve"].call, service, {"note": note},
                                                             by=by))
        except ArcError as e:
            return _message(400, f"not approved: {e}")
        return RedirectResponse(f"{PREFIX}/#campaign", status_code=303)

    routes = [Route(f"{PREFIX}/", index), Route(f"{PREFIX}/static/{{name}}", static),
              Route(f"{PREFIX}/api/fleet", fleet), Route(f"{PREFIX}/api/campaign", campaign),
              Route(f"{PREFIX}/api/status", status),
              Route(f"{PREFIX}/api/report", report), Route(f"{PREFIX}/api/jobs", jobs),
              Route(f"{PREFIX}/api/jobs/{{job_id}}", job), Route(f"{PREFIX}/api/jobs/{{job_id}}/log", log_since),
              Route(f"{PREFIX}/api/hypotheses", hypotheses), Route(f"{PREFIX}/events", events),
              Route(f"{PREFIX}/approve", approve, methods=["POST"])]
    return Gate(Starlette(routes=routes), token)


def _finite(value: Any) -> Any:
    """A diverged run's NaN or inf as null: JSON has no such numbers and the browser's parser refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _message(status: int, text: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>arc</title><p id=message>{html.escape(text)}</p>"
                        f"<p><a href='{PREFIX}/'>back to the dashboard</a></p>", status_code=status)
