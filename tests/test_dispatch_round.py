"""A dispatch round with a long queue on a full fleet costs one placement per distinct requirement, not one per
queued job (found by bench/scale.py: 500 queued jobs read of 10,000 on 512 busy GPUs cost 240 ms a round, and a
round follows every job's end); a freed GPU still goes to the first job in line."""
from __future__ import annotations

from mcp_server.core import scheduler as scheduler_module
from tests.scale_support import busy_scheduler


def test_a_round_on_a_full_fleet_tries_each_requirement_once_and_a_freed_gpu_goes_to_the_first_job(
        tmp_path, monkeypatch):
    sched, launched = busy_scheduler(tmp_path, hosts=16, gpus=8, queued=600)
    calls = []
    real_place = scheduler_module.place

    def counted(*args, **kwargs):
        calls.append(1)
        return real_place(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "place", counted)
    assert sched.dispatch_once() == 0
    assert len(calls) == 1, f"{len(calls)} placements for 500 queued jobs of one requirement on a full fleet"

    del sched._busy_gpus[("n03", 5)]
    calls.clear()
    assert sched.dispatch_once() == 1
    sched._launchers["n03"].shutdown(wait=True)
    assert launched == ["j1"]
    assert sched._busy_gpus[("n03", 5)] == "j1"
    assert len(calls) == 2          # j1 placed; j2 finds no place, and so would every other job
    assert sched.history.get_job("j1")["status"] == "dispatching"
    sched.history.close()
