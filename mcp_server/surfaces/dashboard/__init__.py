"""The person's view: a live campaign dashboard the daemon serves under /dashboard/, and `arc report`'s one-file
HTML. The page and its data need the session cookie that a one-time `?token=` link sets (as Jupyter does); see
app.py for the gate. The chart library (uPlot, MIT) is vendored under static/ so that nothing loads from a CDN."""
from __future__ import annotations

PREFIX = "/dashboard"


def dashboard_url(port: int, token: str) -> str:
    """The link `arc dashboard` prints: it carries the token once; the page then lives on the cookie it sets."""
    return f"http://127.0.0.1:{port}{PREFIX}/?token={token}"
