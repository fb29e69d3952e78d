"""Token data for training: `DataConfig` -> `load_corpus` -> `Corpus`, and batch sampling.

Pipeline (`load_corpus`), run once per cache key and reused afterwards:

1. the corpus is planned as units (`trainer.data.units`: a packaged source, a batch of text files,
   one parquet row group) and streamed through three passes (`trainer.data.pipeline`), in this
   process or on Ray Data (`DataConfig.build`); peak memory does not grow with the corpus;
2. train/validation split *by document*, per source (`trainer.data.token_cache`);
3. the tokenizer: a byte-level BPE trained on (a sample of) the train split only, so validation
   text never shapes the vocabulary, or the user's own file (`DataConfig.tokenizer`);
4. both splits tokenised into fixed-size shards (`trainer.data.shards`: every document followed by
   the end-of-text id), read back as one memory-mapped array per split (`TokenShards`); plus the
   tokenizer's files, `meta.json`, `documents.json`.

The cache directory is `<cache_dir>/<key>`, key = hash of everything that changes the tokens
(`cache_key_inputs`). Builds happen in a temp dir renamed into place under a file lock, so parallel
trials build once and never read a half-written cache, and a failed build touches no existing cache.

Run `python -m trainer.data.cli --help` (or `make data`) to build and print the corpus table.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np

from trainer.data.config import DataConfig  # noqa: F401 (re-exported: callers import it from here)
from trainer.data.corpus import CLEANING_VERSION, SOURCES, package_version
from trainer.data.pipeline import EXECUTORS, build_cache, ray_session, resolve_build
from trainer.data.shards import TokenShards
from trainer.data.token_cache import CACHE_LAYOUT_VERSION, TOKENIZER_RECIPE_VERSION
from trainer.data.tokenizer import (TextTokenizer, load_tokenizer_file, open_saved, tokenizer_file_inputs,
                                    train_bpe)
from trainer.data.units import plan_units, user_files

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Cache key.


FULL_HASH_BYTES = 64 << 20


def _file_sha256(path: Path) -> str:
    """Content hash of a file; above FULL_HASH_BYTES, of its size, first and last 4 MB (a parquet
    file's footer, which holds every row group's statistics, is in the last bytes): keying a 40 GB
    corpus must not read 40 GB in every trial. An edit of the middle of a large text file that
    keeps its size is not seen; delete the cache (or the file's copy) after such an edit."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f"sampled:{size}\0".encode())
            h.update(f.read(4 << 20))
            f.seek(size - (4 << 20))
            h.update(f.read())
    return h.hexdigest()


def cache_key_inputs(cfg: DataConfig) -> dict:
    """Everything that changes the token arrays, as JSON-able data (stored in meta.json)."""
    inputs: dict = {
        "cleaning_version": CLEANING_VERSION,
        "layout": CACHE_LAYOUT_VERSION,
        "val_fraction": cfg.val_fraction,
    }
    if cfg.tokenizer == "bpe":
        inputs |= {"tokenizer_recipe": TOKENIZER_RECIPE_VERSION, "vocab_size": cfg.vocab_size,
                   "tokenizer_sample_chars": cfg.tokenizer_sample_chars}
    else:
        inputs["tokenizer_file"] = tokenizer_file_inputs(cfg.tokenizer, cfg.eot_token)
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


@dataclasses.dataclass(frozen=True)
class _TrainedBPE:
    """The tokenizer trained on the sample pass's texts."""
    vocab_size: int
    sample_chars: int
    trains = True

    def __call__(self, texts: list[str]) -> TextTokenizer:
        return train_bpe(texts, self.vocab_size)


@dataclasses.dataclass(frozen=True)
class _UserFile:
    """The user's tokenizer file (no sample pass)."""
    path: str
    eot_token: str | None
    trains = False

    def __call__(self, texts) -> TextTokenizer:
        return load_tokenizer_file(self.path, self.eot_token)


def _make_tokenizer(cfg: DataConfig):
    if cfg.tokenizer == "bpe":
        return _TrainedBPE(cfg.vocab_size, cfg.tokenizer_sample_chars)
    return _UserFile(cfg.tokenizer, cfg.eot_token)


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


def _build(cfg: DataConfig, inputs: dict, key: str, final: Path, units: list) -> None:
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
        build = resolve_build(cfg.build)
        make = _make_tokenizer(cfg)
        with ray_session() if build == "ray" else nullcontext():
            meta = build_cache(units, sources=cfg.source_names(), make_tokenizer=make,
                               val_fraction=cfg.val_fraction, shard_tokens=cfg.shard_tokens,
                               executor=EXECUTORS[build](), out=tmp,
                               meta_extra={"key": key, "inputs": inputs})
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
        units = plan_units(cfg.sources, cfg.paths, cfg.text_column)  # bad files fail here, first
        final.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(final.parent / f"{key}.lock"):
            if not _is_complete(final):  # another process may have finished while we waited
                _build(cfg, inputs, key, final, units)
    return Corpus.open(final)


# ---------------------------------------------------------------------------------------------
# The loaded corpus.


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Corpus:
    train: TokenShards
    """Train token ids, every document followed by `eot_id`: one array over the split's shards."""
    val: TokenShards
    """Validation token ids, same layout."""
    tokenizer: TextTokenizer
    """The tokenizer that produced the arrays (`encode_batch(texts)`, `decode(ids)`)."""
    vocab_size: int
    """Real tokenizer size (below the requested size if a tiny corpus runs out of merges)."""
    eot_id: int
    """Id of the document terminator (`<|endoftext|>` for the trained BPE: 0)."""
    meta: dict
    """Contents of meta.json: key inputs, per-source/per-split counts, dtype, build time."""
    path: Path
    """Cache directory: the shards, index.json, the tokenizer's files, meta.json, documents.json."""

    @classmethod
    def open(cls, path: Path) -> Corpus:
        meta = json.loads((path / "meta.json").read_text())
        return cls(
            train=TokenShards.open(path, "train"),
            val=TokenShards.open(path, "val"),
            tokenizer=open_saved(path, meta["tokenizer"]),
            vocab_size=int(meta["vocab_size"]),
            eot_id=int(meta["eot_id"]),
            meta=meta,
            path=path,
        )

    def split(self, name: str) -> TokenShards:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def unigram_entropy(self, split: str = "val") -> float:
        """Entropy (nats/token) of the split's empirical token distribution, EOTs included: the loss
        of the best context-free model, a floor every trained model must beat."""
        counts = np.zeros(self.vocab_size, np.int64)
        for shard in self.split(split).iter_shards():
            counts += np.bincount(shard, minlength=self.vocab_size)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

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


if __name__ == "__main__":
    from trainer.data.cli import main
    main()
