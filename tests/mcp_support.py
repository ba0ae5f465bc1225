"""Helpers shared by the MCP tests: workloads that print metrics, and reading tool results."""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from mcp.types import CallToolResult, ImageContent, TextContent


def metric_job(value: float, steps: int = 5, sleep_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A command job that prints a training curve as `@arc` lines and autoresearch's final block (val_bpb)."""
    code = ("import json, sys, time\n"
            f"for s in range({steps}):\n"
            f"    print('@arc ' + json.dumps({{'step': s, 'train_loss': 5.0 - s * 0.3}}), flush=True)\n"
            f"    time.sleep({sleep_s / max(steps, 1)!r})\n"
            f"print('---')\nprint('val_bpb: {value:.6f}')\nprint('training_seconds: 1.0')\n")
    return {"command": [sys.executable, "-c", code], **extra}


def sleeper(seconds: float = 60.0, **extra: Any) -> dict[str, Any]:
    return {"command": [sys.executable, "-c", f"import time; print('sleeping', flush=True); time.sleep({seconds})"],
            **extra}


def started(service):
    """`service` started, once its first host has connected (sessions connect in the background)."""
    service.start()
    deadline = time.monotonic() + 60
    while not service.list_gpus().hosts[0].reachable:
        assert time.monotonic() < deadline, service.list_gpus().summary
        time.sleep(0.2)
    return service


def data(result: CallToolResult) -> dict[str, Any]:
    """The structured answer of a successful call (what the model reads)."""
    assert not result.is_error, error_text(result)
    assert result.structured_content is not None, result
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, f"expected a refusal, got {result.structured_content or result.content}"
    return " ".join(b.text for b in result.content if isinstance(b, TextContent))


def log_parts(result: CallToolResult) -> tuple[dict[str, Any], str]:
    """tail_log's answer: the JSON header and the fenced output."""
    assert not result.is_error, error_text(result)
    assert result.structured_content is None          # the model must read the text blocks
    header, fenced = (b.text for b in result.content if isinstance(b, TextContent))
    return json.loads(header), fenced


def image(result: CallToolResult) -> ImageContent:
    assert not result.is_error, error_text(result)
    return next(b for b in result.content if isinstance(b, ImageContent))
