"""Code snapshots of real folders: measured before anything is copied, links never followed out of the folder or
round a loop, broad folders refused with the fix."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mcp_server.stores.code import MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_ENTRIES, CodeStore, CodeStoreError
from mcp_server.fleet.push import tree_files

FIX = "point `code` at the folder holding only your training code"


def written_bytes() -> int:
    """Bytes this process has handed to write() so far (the kernel's count, whatever the file system)."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["wchar"])


def snapshot_files(store: CodeStore, digest: str) -> dict[str, bytes]:
    return {rel: path.read_bytes() for rel, path in tree_files(store.path(digest))}


def refusal(store: CodeStore, folder: Path) -> str:
    with pytest.raises(CodeStoreError) as refused:
        store.snapshot(folder)
    return str(refused.value)


def test_a_folder_past_the_byte_cap_is_refused_before_anything_is_copied(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    with open(code / "weights.bin", "wb") as f:       # sparse: big to stat(), nothing on disk
        f.truncate(MAX_SNAPSHOT_BYTES + 40 * 2**20)
    store = CodeStore(tmp_path / "state" / "code")
    before = written_bytes()
    message = refusal(store, code)
    assert written_bytes() - before < 2**20, "the folder was copied before its size was checked"
    assert f"code folder {code} holds more than 64 MiB" in message and "weights.bin (104.0 MiB)" in message
    assert FIX in message
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_a_folder_past_the_entry_cap_is_refused(tmp_path):
    code = tmp_path / "many"
    code.mkdir()
    for i in range(MAX_SNAPSHOT_ENTRIES + 1):
        (code / f"f{i}.txt").touch()
    message = refusal(CodeStore(tmp_path / "state"), code)
    assert f"holds more than {MAX_SNAPSHOT_ENTRIES:,} files and folders" in message and FIX in message


def test_links_are_never_followed_out_of_the_folder_or_round_a_loop(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not code")
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "train.py").write_text("import pkg.model\n")
    (code / "pkg" / "model.py").write_text("WIDTH = 8\n")
    (code / "run.sh").write_text("#!/bin/sh\npython train.py\n")
    (code / "run.sh").chmod(0o755)
    os.symlink(".", code / "pkg" / "loop")                   # a loop
    os.symlink(code, code / "pkg" / "back")                  # another, absolute
    os.symlink("model.py", code / "pkg" / "alias.py")        # a file inside: copied as a file
    os.symlink(outside / "secret.txt", code / "secret.txt")  # out of the folder
    os.symlink(outside, code / "data")
    os.symlink("/etc/passwd", code / "passwd")
    os.symlink("missing.py", code / "dangling.py")
    os.mkfifo(code / "pipe")                                 # copying would block on it forever
    store = CodeStore(tmp_path / "state")
    digest = store.snapshot(code)
    assert snapshot_files(store, digest) == {"pkg/alias.py": b"WIDTH = 8\n", "pkg/model.py": b"WIDTH = 8\n",
                                            "run.sh": b"#!/bin/sh\npython train.py\n",
                                            "train.py": b"import pkg.model\n"}
    snap = store.path(digest)
    assert not any(p.is_symlink() for p in snap.rglob("*")) and os.access(snap / "run.sh", os.X_OK)
    assert store.snapshot(code) == digest


def test_a_link_to_the_root_costs_nothing(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("pass\n")
    os.symlink("/", code / "everything")
    store = CodeStore(tmp_path / "state")
    assert snapshot_files(store, store.snapshot(code)) == {"train.py": b"pass\n"}


def test_the_root_and_home_folders_are_refused(tmp_path):
    store = CodeStore(tmp_path / "state")
    someone = Path(tempfile.mkdtemp(prefix="arc-test-", dir="/home"))
    try:
        for folder in (Path("/"), Path.home(), Path("/home"), someone):
            message = refusal(store, folder)
            assert f"code folder {folder.resolve()} is the root, a home folder or a folder above one" in message
            assert FIX in message
    finally:
        shutil.rmtree(someone)
    assert not store.root.exists()


def test_the_state_dir_inside_the_code_folder_is_not_copied_into_itself(tmp_path):
    (tmp_path / "train.py").write_text("pass\n")
    store = CodeStore(tmp_path / "state" / "code")
    first = store.snapshot(tmp_path)
    assert store.snapshot(tmp_path) == first and set(snapshot_files(store, first)) == {"train.py"}
