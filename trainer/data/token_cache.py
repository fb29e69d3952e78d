"""What a token cache holds: the document split, the stream order, and the per-document passes.

Pure definitions, no I/O beyond the documents handed in: `trainer.data.pipeline` runs the passes over
the corpus's units (in this process or on Ray Data) and writes the cache.

The split rule (`split_documents`, the reference on an in-memory list; `SplitPlanner`, the same rule
streamed): within a source, documents are ordered by a stable hash of (source, doc_id) and moved to
validation until they hold >= val_fraction of the source's characters; a source with >= 2 documents
gives at least one to each split, a single-document source goes to train. Per source, because
sources differ wildly in granularity (66 Bible books vs 10k short articles): one global order would
let a few huge documents decide the validation mix. Each split's stream is then ordered by a second
seeded hash, so the training stream interleaves sources (the data-bound regime's pool is a prefix).

Streamed, the rule becomes one threshold per source: validation = hash <= threshold. Finding it
needs the (hash, characters) of the lowest-hash documents only: `SplitPlanner` keeps every
document whose hash is below 8x the validation share of the hash space (plus every document of a
source's first 65,536), about 16 bytes x 8% of the documents, and checks that the threshold fell
inside what it kept.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.corpus import CorpusError, Document

# Bump when the tokenizer recipe, stream layout or split rule changes: it enters the cache key.
TOKENIZER_RECIPE_VERSION = 1
# Bump when the files of a cache change shape (2: sharded streams + index.json).
CACHE_LAYOUT_VERSION = 2
# Salts of the two deterministic document orders (split choice, stream order).
_SPLIT_SALT = "split-v1"
_ORDER_SALT = "order-v1"
# Characters per encode_batch call: big enough to keep both cores busy, small enough that one
# call's results stay in the tens of MB.
ENCODE_CHUNK_CHARS = 2_000_000
_HASH_SPACE = 1 << 64


def _stable_hash(*parts: str) -> int:
    """Process-independent (unlike hash()) 64-bit hash."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def split_hash(d: Document) -> int:
    return _stable_hash(_SPLIT_SALT, d.source, d.doc_id)


def order_hash(d: Document) -> int:
    return _stable_hash(_ORDER_SALT, d.source, d.doc_id)


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, val) of an in-memory list, each in stream order: the reference definition of the rule
    `SplitPlanner` streams (tests hold the two equal)."""
    by_source: dict[str, list[Document]] = {}
    for d in docs:
        by_source.setdefault(d.source, []).append(d)
    train, val = [], []
    for group in by_source.values():
        group = sorted(group, key=split_hash)
        target = val_fraction * sum(len(d.text) for d in group)
        n_val, held = 0, 0
        while n_val < len(group) - 1 and held < target:  # leaves >= 1 document for training
            held += len(group[n_val].text)
            n_val += 1
        val += group[:n_val]
        train += group[n_val:]
    return sorted(train, key=order_hash), sorted(val, key=order_hash)


@dataclass
class _SourceScan:
    docs: int = 0
    chars: int = 0
    hashes: list = field(default_factory=list)
    sizes: list = field(default_factory=list)


@dataclass(frozen=True)
class SplitRule:
    """Validation = split_hash(doc) <= thresholds[source] (-1: the source keeps all for training)."""
    thresholds: dict[str, int]
    val_chars: dict[str, int]
    train_chars: dict[str, int]

    def is_val(self, d: Document) -> bool:
        return split_hash(d) <= self.thresholds[d.source]


class SplitPlanner:
    """Streams (source, split hash, characters) of every document; `rule()` gives the split."""
    KEEP_ALL = 1 << 16

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction
        self.cap = min(_HASH_SPACE, int(8 * val_fraction * _HASH_SPACE))
        self.sources: dict[str, _SourceScan] = {}

    def add(self, batch: pa.Table) -> None:
        for source in set(batch.column("source").to_pylist()):
            rows = batch.filter(pc.equal(batch.column("source"), source))
            h = rows.column("hash").to_numpy()
            c = rows.column("chars").to_numpy()
            s = self.sources.setdefault(source, _SourceScan())
            keep = s.docs + np.arange(len(h)) < self.KEEP_ALL
            keep |= True if self.cap >= _HASH_SPACE else h < np.uint64(self.cap)
            s.hashes.append(h[keep])
            s.sizes.append(c[keep])
            s.docs += len(h)
            s.chars += int(c.sum())

    def rule(self, expected: Iterable[str]) -> SplitRule:
        thresholds, val_chars, train_chars = {}, {}, {}
        for source in expected:
            s = self.sources.get(source)
            if s is None or s.docs == 0:
                raise CorpusError(f"source {source!r} yielded no documents")
            h = np.concatenate(s.hashes)
            c = np.concatenate(s.sizes).astype(np.int64)
            order = np.argsort(h, kind="stable")
            h, cum = h[order], np.cumsum(c[order])
            target = self.val_fraction * s.chars
            n_val = 0 if s.docs < 2 else int(min(s.docs - 1, np.searchsorted(cum, target, "left") + 1))
            complete = len(h) == s.docs
            if not complete and (n_val > len(h) or int(h[n_val - 1]) >= self.cap):
                raise CorpusError(f"source {source!r}: its validation threshold lies beyond the "
                                  f"lowest {len(h)} of {s.docs} document hashes kept for the split; a "
                                  "few huge documents dominate it: split it into smaller documents")
            thresholds[source] = int(h[n_val - 1]) if n_val else -1
            val_chars[source] = int(cum[n_val - 1]) if n_val else 0
            train_chars[source] = s.chars - val_chars[source]
        return SplitRule(thresholds, val_chars, train_chars)


# ---------------------------------------------------------------------------------------------
# The three passes over one unit's documents (run wherever the executor runs them).

ENCODED_SCHEMA = pa.schema([("split", pa.int8()), ("order", pa.uint64()), ("source", pa.string()),
                            ("doc_id", pa.string()), ("chars", pa.int64()), ("bytes", pa.int64()),
                            ("tokens", pa.large_binary())])


def scan_docs(docs: Iterable[Document]) -> pa.Table:
    """Pass 1: (source, split hash, characters) per document."""
    rows = [(d.source, split_hash(d), len(d.text)) for d in docs]
    return pa.table({"source": pa.array([r[0] for r in rows], pa.string()),
                     "hash": pa.array([r[1] for r in rows], pa.uint64()),
                     "chars": pa.array([r[2] for r in rows], pa.int64())})


def sample_docs(docs: Iterable[Document], rule: SplitRule, below: int) -> pa.Table:
    """Pass 2 (trained tokenizers only): training documents whose order hash is < `below`."""
    rows = [(order_hash(d), d.text) for d in docs if not rule.is_val(d)]
    rows = [r for r in rows if r[0] < below]
    return pa.table({"order": pa.array([r[0] for r in rows], pa.uint64()),
                     "text": pa.array([r[1] for r in rows], pa.large_string())})


def encode_docs(docs: Iterable[Document], rule: SplitRule, tok, dtype: np.dtype) -> pa.Table:
    """Pass 3: each document's tokens followed by the end-of-text id, with its split and order."""
    eot = np.array([tok.eot_id], dtype=dtype)
    cols: dict[str, list] = {name: [] for name in ENCODED_SCHEMA.names}
    chunk: list[Document] = []

    def flush() -> None:
        for d, ids in zip(chunk, tok.encode_batch([d.text for d in chunk]), strict=True):
            cols["split"].append(int(rule.is_val(d)))
            cols["order"].append(order_hash(d))
            cols["source"].append(d.source)
            cols["doc_id"].append(d.doc_id)
            cols["chars"].append(len(d.text))
            cols["bytes"].append(len(d.text.encode("utf-8")))
            cols["tokens"].append(np.concatenate([np.asarray(ids, dtype=dtype), eot]).tobytes())
        chunk.clear()

    chars = 0
    for d in docs:
        chunk.append(d)
        chars += len(d.text)
        if chars >= ENCODE_CHUNK_CHARS:
            flush()
            chars = 0
    if chunk:
        flush()
    return pa.table(cols, schema=ENCODED_SCHEMA)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def sample_threshold(rule: SplitRule, sample_chars: int) -> int:
    """Order-hash bound of the tokenizer's training sample: all training text when it fits in
    `sample_chars`, else the share of the hash space that holds ~sample_chars of it."""
    train = sum(rule.train_chars.values())
    return _HASH_SPACE if train <= sample_chars else int(sample_chars / train * _HASH_SPACE)


class Timer:
    """Seconds per named phase, for meta.json and the bench."""

    def __init__(self):
        self.t, self.phases = time.perf_counter(), {}

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.phases[name] = round(now - self.t, 3)
        self.t = now
        return self.phases[name]
