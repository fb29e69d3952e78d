"""Building one token cache from units: three streaming passes, an external sort, sharded output.

    scan     every unit -> (source, split hash, characters) per document -> the split thresholds
    sample   (trained BPE only) training documents of the lowest order hashes, <= sample_chars of
             text, sorted by order hash -> the tokenizer
    encode   every unit -> per document: split, order hash, tokens + EOT -> hash-range buckets on
             disk; each bucket is then sorted by order hash and appended to the split's shards

Peak memory is one unit's documents, the tokenizer sample (a config field), one bucket (~16M tokens)
and ~16 bytes per kept split hash (token_cache.SplitPlanner), not the corpus. The stream is the one
`token_cache.split_documents` defines on an in-memory list: the same tokens for the same tokenizer,
whichever executor ran the passes and in whatever order its results arrived.

Executors (`EXECUTORS`): "local" runs the passes in this process (small units' documents are kept
between passes up to MEMO_CHARS, so the packaged corpus is read once); "ray" runs them as Ray Data
`map_batches` over the units on the cluster's CPUs, and this process writes the buckets and shards.
Input files must be readable at the same path on every node (shared storage).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.corpus import CorpusError, Document
from trainer.data.shards import INDEX, ShardWriter
from trainer.data.token_cache import (SplitPlanner, Timer, encode_docs, sample_docs, sample_threshold,
                                      scan_docs, token_dtype)
from trainer.data.units import Unit, read_unit

log = logging.getLogger(__name__)

MEMO_CHARS = 64_000_000        # local executor: documents kept between passes, at most this much text
BUCKET_CHARS = 64_000_000      # encode: text per sort bucket (~16M tokens at ~4 characters/token)
SPLITS = ("train", "val")
RAY_DATA_STORE_BYTES = 512 << 20   # ray: object-store budget of the pipeline's blocks in flight


class LocalExecutor:
    name = "local"

    def __init__(self):
        self.memo: dict[Unit, list[Document]] = {}
        self.memo_chars = 0

    def _docs(self, unit: Unit):
        if unit in self.memo:
            return self.memo[unit]
        if self.memo_chars >= MEMO_CHARS:
            return read_unit(unit)
        docs = list(read_unit(unit))
        chars = sum(len(d.text) for d in docs)
        if self.memo_chars + chars <= MEMO_CHARS:
            self.memo[unit] = docs
            self.memo_chars += chars
        return docs

    def map(self, fn: Callable[[Iterator[Document]], pa.Table], units: list[Unit]) -> Iterator[pa.Table]:
        for unit in units:
            yield fn(iter(self._docs(unit)))


class RayExecutor:
    name = "ray"

    def __init__(self):
        self.nodes: set[str] = set()
        """Ray nodes that ran at least one unit (recorded in meta.json as ray_nodes)."""

    def map(self, fn: Callable[[Iterator[Document]], pa.Table], units: list[Unit]) -> Iterator[pa.Table]:
        import ray

        def run(batch: pa.Table) -> pa.Table:
            out = pa.concat_tables([fn(read_unit(Unit.from_row(row))) for row in batch.to_pylist()])
            node = ray.get_runtime_context().get_node_id()
            return out.append_column("_node", pa.array([node] * out.num_rows, pa.string()))

        ctx = ray.data.DataContext.get_current()
        saved = ctx.enable_progress_bars, ctx.execution_options.resource_limits
        ctx.enable_progress_bars = False
        # blocks in flight: bounded, or producers outrunning this process's writer would fill the
        # object store (30% of RAM by default) in proportion to the corpus
        ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
            object_store_memory=RAY_DATA_STORE_BYTES)
        try:
            ds = ray.data.from_items([u.as_row() for u in units], override_num_blocks=len(units))
            ds = ds.map_batches(run, batch_size=1, batch_format="pyarrow")
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                self.nodes.update(table.column("_node").unique().to_pylist())
                yield table.drop_columns(["_node"])
        finally:
            ctx.enable_progress_bars, ctx.execution_options.resource_limits = saved


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def resolve_build(build: str) -> str:
    """'auto' -> 'ray' when this process drives a Ray session or RAY_ADDRESS names a cluster;
    'local' inside a Ray worker (a trial whose node lacks the cache): its Ray Data tasks would wait
    for CPUs the trials themselves hold."""
    if build != "auto":
        return build
    import sys
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return "local" if ray.get_runtime_context().worker.mode == ray.WORKER_MODE else "ray"
    return "ray" if os.environ.get("RAY_ADDRESS") else "local"


@contextmanager
def ray_session():
    """The Ray session the build runs in: the current one, else RAY_ADDRESS's cluster, else an
    embedded one bound to loopback (core.net.local_cluster_env), shut down afterwards."""
    from core.net import LOOPBACK, local_cluster_env
    from core.paths import REPO_ROOT

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.update({k: v for k, v in local_cluster_env().items() if k not in os.environ})
    import ray
    if ray.is_initialized():
        yield
        return
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  runtime_env={"env_vars": env})
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", _node_ip_address=LOOPBACK, **kwargs)
        if ray.util.get_node_ip_address() != LOOPBACK:   # Ray imported before the env was set
            ray.shutdown()
            raise RuntimeError("the embedded Ray node for the corpus build did not bind 127.0.0.1; "
                               "build from a fresh process (python -m trainer.data.cli --build ray)")
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The external sort of one split: hash-range buckets on disk, each sorted in memory.

_META = np.dtype([("order", "<u8"), ("ntok", "<i8"), ("chars", "<i8"), ("bytes", "<i8"),
                  ("source", "<i4")])


class _Buckets:
    def __init__(self, tmp: Path, split: str, chars: int, dtype: np.dtype, sources: list[str]):
        n = 1
        while n * BUCKET_CHARS < chars:
            n *= 2                                   # a power of two: bucket = top bits of the hash
        self.shift, self.n = 64 - (n.bit_length() - 1), n
        self.tmp, self.split, self.dtype = tmp, split, dtype
        self.source_index = {s: i for i, s in enumerate(sources)}
        self.sources = sources

    def _path(self, b: int, ext: str) -> Path:
        return self.tmp / f"{self.split}-{b:05d}.{ext}"

    def add(self, t: pa.Table) -> None:
        order = t.column("order").to_numpy()
        bucket = (order >> np.uint64(self.shift)).astype(np.int64) if self.shift < 64 else np.zeros(len(order), np.int64)
        tokens, ids = t.column("tokens").to_pylist(), t.column("doc_id").to_pylist()
        meta = np.empty(len(order), _META)
        meta["order"] = order
        meta["ntok"] = [len(x) // self.dtype.itemsize for x in tokens]
        meta["chars"] = t.column("chars").to_numpy()
        meta["bytes"] = t.column("bytes").to_numpy()
        meta["source"] = [self.source_index[s] for s in t.column("source").to_pylist()]
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            with open(self._path(b, "tok"), "ab") as f:
                f.write(b"".join(tokens[i] for i in rows))
            with open(self._path(b, "meta"), "ab") as f:
                f.write(meta[rows].tobytes())
            with open(self._path(b, "ids"), "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(ids[i]) + "\n" for i in rows))

    def finish(self, writer: ShardWriter, documents) -> dict:
        """Write the buckets in hash order to `writer`; returns the split's statistics."""
        k = len(self.sources)
        totals = {name: np.zeros(k, np.int64) for name in ("documents", "characters", "bytes", "tokens")}
        for b in range(self.n):
            if not self._path(b, "meta").exists():
                continue
            meta = np.fromfile(self._path(b, "meta"), _META)
            tokens = np.fromfile(self._path(b, "tok"), self.dtype)
            ids = self._path(b, "ids").read_text(encoding="utf-8").splitlines()
            start = np.cumsum(meta["ntok"]) - meta["ntok"]
            order = np.argsort(meta["order"], kind="stable")
            parts, held = [], 0
            for i in order:
                parts.append(tokens[start[i]:start[i] + meta["ntok"][i]])
                held += int(meta["ntok"][i])
                if held >= 1 << 20:
                    writer.write(np.concatenate(parts))
                    parts, held = [], 0
                documents.add(self.split, self.sources[meta["source"][i]], json.loads(ids[i]))
            if parts:
                writer.write(np.concatenate(parts))
            for name, col in (("documents", None), ("characters", "chars"), ("bytes", "bytes"),
                              ("tokens", "ntok")):
                np.add.at(totals[name], meta["source"], 1 if col is None else meta[col])
            totals["tokens"] -= np.bincount(meta["source"], minlength=k)   # EOTs are not text tokens
            for ext in ("tok", "meta", "ids"):
                self._path(b, ext).unlink()
        stats = {s: {name: int(v[i]) for name, v in totals.items()}
                 for i, s in enumerate(self.sources) if totals["documents"][i]}
        total = {name: int(v.sum()) for name, v in totals.items()}
        total["bytes_per_token"] = total["bytes"] / max(total["tokens"], 1)
        total["stream_tokens"] = total["tokens"] + total["documents"]  # array length, EOTs included
        return {"sources": stats, "total": total}


class _DocumentsFile:
    """documents.json, {"train": [[source, doc_id], ...], "val": [...]}, written as it streams."""

    def __init__(self, path: Path):
        self.f = open(path, "w", encoding="utf-8")
        self.f.write("{")
        self.split, self.first = None, True

    def add(self, split: str, source: str, doc_id: str) -> None:
        if split != self.split:
            self.f.write(("], " if self.split else "") + json.dumps(split) + ": [")
            self.split, self.first = split, True
        self.f.write(("" if self.first else ", ") + json.dumps([source, doc_id]))
        self.first = False

    def close(self) -> None:
        self.f.write("]}" if self.split else "}")
        self.f.close()


# ---------------------------------------------------------------------------------------------


def build_cache(units: list[Unit], *, sources: tuple[str, ...], make_tokenizer, val_fraction: float,
                shard_tokens: int, executor, out: Path, meta_extra: dict) -> dict:
    """Run the three passes with `executor` and write a complete cache into `out` (meta.json last).

    `make_tokenizer(texts)`: the tokenizer, trained on `texts` (a list in order-hash order), or
    None when it comes from a file (`make_tokenizer.trains` False: no sample pass)."""
    timer = Timer()
    planner = SplitPlanner(val_fraction)
    for table in executor.map(scan_docs, units):
        planner.add(table)
    rule = planner.rule(sources)
    if all(t < 0 for t in rule.thresholds.values()):
        raise CorpusError(f"validation split is empty: sources {sorted(sources)} need >= 2 documents "
                          "each (documents are never cut in two)")
    log.info("scan: %d units, %d documents (%.1f s)", len(units),
             sum(s.docs for s in planner.sources.values()), timer.lap("scan"))
    texts = None
    if make_tokenizer.trains:
        below = sample_threshold(rule, make_tokenizer.sample_chars)
        sample = [t for t in executor.map(lambda docs: sample_docs(docs, rule, below), units)]
        sample = pa.concat_tables(sample).sort_by("order") if sample else None
        texts = sample.column("text").to_pylist() if sample is not None else []
        del sample
    tok = make_tokenizer(texts)
    del texts
    log.info("tokenizer: %s, %d ids (%.1f s)", tok.kind, tok.vocab_size, timer.lap("tokenizer"))
    dtype = token_dtype(tok.vocab_size)
    chars = {"val": sum(rule.val_chars.values()), "train": sum(rule.train_chars.values())}
    buckets = {s: _Buckets(out, s, chars[s], dtype, list(sources)) for s in SPLITS}
    encoded = 0
    for table in executor.map(lambda docs: encode_docs(docs, rule, tok, dtype), units):
        for i, split in enumerate(SPLITS):
            rows = table.filter(pc.equal(table.column("split"), np.int8(i)))
            if rows.num_rows:
                buckets[split].add(rows)
        encoded += pc.sum(pc.binary_length(table.column("tokens"))).as_py() // dtype.itemsize
    encode_s = timer.lap("encode")
    log.info("encode: %d tokens (%.1f s, %.0f tokens/s)", encoded, encode_s, encoded / max(encode_s, 1e-9))
    documents, index, splits = _DocumentsFile(out / "documents.json"), {}, {}
    for split in SPLITS:
        writer = ShardWriter(out, split, dtype, shard_tokens)
        splits[split] = buckets[split].finish(writer, documents)
        index[split] = writer.close()
    documents.close()
    (out / INDEX).write_text(json.dumps(index, indent=1))
    timer.lap("write")
    meta = {
        **meta_extra,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "tokenizer": tok.save(out),
        "splits": splits,
        "build": executor.name,
        "ray_nodes": len(getattr(executor, "nodes", ())),
        "phases": timer.phases,
        "encode_tokens_per_s": round(encoded / max(encode_s, 1e-9)),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_seconds": timer.phases["scan"],
        "build_seconds": round(sum(timer.phases.values()) - timer.phases["scan"], 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the cache complete
    return meta
