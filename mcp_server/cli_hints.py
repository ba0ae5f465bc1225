"""The service's next-step hints, written for the agent as MCP tool calls (`list_jobs(limit=3, offset=3)`), as arc
command lines for a person at a terminal (`arc jobs --limit 3 --offset 3`). One hint serves both: the agent reads
the tool call, `arc` shows the command, and `arc --json` keeps the hint as the service wrote it."""
from __future__ import annotations

import ast
import re
import shlex
from typing import Any

# tool: (command, {parameter: its option; "" = positional; None = the command has no such option and needs none;
# a dict = the options of an object's keys}). A list goes as one option per item (`--status a --status b`), or
# after one option where the option ends in "+" (nargs="+": `--seeds 1 2`).
Options = dict[str, "str | None | Options"]
COMMANDS: dict[str, tuple[str, Options]] = {
    "list_gpus": ("arc gpus", {"host": "--host"}),
    "submit_jobs": ("arc submit", {}),
    "job_status": ("arc status", {"job_ids": ""}),
    "list_jobs": ("arc jobs", {"status": "--status", "host": "--host", "tag": "--tag", "hypothesis_id": "--hypothesis",
                               "limit": "--limit", "offset": "--offset"}),
    "cancel_jobs": ("arc cancel", {"job_ids": ""}),
    "tail_log": ("arc logs", {"job_id": "", "lines": "--lines", "offset": None}),   # arc logs shows the newest
    "wait_for_jobs": ("arc wait", {"job_ids": ""}),
    "query_results": ("arc sql", {"sql": "", "limit": "--limit"}),
    "describe_history": ("arc schema", {"table": ""}),
    "append_hypothesis": ("arc hypotheses add", {}),
    "update_hypothesis": ("arc hypotheses update", {"hyp_id": "", "compare": {"a": "--a+", "b": "--b+"}}),
    "list_hypotheses": ("arc hypotheses list", {"status": "--status", "limit": "--limit", "offset": "--offset"}),
    "leaderboard": ("arc leaderboard", {"gpu_class": "--gpu-class", "top": "--top"}),
    "digest": ("arc digest", {"since": "--since"}),
    "plot_runs": ("arc plot", {"job_ids": "", "series": "--series", "kind": "--kind", "gpu_class": "--gpu-class"}),
    "research_status": ("arc research status", {}),
    "suggest_configs": ("arc suggest", {}),
    "compare_runs": ("arc compare", {"a": "--a+", "b": "--b+"}),
    "measure_noise": ("arc noise", {"gpu_class": "--gpu-class", "seeds": "--seeds", "preset": "--preset"}),
    "diff_jobs": ("arc diff", {"a": "", "b": ""}),
    "rerun_job": ("arc rerun", {"job_id": "", "seeds": "--seeds+", "gpu_class": "--gpu-class"}),
}
# a tool's name, and its argument list when one follows (one level of brackets inside, as in job_ids=['j1']); not
# a quoted name, which is a value echoed back ("no table 'digest'")
_TOOL = re.compile(r"(?<![\w'\"])(" + "|".join(COMMANDS) + r")(?![\w'\"])(\((?:[^()]|\([^()]*\))*\))?")


def as_command_line(hint: str) -> str:
    return _TOOL.sub(_command, hint)


def _command(match: re.Match) -> str:
    tool, arguments = match.groups()
    command, options = COMMANDS[tool]
    if not arguments:
        return command
    try:
        call = ast.parse(tool + arguments, mode="eval").body   # a Call: the pattern ends in its brackets
        given = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
        return match.group(0)
    words = None if call.args else _words(options, given)
    return match.group(0) if words is None else " ".join([command, *words])   # None: no command line says it


def _words(options: Options, given: dict) -> list[str] | None:
    words: list[str] = []
    for key, value in given.items():
        if key not in options:
            return None
        option = options[key]
        if isinstance(option, dict):
            inner = _words(option, value) if isinstance(value, dict) else None
            if inner is None:
                return None
            words += inner
        elif option is not None:
            items = [_word(key, item) for item in (value if isinstance(value, list) else [value])]
            if option.endswith("+"):
                words += [option[:-1], *items]
            else:
                words += [w for item in items for w in ([option, item] if option else [item])]
    return words


def _word(key: str, value: Any) -> str:
    """A value for the shell; `...` (the hint leaves it to the reader) becomes a placeholder named after it."""
    return key.upper() if value is Ellipsis else shlex.quote(str(value))
