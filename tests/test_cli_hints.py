"""The service's next-step hints, written as MCP tool calls for the agent, shown by `arc` as command lines that
its own parser accepts."""
from __future__ import annotations

import pytest

from mcp_server.surfaces.cli.parser import build_parser, subcommands
from mcp_server.surfaces.cli.hints import COMMANDS, as_command_line


@pytest.mark.parametrize("hint, shown", [
    ("list_jobs(limit=3, offset=3)", "arc jobs --limit 3 --offset 3"),
    ("list_jobs(status=['failed', 'lost'], hypothesis_id='h2', offset=50)",
     "arc jobs --status failed --status lost --hypothesis h2 --offset 50"),
    ("list_hypotheses(status='open', offset=20)", "arc hypotheses list --status open --offset 20"),
    ("wait_for_jobs(job_ids=['j1', 'j2'])", "arc wait j1 j2"),
    ("tail_log(job_id='j3', offset=1234) for new output", "arc logs j3 for new output"),
    ("describe_history(table='runs') for what each column means; query_results(sql=...)",
     "arc schema runs for what each column means; arc sql SQL"),
    ("job_status(job_ids=[...]) for a run's details; plot_runs(kind='best') for the trend",
     "arc status JOB_IDS for a run's details; arc plot --kind best for the trend"),
    ("submit_jobs with tags=['baseline'] on each GPU class (list_gpus shows them)",
     "arc submit with tags=['baseline'] on each GPU class (arc gpus shows them)"),
    ("report to the person (digest, leaderboard); queued jobs start once they act",
     "report to the person (arc digest, arc leaderboard); queued jobs start once they act"),
    ("list_jobs(tag='a b; rm -rf ~', offset=1)", "arc jobs --tag 'a b; rm -rf ~' --offset 1"),
    ("measure_noise(gpu_class='H100'), or rerun_job(job_id='j4', seeds=[1, 2]) for a t-test",
     "arc noise --gpu-class H100, or arc rerun j4 --seeds 1 2 for a t-test"),
    ("compare_runs(a=['j1', 'j2'], b=['j3'])", "arc compare --a j1 j2 --b j3"),
    ("update_hypothesis(hyp_id=..., compare={'a': ['j1', 'j2'], 'b': ['j3']}) to record it",
     "arc hypotheses update HYP_ID --a j1 j2 --b j3 to record it"),
    # no command line says the same: the call stays as the service wrote it
    ("wait_for_jobs(job_ids=['j1', 'j2']...)", "wait_for_jobs(job_ids=['j1', 'j2']...)"),
    ("wait_for_jobs(job_ids=['j1'], mode='all')", "wait_for_jobs(job_ids=['j1'], mode='all')"),
    ("update_hypothesis(hyp_id=..., compare={'a': ['j1'], 'c': ['j2']})",
     "update_hypothesis(hyp_id=..., compare={'a': ['j1'], 'c': ['j2']})"),
    ("raise limit or add WHERE/ORDER BY", "raise limit or add WHERE/ORDER BY"),
    ("tail_logs and digests", "tail_logs and digests"),
    ("no table or view 'digest'; list_jobs shows the jobs", "no table or view 'digest'; arc jobs shows the jobs"),
])
def test_hints_read_as_command_lines(hint: str, shown: str) -> None:
    assert as_command_line(hint) == shown


def test_every_command_and_option_is_one_arc_has() -> None:
    parsers = {command.prog: command for command in subcommands(build_parser())}
    for tool, (command, options) in COMMANDS.items():
        prog = max((p for p in parsers if command == p or command.startswith(p + " ")), key=len, default=None)
        assert prog, f"{tool}: arc has no command {command!r}"
        actions = parsers[prog]._actions
        by_option = {option: action for action in actions for option in action.option_strings}
        flat = [o for o in options.values() if not isinstance(o, dict)] + \
            [o for inner in options.values() if isinstance(inner, dict) for o in inner.values()]
        for option in filter(None, flat):
            assert option.rstrip("+") in by_option, f"{tool}: {command} has no option {option.rstrip('+')}"
            assert (by_option[option.rstrip("+")].nargs == "+") == option.endswith("+"), f"{tool}: {option} nargs"
        positionals = [a for a in actions if not a.option_strings]
        words = command[len(prog):].split()                        # e.g. `arc research status`: a choice
        for word, action in zip(words, positionals):
            assert word in (action.choices or [word]), f"{tool}: {word!r} is not a choice of {prog}"
        assert len([o for o in options.values() if o == ""]) <= len(positionals) - len(words), tool
