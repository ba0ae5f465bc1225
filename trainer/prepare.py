"""Build the trainer's dataset offline: documents -> BPE tokenizer -> token streams, in one content-hashed folder.

    python -m trainer.prepare --out DIR [--source stdlib|FOLDER|GLOB|PARQUET_GLOB] [--vocab-size 8192]
                              [--max-bytes N] [--val-fraction 0.05]

Sources (no network anywhere):
  stdlib         the running Python's standard-library source (*.py), the built-in default
  FOLDER         every text file under it, at any depth; files holding a NUL byte (binary) and hidden folders
                 (.git and the like) are left out
  GLOB           text files, e.g. 'corpus/**/*.txt' (quote it; ** recurses); invalid UTF-8 is replaced, not fatal
  PARQUET_GLOB   parquet files with a `text` column, e.g. 'shards/*.parquet' (autoresearch's shard format)

Documents are read in sorted path order (and row order within a parquet file); a file that vanishes between listing and
reading (a package manager at work in the stdlib's folder) is skipped, not fatal. --max-bytes stops after the
document that reaches that many bytes. A fixed share of documents (chosen by the hash of their text, so the split
depends on content, not on order) is the validation split. The BPE tokenizer (`tokenizers`, byte-level, GPT-4-style
pre-split) is trained on the training split only. Each document is encoded as <|bos|> + its tokens.

DIR then holds:
  train.npy, val.npy    the token streams (uint16 while the vocabulary fits, else uint32)
  token_bytes.npy       UTF-8 bytes of each vocabulary entry (0 for special tokens): the val_bpb denominator
  tokenizer.json        the trained tokenizer
  manifest.json         counts, settings, per-file sha256 and `content_hash` over the files above
The same input and settings give the same bytes and so the same content_hash. The last stdout line is one JSON
object: path, content_hash, token counts.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

FORMAT_VERSION = 1
BOS = "<|bos|>"
# GPT-4's pre-tokenizer split, digits in groups of at most two (as autoresearch's tokenizer does).
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
DATA_FILES = ("train.npy", "val.npy", "token_bytes.npy", "tokenizer.json")


class PrepareError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""


@dataclass
class Document:
    name: str
    text: str


@dataclass
class Corpus:
    documents: list[Document]
    invalid_utf8: int   # documents whose bytes were not valid UTF-8 (decoded with U+FFFD replacements)


# ---- reading the source ----------------------------------------------------------------------------------

def walk_files(root: Path, skip_dir) -> list[Path]:
    """Files under `root`, sorted. os.walk, unlike Path.rglob, passes over a folder that vanishes mid-walk, and
    pruning never enters the skipped folders (site-packages can be large and changing)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not skip_dir(d)]
        files.extend(Path(folder, name) for name in names)
    return sorted(files)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in walk_files(root, {"site-packages", "dist-packages"}.__contains__) if p.suffix == ".py"]
    if not files:
        raise PrepareError(f"no *.py files under this Python's stdlib folder {root}; pass --source GLOB instead")
    return sorted(files)


def text_documents(paths: list[Path], skip_binary: bool = False) -> Iterator[tuple[Document, bool]]:
    for path in paths:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        if skip_binary and b"\0" in raw:
            continue
        try:
            text, invalid = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, invalid = raw.decode("utf-8", errors="replace"), True
        yield Document(str(path), text), invalid


def parquet_documents(paths: list[Path]) -> Iterator[tuple[Document, bool]]:
    import pyarrow.parquet as pq  # only parquet sources need pyarrow

    for path in paths:
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise PrepareError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)}); "
                               "parquet sources need one string column named 'text'")
        for row, text in enumerate(table.column("text").to_pylist()):
            if text:
                yield Document(f"{path}#{row}", text), False


def read_corpus(source: str, max_bytes: int | None) -> Corpus:
    if source == "stdlib":
        docs = text_documents(stdlib_files())
    elif os.path.isdir(os.path.expanduser(source)):
        docs = text_documents(walk_files(Path(os.path.expanduser(source)), lambda d: d.startswith(".")),
                              skip_binary=True)
    else:
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        if not paths:
            raise PrepareError(f"--source {source!r} matches no files; give 'stdlib', a folder of text files, a "
                               "glob of text files (quote it, e.g. 'corpus/**/*.txt') or a glob of .parquet files")
        parquet = [p.suffix == ".parquet" for p in paths]
        if any(parquet) and not all(parquet):
            raise PrepareError(f"--source {source!r} matches both .parquet and other files; use a glob that "
                               "matches only one kind")
        docs = parquet_documents(paths) if all(parquet) else text_documents(paths)
    documents, invalid, total = [], 0, 0
    for doc, bad in docs:
        if not doc.text:
            continue
        documents.append(doc)
        invalid += bad
        total += len(doc.text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            break
    if len(documents) < 2:
        raise PrepareError(f"--source {source!r} gave {len(documents)} non-empty document(s); need at least 2 "
                           "(one for training, one for validation)")
    return Corpus(documents, invalid)


def split(documents: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Validation = the documents whose text hashes lowest, a fixed share of the count (at least one each side)."""
    def key(doc: Document) -> str:
        return hashlib.sha256(doc.text.encode("utf-8")).hexdigest()

    n_val = min(max(1, round(len(documents) * val_fraction)), len(documents) - 1)
    val_ids = {id(d) for d in sorted(documents, key=key)[:n_val]}
    return [d for d in documents if id(d) not in val_ids], [d for d in documents if id(d) in val_ids]


# ---- tokenizer and encoding ------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def token_byte_counts(tokenizer: Tokenizer) -> np.ndarray:
    """Bytes each token id stands for. Byte-level BPE maps every byte to one character, so a token's byte count
    is the length of its string; special tokens stand for no text and count 0 (so val_bpb skips them)."""
    counts = np.zeros(tokenizer.get_vocab_size(), dtype=np.int32)
    special = {BOS}
    for token, idx in tokenizer.get_vocab().items():
        counts[idx] = 0 if token in special else len(token)
    return counts


def encode(tokenizer: Tokenizer, docs: list[Document], dtype: type) -> np.ndarray:
    bos = tokenizer.token_to_id(BOS)
    batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast skips offsets (newer tokenizers)
    pieces = []
    for enc in batch([d.text for d in docs], add_special_tokens=False):
        pieces.append(np.array([bos, *enc.ids], dtype=dtype))
    return np.concatenate(pieces)


# ---- writing ---------------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(file_hashes):
        h.update(f"{name}\0{file_hashes[name]}\n".encode())
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def prepare(source: str, out: Path, vocab_size: int, max_bytes: int | None, val_fraction: float) -> dict:
    t0 = time.time()
    corpus = read_corpus(source, max_bytes)
    train_docs, val_docs = split(corpus.documents, val_fraction)
    tokenizer = train_tokenizer([d.text for d in train_docs], vocab_size)
    actual_vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if actual_vocab <= 1 << 16 else np.uint32
    arrays = {"train.npy": encode(tokenizer, train_docs, dtype), "val.npy": encode(tokenizer, val_docs, dtype),
              "token_bytes.npy": token_byte_counts(tokenizer)}

    # Files first, manifest last: a folder without a manifest is an unfinished one and the trainer refuses it.
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for name, array in arrays.items():
        write_atomic(out / name, npy_bytes(array))
    write_atomic(out / "tokenizer.json", tokenizer.to_str().encode("utf-8"))
    files = {name: sha256_file(out / name) for name in DATA_FILES}
    manifest = {
        "format_version": FORMAT_VERSION,
        "content_hash": content_hash(files),
        "files": files,
        "source": source,
        "vocab_size": actual_vocab,
        "requested_vocab_size": vocab_size,
        "bos_id": tokenizer.token_to_id(BOS),
        "token_dtype": np.dtype(dtype).name,
        "train_tokens": int(arrays["train.npy"].size),
        "val_tokens": int(arrays["val.npy"].size),
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "invalid_utf8_documents": corpus.invalid_utf8,
        "val_bytes": int(sum(len(d.text.encode("utf-8")) for d in val_docs)),
        "max_bytes": max_bytes,
        "val_fraction": val_fraction,
    }
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return {"path": str(out.resolve()), "content_hash": manifest["content_hash"], "vocab_size": actual_vocab,
            "train_tokens": manifest["train_tokens"], "val_tokens": manifest["val_tokens"],
            "documents": len(corpus.documents), "invalid_utf8_documents": corpus.invalid_utf8,
            "seconds": round(time.time() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--source", default="stdlib", help="'stdlib' (default), a folder or a glob of text "
                        "files, or a glob of .parquet files with a 'text' column")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size incl. <|bos|> "
                        "(default 8192); a small corpus may yield fewer")
    parser.add_argument("--max-bytes", type=int, default=None, help="stop reading after this many bytes of text")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (0.05)")
    args = parser.parse_args(argv)
    if not 257 <= args.vocab_size <= 1 << 20:
        parser.error(f"--vocab-size {args.vocab_size} is out of range: it needs 256 byte tokens + <|bos|> "
                     "(>= 257) and at most 1048576")
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction {args.val_fraction} must be between 0 and 1 (exclusive)")
    if args.max_bytes is not None and args.max_bytes <= 0:
        parser.error("--max-bytes must be positive")
    try:
        result = prepare(args.source, args.out, args.vocab_size, args.max_bytes, args.val_fraction)
    except (PrepareError, OSError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
