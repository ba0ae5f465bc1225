"""Content-addressed pushes: once per content, never a half tree taken as complete."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from mcp_server.fleet import content_hash, make_transport, push_tree
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.fleet.push import MARKER, tree_files, unpack_command
from tests.harness import local_host_entry, write_hosts_yaml


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "src"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0cache")
    (root / "pkg" / "stale.pyc").write_bytes(b"\0cache")
    (root / ".git" / "HEAD").write_text("ref: main\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "data.bin").write_bytes(os.urandom(300_000))
    return root


@pytest.fixture(params=["local", "ssh"])
def transport(request, netns_hosts, tmp_path):
    if request.param == "local":
        hf = load_hosts(write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work")]))
        t = make_transport(hf, "local")
    else:
        # a fresh workdir per test: the shared hosts keep theirs for the agent
        path = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml",
                                            [netns_hosts.host_entry("h1", workdir=str(tmp_path / "h1work"))])
        t = make_transport(load_hosts(path), "h1")
    yield t
    t.close()


def pushed_files(path: str) -> dict[str, bytes]:
    return {rel: f.read_bytes() for rel, f in tree_files(Path(path)) if rel != MARKER}


def test_content_hash_covers_names_and_contents_only(tree, tmp_path):
    digest = content_hash(tree)
    assert [rel for rel, _ in tree_files(tree)] == ["data.bin", "pkg/__init__.py", "run.sh"]
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    os.utime(copy / "run.sh", (1, 1))
    assert content_hash(copy) == digest                     # caches, VCS data and times do not count
    assert content_hash(copy, prefix="pkg") != digest       # where it lands does
    (copy / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    assert content_hash(copy) != digest
    (copy / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (copy / "run.sh").rename(copy / "run2.sh")
    assert content_hash(copy) != digest


def test_push_once_then_skip(transport, tree):
    first = push_tree(transport, tree, "code")
    assert first.uploaded and first.content_hash == content_hash(tree)
    assert first.path.endswith(f"/code/{first.content_hash}") and first.path.startswith("/")
    expected = {rel: f.read_bytes() for rel, f in tree_files(tree)}
    assert pushed_files(first.path) == expected
    assert os.access(Path(first.path) / "run.sh", os.X_OK)
    again = push_tree(transport, tree, "code")
    assert (again.uploaded, again.path) == (False, first.path)
    (tree / "pkg" / "__init__.py").write_text("VALUE = 3\n")
    changed = push_tree(transport, tree, "code")
    assert changed.uploaded and changed.path != first.path
    assert Path(first.path).is_dir()                         # the old snapshot stays for jobs that use it


def test_half_pushed_tree_is_not_taken_as_complete(transport, tree):
    digest = content_hash(tree)
    final = Path(transport.host.workdir) / "code" / digest
    (final / "pkg").mkdir(parents=True)
    (final / "pkg" / "__init__.py").write_text("VAL")       # cut short, and no marker
    result = push_tree(transport, tree, "code")
    assert result.uploaded and result.path == str(final)
    assert pushed_files(result.path) == {rel: f.read_bytes() for rel, f in tree_files(tree)}
    assert (final / MARKER).read_text().strip() == digest


def test_an_interrupted_upload_leaves_nothing_behind(transport, tree):
    digest = content_hash(tree)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(tree / "data.bin"), arcname="data.bin")
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    r = transport.run(unpack_command(transport, "code", digest), stdin=cut, timeout=30)
    assert r.exit_code != 0
    base = Path(transport.host.workdir) / "code"
    assert os.listdir(base) == []                            # no final tree, no leftover partial folder
    assert push_tree(transport, tree, "code").uploaded


def test_tilde_workdir_lands_in_the_remote_home(netns_hosts, tmp_path, tree):
    workdir = f"~/.arc-push-test-{uuid.uuid4().hex[:8]}"
    path = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml", [netns_hosts.host_entry("h2", workdir=workdir)])
    t = make_transport(load_hosts(path), "h2")
    try:
        result = push_tree(t, tree, "data")
        home = t.run("echo $HOME", timeout=10).text.strip()
        assert result.path == f"{home}/{workdir[2:]}/data/{content_hash(tree)}"
        assert not push_tree(t, tree, "data").uploaded
    finally:
        t.run(f"rm -rf ~/{workdir[2:]}", timeout=10)
        t.close()
