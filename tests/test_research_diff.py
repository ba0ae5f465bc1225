"""diff_jobs on real code snapshots (CodeStore) and real history rows."""
from mcp_server.history import History
from mcp_server.research.snapshot_diff import diff_jobs
from mcp_server.stores.code import CodeStore


def project(root, files):
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


def test_config_and_code_differences(tmp_path):
    store = CodeStore(tmp_path / "code")
    train = "".join(f"line {i}\n" for i in range(40))
    a = store.snapshot(project(tmp_path / "a", {"train.py": train, "old.py": "x = 1\n", "data.bin": b"\0\1\2",
                                                "same.py": "ok\n"}))
    b = store.snapshot(project(tmp_path / "b", {"train.py": train.replace("line 20\n", "line twenty\n"),
                                                "new/util.py": "def f():\n    return 2\n", "data.bin": b"\0\1\3",
                                                "same.py": "ok\n"}))
    with History(tmp_path / "h.duckdb") as h:
        ja, jb, jc = h.insert_jobs([
            {"kind": "trainer", "config": {"matrix_lr": 0.04, "depth": 8}, "seed": 1, "code_hash": a,
             "gpu_class": "H100"},
            {"kind": "trainer", "config": {"matrix_lr": 0.03, "window_pattern": "L"}, "seed": 2, "code_hash": b,
             "gpu_class": "H200"},
            {"kind": "trainer", "config": {"matrix_lr": 0.04, "depth": 8}, "seed": 1, "code_hash": a,
             "gpu_class": "H100"}])
        rows = {r["job_id"]: r for r in h.jobs(limit=10)}
    result = diff_jobs(rows[ja], rows[jb], store.root)
    assert result.settings == ["config.depth: 8 -> (unset)", "config.matrix_lr: 0.04 -> 0.03",
                               "config.window_pattern: (unset) -> L", "seed: 1 -> 2", "gpu_class: H100 -> H200"]
    assert result.files == ["M data.bin (binary)", "A new/util.py (+2 -0)", "D old.py", "M train.py (+1 -1)"]
    assert "-line 20\n+line twenty\n" in result.diff and "+++ b/new/util.py" in result.diff
    assert result.code_same is False and not result.truncated
    assert result.summary == f"{ja} -> {jb}: 5 setting(s) differ, 4 file(s) differ"
    same = diff_jobs(rows[ja], rows[jc], store.root)
    assert same.settings == [] and same.code_same is True and same.diff == ""
    assert same.summary == f"{ja} -> {jc}: 0 setting(s) differ, same code"


def test_diff_is_bounded(tmp_path):
    store = CodeStore(tmp_path / "code")
    a = store.snapshot(project(tmp_path / "a", {"big.py": "".join(f"a{i}\n" for i in range(1000))}))
    b = store.snapshot(project(tmp_path / "b", {"big.py": "".join(f"b{i}\n" for i in range(1000))}))
    result = diff_jobs({"job_id": "j1", "code_hash": a}, {"job_id": "j2", "code_hash": b}, store.root, max_lines=50)
    assert result.truncated and result.files == ["M big.py (+1000 -1000)"]
    lines = result.diff.splitlines()
    assert len(lines) == 51 and lines[-1] == "... 1953 more diff lines (raise max_lines to see them)"


def test_trainer_snapshot_against_an_edited_copy(tmp_path):
    store = CodeStore(tmp_path / "code")
    base = store.snapshot_trainer()
    edited = tmp_path / "edited" / "trainer"
    project(edited, {p.name: p.read_text() for p in (store.path(base) / "trainer").iterdir() if p.is_file()})
    config = edited / "config.py"      # the trainer's defaults live in trainer/config.py
    config.write_text(config.read_text().replace("matrix_lr: float = 0.04", "matrix_lr: float = 0.03"))
    changed = store.snapshot(edited, as_package="trainer")
    result = diff_jobs({"job_id": "j1", "code_hash": base, "kind": "command", "argv": ["python", "a.py"]},
                       {"job_id": "j2", "code_hash": changed, "kind": "command", "argv": ["python", "b.py"]},
                       store.root)
    assert result.files == ["M trainer/config.py (+1 -1)"]
    assert "+    matrix_lr: float = 0.03" in result.diff
    assert result.settings == ['command: ["python", "a.py"] -> ["python", "b.py"]']


def test_missing_snapshots_are_said_not_hidden(tmp_path):
    store = CodeStore(tmp_path / "code")
    a = store.snapshot(project(tmp_path / "a", {"x.py": "1\n"}))
    result = diff_jobs({"job_id": "j1", "code_hash": a}, {"job_id": "j2", "code_hash": "f" * 64}, store.root)
    assert result.code_same is None and result.files == ["missing on this controller: j2's snapshot ffffffffffff"]
    result = diff_jobs({"job_id": "j1", "code_hash": a}, {"job_id": "j2"}, store.root)
    assert result.code_same is None and result.files == ["j2 has no code snapshot"]
    assert result.summary == "j1 -> j2: 0 setting(s) differ, code not comparable"
