"""Ingest writes a batch's metric rows and the job's high-water mark (`jobs.metrics_seq`) in one transaction. A real
writer process is killed with SIGKILL while it ingests big batches; the reopened file must hold whole batches
only, no row above the recorded mark, and a re-ingest from the mark (the agent re-sends everything from it) must
give each value exactly once."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mcp_server.history import History

REPO = Path(__file__).resolve().parents[1]
BATCH = 20_000          # records per ingest: big enough that the kill mostly lands inside the transaction
NAMES = ("loss", "lr")  # two metric rows per record

WRITER = textwrap.dedent(f"""
    import sys
    from mcp_server.history import History
    h = History(sys.argv[1])
    job_id = sys.argv[2]
    for batch in range(1000):
        first = h.metrics_high_water(job_id)
        records = [{{"seq": s, "t": 1.7e9 + s, "source": "marker", "data": {{"step": s, "loss": s * 0.5, "lr": -s}}}}
                   for s in range(first, first + {BATCH})]
        print("begin", first, flush=True)
        h.ingest(job_id, None, records)
        print("committed", first + {BATCH} - 1, flush=True)
""")


def records(first: int, last: int) -> list[dict]:
    """What the writer sends for seqs first..last: the same values, so a re-send can be checked for duplicates."""
    return [{"seq": s, "t": 1.7e9 + s, "source": "marker", "data": {"step": s, "loss": s * 0.5, "lr": -s}}
            for s in range(first, last + 1)]


# Kill timings: during the second batch, at fractions of the first batch's duration as the parent saw it (so they
# move through planning, the Arrow insert, the UPDATE and the commit whatever the machine's load).
FRACTIONS = [i / 10 for i in range(12)]


def test_kill_9_inside_an_ingest_leaves_whole_batches_and_a_true_high_water_mark(tmp_path):
    rolled_back = 0
    for i, fraction in enumerate(FRACTIONS):
        begun, mark = kill_a_writer_and_check(tmp_path / f"h{i}.duckdb", fraction)
        rolled_back += mark < begun
    # the kills did land inside transactions (a begun batch is absent), not only between them
    assert rolled_back > 0


def kill_a_writer_and_check(path: Path, fraction: float) -> tuple[int, int]:
    """Kill the writer `fraction` of a batch's duration into its second batch; check the file; return (that
    batch's first seq, the recorded mark)."""
    with History(path) as h:
        (job_id,) = h.insert_jobs([{"argv": ["train"]}])
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), job_id], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().split()[0] == "begin"
        began = time.monotonic()
        word, seq = writer.stdout.readline().split()
        assert word == "committed"
        committed, batch_s = int(seq), time.monotonic() - began      # the highest seq the writer saw committed
        word, seq = writer.stdout.readline().split()
        assert word == "begin"
        begun = int(seq)
        time.sleep(fraction * batch_s)   # where in the transaction the kill lands, not synchronisation
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    with History(path) as h:
        mark = h.get_job(job_id)["metrics_seq"]
        rows = h.cursor().execute("SELECT seq, name FROM metrics WHERE job_id = ?", [job_id]).fetchall()
        assert mark >= committed                              # nothing the writer saw committed was lost
        assert (mark + 1) % BATCH == 0                        # the mark is at a batch's end
        assert all(seq <= mark for seq, _ in rows)            # no row beyond the mark
        assert sorted(rows) == [(s, n) for s in range(mark + 1) for n in NAMES]   # whole batches, each row once

        # The agent re-sends from the mark, and (being careful) a batch before it too: each value lands once.
        assert h.metrics_high_water(job_id) == mark + 1
        top = mark + BATCH
        assert h.ingest(job_id, None, records(max(0, mark + 1 - BATCH), top)) == 2 * BATCH
        final = h.cursor().execute("SELECT seq, name, value FROM metrics WHERE job_id = ? ORDER BY seq, name",
                                   [job_id]).fetchall()
        assert final == [(s, n, s * 0.5 if n == "loss" else float(-s)) for s in range(top + 1) for n in NAMES]
        assert h.get_job(job_id)["metrics_seq"] == top
    return begun, mark
