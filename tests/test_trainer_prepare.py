"""trainer.prepare: offline corpus -> tokenizer -> content-hashed token folder, run as the real CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[1]

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Numbers like 1234567 and 3.14159 are split into digit pairs by the pre-tokenizer.",
    "Unicode text works too: naïve café, 東京, emoji 🙂 and the euro sign €.",
    "A research loop changes the code, trains for five minutes, and keeps what lowers val_bpb.",
]


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.prepare", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def write_corpus(folder: Path, copies: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        text = "\n\n".join(PARAGRAPHS[(i + j) % len(PARAGRAPHS)] for j in range(len(PARAGRAPHS))) * (i + 2)
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")


def test_same_input_gives_same_hash_and_different_input_does_not(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus")
    glob = str(tmp_path / "corpus" / "*.txt")
    first, second = prepare("--source", glob, "--out", str(tmp_path / "a"), "--vocab-size", "300"), \
        prepare("--source", glob, "--out", str(tmp_path / "b"), "--vocab-size", "300")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout.splitlines()[-1]), json.loads(second.stdout.splitlines()[-1])
    assert a["content_hash"] == b["content_hash"]
    for name in ("train.npy", "val.npy", "token_bytes.npy", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["content_hash"] == a["content_hash"]
    assert a["train_tokens"] == manifest["train_tokens"] > 0 and a["val_tokens"] == manifest["val_tokens"] > 0

    (tmp_path / "corpus" / "doc00.txt").write_text("One changed document changes the hash.\n" * 50)
    third = prepare("--source", glob, "--out", str(tmp_path / "c"), "--vocab-size", "300")
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout.splitlines()[-1])["content_hash"] != a["content_hash"]


def test_invalid_utf8_is_replaced_and_counted_and_tokens_round_trip(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", copies=4)
    (tmp_path / "corpus" / "broken.txt").write_bytes(b"valid start \xff\xfe then \x80 stray bytes\n" * 20)
    result = prepare("--source", str(tmp_path / "corpus" / "*.txt"), "--out", str(tmp_path / "out"),
                     "--vocab-size", "300", "--val-fraction", "0.4")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["invalid_utf8_documents"] == 1

    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos = manifest["bos_id"]
    texts = set()
    for split in ("train", "val"):
        tokens = np.load(out / f"{split}.npy")
        starts = np.flatnonzero(tokens == bos)
        assert starts[0] == 0  # every document begins with <|bos|>
        for lo, hi in zip(starts, [*starts[1:], tokens.size]):
            texts.add(tokenizer.decode(tokens[lo + 1:hi].tolist()))
    expected = {p.read_bytes().decode("utf-8", errors="replace") for p in (tmp_path / "corpus").iterdir()}
    assert texts == expected
    # the val_bpb denominator: the per-token byte table sums to the validation text's UTF-8 bytes exactly
    token_bytes = np.load(out / "token_bytes.npy")
    assert token_bytes[np.load(out / "val.npy")].sum() == manifest["val_bytes"]
    assert token_bytes[bos] == 0


def test_parquet_source_reads_the_text_column(tmp_path: Path) -> None:
    rows = [p * (i + 3) for i, p in enumerate(PARAGRAPHS * 3)]
    pq.write_table(pa.table({"text": rows, "id": list(range(len(rows)))}), tmp_path / "shard_00000.parquet")
    result = prepare("--source", str(tmp_path / "*.parquet"), "--out", str(tmp_path / "out"), "--vocab-size", "300")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train_documents"] + manifest["val_documents"] == len(rows)


@pytest.mark.parametrize("setup, args, message", [
    ("none", ["--source", "{tmp}/nothing/*.txt"], "matches no files"),
    ("one", ["--source", "{tmp}/one/*.txt"], "need at least 2"),
    ("parquet", ["--source", "{tmp}/*.parquet"], "no 'text' column"),
    ("none", ["--source", "stdlib", "--vocab-size", "100"], "--vocab-size 100 is out of range"),
])
def test_bad_input_is_refused_with_a_reason(tmp_path: Path, setup: str, args: list[str], message: str) -> None:
    if setup == "one":
        (tmp_path / "one").mkdir()
        (tmp_path / "one" / "a.txt").write_text("only one document")
    if setup == "parquet":
        pq.write_table(pa.table({"body": ["no text column here"]}), tmp_path / "x.parquet")
    result = prepare(*[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stdlib_source_with_a_byte_cap(tmp_path: Path) -> None:
    result = prepare("--out", str(tmp_path / "out"), "--max-bytes", "300000", "--vocab-size", "512")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == "stdlib" and manifest["vocab_size"] == summary["vocab_size"] == 512
    assert manifest["token_dtype"] == "uint16"
    assert summary["train_tokens"] > summary["val_tokens"] > 0


def test_a_folder_source_reads_every_text_file_under_it(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus" / "nested" / "deeper", copies=3)
    write_corpus(tmp_path / "corpus", copies=3)
    (tmp_path / "corpus" / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (tmp_path / "corpus" / ".git").mkdir()
    (tmp_path / "corpus" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    result = prepare("--source", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"), "--vocab-size", "300")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["documents"] == 6 and summary["invalid_utf8_documents"] == 0


def test_a_file_that_vanishes_between_listing_and_reading_is_skipped(tmp_path: Path) -> None:
    from trainer.prepare import text_documents

    write_corpus(tmp_path, copies=2)
    listed = sorted(tmp_path.glob("*.txt"))
    gone = tmp_path / "doc00.txt"
    gone.unlink()   # what a package manager does to site-packages while the stdlib source is being read
    assert [doc.name for doc, _ in text_documents(listed)] == [str(tmp_path / "doc01.txt")]
