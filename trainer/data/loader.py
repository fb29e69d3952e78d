"""Token data for training: `DataConfig` -> `load_corpus` -> `Corpus`, and batch sampling.

Pipeline (`load_corpus`), run once per cache key and reused afterwards:

1. documents from `trainer.data.corpus` (packaged sources, or user paths instead of them);
2. train/validation split *by document*, per source (`trainer.data.token_cache.split_documents`);
3. byte-level BPE trained on the train split only, so validation text never shapes the vocabulary;
4. both splits tokenised into `train.bin` / `val.bin` (flat token ids, every document followed by
   `<|endoftext|>`), read back as `np.memmap`; plus `tokenizer.json`, `meta.json`, `documents.json`
   (`trainer.data.token_cache.build_cache`).

The cache directory is `<cache_dir>/<key>`, key = hash of everything that changes the tokens
(`cache_key_inputs`). Builds happen in a temp dir renamed into place under a file lock, so parallel
trials build once and never read a half-written cache.

Run `python -m trainer.data.loader --help` to build and print the corpus table.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer

from core.paths import REPO_ROOT
from trainer.data.corpus import (
    CLEANING_VERSION,
    SOURCES,
    Document,
    check_source_name,
    load_path,
    load_source,
    package_version,
    user_files,
)
from trainer.data.token_cache import TOKENIZER_RECIPE_VERSION, build_cache

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    sources: tuple[str, ...] = ("sotu", "wiki", "shakespeare", "kjv")
    """Packaged sources (names in `trainer.data.corpus.SOURCES`); ignored when `paths` is non-empty."""
    paths: tuple[str, ...] = ()
    """User text: .txt/.md files, directories of them, or .parquet files. Non-empty -> replaces
    `sources`; each path becomes one source."""
    text_column: str = "text"
    """Column holding the text in user parquet files."""
    vocab_size: int = 512
    """BPE vocabulary size including `<|endoftext|>`; >= 257 (256 bytes + end-of-text)."""
    val_fraction: float = 0.01
    """Target share of each source's characters held out for validation, in (0, 0.5)."""
    cache_dir: str | None = None
    """Root of the token caches; None -> env DLM_CACHE_DIR, else <repo>/.cache/corpus."""

    def __post_init__(self) -> None:
        for name in ("sources", "paths"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, os.PathLike)) or not all(
                isinstance(v, (str, os.PathLike)) for v in value
            ):
                raise ValueError(f"{name} must be a tuple of strings, got {value!r}")
            # lists and Paths are accepted and stored as tuple[str] (hashable, JSON-able)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        if not self.paths and not self.sources:
            raise ValueError("sources must name at least one source when paths is empty")
        for s in self.sources:
            check_source_name(s)  # CorpusError naming the unknown source
        if len(set(self.source_names())) != len(self.source_names()):
            raise ValueError(f"sources/paths must not repeat: {self.source_names()}")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ValueError(f"text_column must be a non-empty string, got {self.text_column!r}")
        if not isinstance(self.vocab_size, int) or not 257 <= self.vocab_size < 2**32:
            raise ValueError(f"vocab_size must be an int in [257, 2**32), got {self.vocab_size!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")

    def source_names(self) -> tuple[str, ...]:
        """The corpus's sources: the user paths if any, else the packaged sources."""
        return self.paths if self.paths else self.sources

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(os.environ.get("DLM_CACHE_DIR") or REPO_ROOT / ".cache" / "corpus")


# ---------------------------------------------------------------------------------------------
# Cache key.


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key_inputs(cfg: DataConfig) -> dict:
    """Everything that changes the token arrays, as JSON-able data (stored in meta.json)."""
    inputs: dict = {
        "cleaning_version": CLEANING_VERSION,
        "tokenizer_recipe": TOKENIZER_RECIPE_VERSION,
        "vocab_size": cfg.vocab_size,
        "val_fraction": cfg.val_fraction,
    }
    if cfg.paths:
        entries = []
        for p in cfg.paths:  # user order is kept: it names the sources, not the token order
            files = user_files(p)
            h = hashlib.sha256()
            for f in files:  # content hash over (relative name, content) of every file read
                h.update(f"{f.name if f == Path(p) else f.relative_to(p).as_posix()}\0".encode())
                h.update(_file_sha256(f).encode())
            size = sum(f.stat().st_size for f in files)
            entries.append({"path": str(Path(p).resolve()), "size": size, "sha256": h.hexdigest()})
        inputs |= {"paths": entries, "text_column": cfg.text_column}
    else:
        names = sorted(cfg.sources)
        # The text ships in packages: a new package release may change it, so its version counts.
        versions = {n: package_version(SOURCES[n].package) for n in names}
        inputs |= {"sources": names, "packages": versions}
    return inputs


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Build and cache.


def _load_documents(cfg: DataConfig) -> list[Document]:
    docs: list[Document] = []
    for name in cfg.source_names():
        t0 = time.perf_counter()
        got = load_path(name, text_column=cfg.text_column) if cfg.paths else load_source(name)
        chars, dt = sum(len(d.text) for d in got), time.perf_counter() - t0
        log.info("loaded %-12s %6d documents, %10d characters (%.1f s)", name, len(got), chars, dt)
        docs += got
    return docs


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process builds the same key
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(path: Path) -> bool:
    return (path / "meta.json").is_file()


def _build(cfg: DataConfig, inputs: dict, key: str, final: Path) -> None:
    """Build into a fresh temp dir beside `final`, then rename it into place. Caller holds the lock.

    A failure removes the temp dir and nothing else: existing caches are never touched.
    """
    root = final.parent
    # Under the lock nobody else builds this key: temp dirs are debris of killed builds, and a
    # final dir without meta.json cannot come from a rename, so it is debris too.
    for stale in root.glob(f".{key}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    log.info("building corpus cache %s", final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache may be shared
        t0 = time.perf_counter()
        docs = _load_documents(cfg)
        extra = {"key": key, "inputs": inputs, "load_seconds": round(time.perf_counter() - t0, 2)}
        meta = build_cache(docs, vocab_size=cfg.vocab_size, val_fraction=cfg.val_fraction,
                           out=tmp, meta_extra=extra)  # fmt: skip
        os.replace(tmp, final)  # atomic: readers see no cache or a complete one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built in %.1f s (+ %.1f s loading)", meta["build_seconds"], meta["load_seconds"])


def load_corpus(cfg: DataConfig) -> Corpus:
    """The tokenised corpus for `cfg`, built on first use and read from the cache afterwards.

    Safe to call from many processes at once: one builds, the others wait on the lock, then read.
    """
    inputs = cache_key_inputs(cfg)  # raises CorpusError for a missing user path
    key = cache_key(inputs)
    final = cfg.resolved_cache_dir() / key
    if not _is_complete(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(final.parent / f"{key}.lock"):
            if not _is_complete(final):  # another process may have finished while we waited
                _build(cfg, inputs, key, final)
    return Corpus.open(final)


# ---------------------------------------------------------------------------------------------
# The loaded corpus.


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Corpus:
    train: np.memmap
    """Train token ids, every document followed by `eot_id`."""
    val: np.memmap
    """Validation token ids, same layout."""
    tokenizer: Tokenizer
    """Byte-level BPE that produced the arrays (`encode(text).ids`, `decode(ids)`)."""
    vocab_size: int
    """Real tokenizer size (below the requested size if a tiny corpus runs out of merges)."""
    eot_id: int
    """Id of `<|endoftext|>`, the document terminator."""
    meta: dict
    """Contents of meta.json: key inputs, per-source/per-split counts, dtype, build time."""
    path: Path
    """Cache directory holding train.bin, val.bin, tokenizer.json, meta.json, documents.json."""

    @classmethod
    def open(cls, path: Path) -> Corpus:
        meta = json.loads((path / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        arrays = {s: np.memmap(path / f"{s}.bin", dtype=dtype, mode="r") for s in ("train", "val")}
        return cls(
            train=arrays["train"],
            val=arrays["val"],
            tokenizer=Tokenizer.from_file(str(path / "tokenizer.json")),
            vocab_size=int(meta["vocab_size"]),
            eot_id=int(meta["eot_id"]),
            meta=meta,
            path=path,
        )

    def split(self, name: str) -> np.memmap:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def unigram_entropy(self, split: str = "val") -> float:
        """Entropy (nats/token) of the split's empirical token distribution, EOTs included: the loss
        of the best context-free model, a floor every trained model must beat."""
        counts = np.bincount(np.asarray(self.split(split)), minlength=self.vocab_size)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def documents(self, split: str) -> list[tuple[str, str]]:
        """(source, doc_id) of every document of the split, in stream order."""
        self.split(split)
        return [tuple(x) for x in json.loads((self.path / "documents.json").read_text())[split]]


# ---------------------------------------------------------------------------------------------
# Batches.


def sample_batch(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    step: int,
    pool_tokens: int | None = None,
) -> np.ndarray:
    """(batch_size, seq_len + 1) int64 windows at random offsets (inputs [:, :-1], targets [:, 1:]).

    Offsets depend on (seed, step) only, never on earlier draws, so the batch of step s is the same
    in a fresh run and in one resumed from a checkpoint. `pool_tokens` limits windows to the first
    pool_tokens tokens: a fixed data pool seen for several epochs (data-bound runs).
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got {seed}, {step}")
    n = len(tokens) if pool_tokens is None else pool_tokens
    if pool_tokens is not None and not seq_len + 1 <= pool_tokens <= len(tokens):
        raise ValueError(f"pool_tokens must be in [seq_len + 1, {len(tokens)}], got {pool_tokens}")
    if n < seq_len + 1:
        raise ValueError(f"token array has {n} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, n - seq_len, size=batch_size)  # last start n - seq_len - 1
    return np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)


def validation_windows(tokens: np.ndarray, n_seqs: int, seq_len: int) -> np.ndarray:
    """(n_seqs, seq_len + 1) int64: the first n_seqs non-overlapping windows of the array, the same
    on every call, so validation losses of different runs are comparable."""
    if n_seqs < 1 or seq_len < 1:
        raise ValueError(f"n_seqs and seq_len must be >= 1, got {n_seqs}, {seq_len}")
    need = n_seqs * (seq_len + 1)
    if len(tokens) < need:
        raise ValueError(
            f"validation split has {len(tokens)} tokens < n_seqs * (seq_len + 1) = {need}; "
            f"use at most {len(tokens) // (seq_len + 1)} sequences or raise val_fraction"
        )
    return np.asarray(tokens[:need], dtype=np.int64).reshape(n_seqs, seq_len + 1)


# ---------------------------------------------------------------------------------------------
# CLI: python -m trainer.data.loader [--vocab-size N] [--paths P ...] [--text-column C] [--cache-dir D]


def format_table(corpus: Corpus) -> str:
    """Per-source and per-split documents / characters / tokens, then the summary numbers."""
    splits = corpus.meta["splits"]
    names = sorted({*splits["train"]["sources"], *splits["val"]["sources"]})
    cols = ("documents", "characters", "tokens", "bytes/tok")
    head = f"{'source':<24}{'split':<7}" + "".join(f"{c:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    empty = {"documents": 0, "characters": 0, "bytes": 0, "tokens": 0}
    for name in [*names, "TOTAL"]:
        for split in ("train", "val"):
            s = (
                splits[split]["total"]
                if name == "TOTAL"
                else splits[split]["sources"].get(name, empty)
            )
            bpt = s["bytes"] / s["tokens"] if s["tokens"] else float("nan")
            counts = "".join(f"{s[k]:>12,}" for k in ("documents", "characters", "tokens"))
            lines.append(f"{name:<24}{split:<7}{counts}{bpt:>12.3f}")
    n_val, n_train = (splits[k]["total"]["tokens"] for k in ("val", "train"))
    val_share = n_val / (n_val + n_train)
    h = corpus.unigram_entropy("val")
    build_s = corpus.meta["load_seconds"] + corpus.meta["build_seconds"]
    lines += [
        "",
        f"vocab size {corpus.vocab_size} (eot id {corpus.eot_id}), dtype {corpus.meta['dtype']}",
        f"stream tokens (EOTs included): train {len(corpus.train):,}, val {len(corpus.val):,}; "
        f"val share of text tokens {val_share:.2%}",
        f"bytes/token: train {splits['train']['total']['bytes_per_token']:.3f}, "
        f"val {splits['val']['total']['bytes_per_token']:.3f}",
        f"val unigram entropy: {h:.4f} nats/token = {h / math.log(2):.4f} bits/token",
        f"built {corpus.meta['built_at']} in {build_s:.1f} s",
        f"cache: {corpus.path}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Build (or load) the token cache and print its table."
    )
    parser.add_argument("--vocab-size", type=int, default=DataConfig.vocab_size)
    parser.add_argument(
        "--paths", nargs="+", default=[], help="user .txt/.md files, directories, .parquet"
    )
    parser.add_argument("--text-column", default=DataConfig.text_column)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--sources", nargs="+", default=list(DataConfig.sources), choices=sorted(SOURCES)
    )
    parser.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = DataConfig(
        sources=tuple(args.sources),
        paths=tuple(args.paths),
        text_column=args.text_column,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        cache_dir=args.cache_dir,
    )
    print(format_table(load_corpus(cfg)))


if __name__ == "__main__":
    main()
