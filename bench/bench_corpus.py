"""Corpus build at scale (issue #17): peak memory and encode throughput of the streaming build.

    python -m bench.bench_corpus [--gb 0.5] [--vocab-size 8192] [--builds local,ray] [--json OUT]

1. Writes a synthetic corpus of `--gb` GB of text as parquet shards (128 MB, row groups of 2,000
   documents) from the packaged sources: copy k of a document keeps ~90% of its paragraphs, in an
   order shuffled by (k, document), so word and pair statistics stay those of real text while no two
   copies are the same document. Half of the shards alone are the half-size corpus.
2. Builds the full and the half-size corpus with each executor, each build in a fresh process
   (`python -m trainer.data.cli`), sampling memory every 0.25 s: the build process's peak RSS
   (its own ru_maxrss, from wait4: the true peak) and the peak total PSS of its whole process tree (Ray's raylet, GCS and workers
   included; PSS counts shared pages once).
3. Prints per build: wall time, phases (scan / tokenizer / encode / write), encode tokens/s, and the
   ratios asked for: peak(full) / peak(half) (target 1 +- 0.2), ray / local encode tokens/s.

Target (issue #17): peak RSS <= 1.5 GB on >= 2 GB of text, the same (+-20%) at half the size.
The machine's CPU model and fp32 matmul peak are printed first (they set every number here).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.corpus import SOURCES, load_source

SHARD_BYTES = 128 << 20
ROW_GROUP_DOCS = 2000


def write_synthetic(root: Path, gb: float, seed: int = 0) -> list[Path]:
    """Parquet shards holding >= gb GB of UTF-8 text; returns them in order."""
    docs = [d.text for name in SOURCES for d in load_source(name)]
    root.mkdir(parents=True, exist_ok=True)
    target, written, copy, shards = gb * 1e9, 0, 0, []
    rows, rows_bytes = [], 0

    def flush() -> None:
        nonlocal rows, rows_bytes
        path = root / f"shard-{len(shards):05d}.parquet"
        pq.write_table(pa.table({"text": rows}), path, row_group_size=ROW_GROUP_DOCS)
        shards.append(path)
        rows, rows_bytes = [], 0

    while written < target:
        for i, text in enumerate(docs):
            rng = random.Random(seed * 1_000_003 + copy * 100_003 + i)
            paras = text.split("\n\n")
            kept = [p for p in paras if rng.random() < 0.9] or paras[:1]
            rng.shuffle(kept)
            out = "\n\n".join(kept)
            rows.append(out)
            n = len(out.encode("utf-8"))
            rows_bytes += n
            written += n
            if rows_bytes >= SHARD_BYTES:
                flush()
            if written >= target:
                break
        copy += 1
    if rows:
        flush()
    return shards


def _pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _exited(proc: psutil.Popen) -> bool:
    """True once the child is a zombie (not reaped: os.wait4 below collects its rusage)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def build(corpus: Path, cache: Path, builder: str, vocab: int) -> dict:
    """One build in a fresh process: wall time, peak RSS of that process, peak PSS of its tree."""
    cmd = [sys.executable, "-m", "trainer.data.cli", "--paths", str(corpus), "--build", builder,
           "--vocab-size", str(vocab), "--cache-dir", str(cache)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    logfile = cache.with_suffix(".log")
    out = open(logfile, "w")
    proc = psutil.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak_pss = peak_rss = 0
    while not _exited(proc):
        try:
            peak_rss = max(peak_rss, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        peak_pss = max(peak_pss, _pss(proc))
        time.sleep(0.25)
    _, status, usage = os.wait4(proc.pid, 0)          # this child's own rusage: its true peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out.close()
    log = logfile.read_text()
    if proc.returncode:
        raise RuntimeError(f"build failed ({proc.returncode}):\n{log[-3000:]}")
    meta = json.loads(next(cache.glob("*/meta.json")).read_text())
    return {"build": builder, "wall_s": round(wall, 1), "phases": meta["phases"],
            "encode_tokens_per_s": meta["encode_tokens_per_s"],
            "tokens": meta["splits"]["train"]["total"]["stream_tokens"] + meta["splits"]["val"]["total"]["stream_tokens"],
            "documents": meta["splits"]["train"]["total"]["documents"] + meta["splits"]["val"]["total"]["documents"],
            "text_gb": round((meta["splits"]["train"]["total"]["bytes"] + meta["splits"]["val"]["total"]["bytes"]) / 1e9, 3),
            "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3), "sampled_rss_gb": round(peak_rss / 1e9, 3),
            "peak_pss_gb": round(peak_pss / 1e9, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=0.5, help="text in the full corpus (issue: >= 2)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--builds", default="local,ray")
    ap.add_argument("--workdir", default=None, help="keep the corpus and caches here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    import torch
    from trainer.tools.peak import cpu_model, measure
    peak = measure(torch.device("cpu"), torch.float32)
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_corpus."))
    t0 = time.perf_counter()
    shards = write_synthetic(work / "full", args.gb)
    half = work / "half"
    half.mkdir(exist_ok=True)
    for s in shards[: max(1, len(shards) // 2)]:
        if not (half / s.name).exists():
            (half / s.name).symlink_to(s)
    print(f"synthetic corpus: {len(shards)} shards, {sum(s.stat().st_size for s in shards) / 1e9:.2f} GB "
          f"parquet ({time.perf_counter() - t0:.0f} s to write), half: {len(list(half.iterdir()))} shards",
          flush=True)
    results = []
    for builder in args.builds.split(","):
        for name in ("half", "full"):
            cache = work / f"cache-{builder}-{name}"
            if cache.exists():
                import shutil
                shutil.rmtree(cache)
            r = {"corpus": name, **build(work / name, cache, builder, args.vocab_size)}
            results.append(r)
            print(f"{builder:>5} {name:>4}: {r['text_gb']:.2f} GB text, {r['documents']:,} docs, "
                  f"{r['tokens']:,} tokens in {r['wall_s']:.0f} s {r['phases']}; encode "
                  f"{r['encode_tokens_per_s']:,.0f} tokens/s; peak RSS {r['peak_rss_gb']:.2f} GB (build "
                  f"process; {r['sampled_rss_gb']:.2f} sampled), peak PSS {r['peak_pss_gb']:.2f} GB (its process tree)",
                  flush=True)
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6   # KB -> GB, max child
    by = {(r["build"], r["corpus"]): r for r in results}
    summary = {"cpu": cpu_model(), "peak_gflops": round(peak / 1e9), "results": results,
               "max_build_process_rss_gb": round(max_rss, 3)}
    for b in args.builds.split(","):
        for m in ("rss", "pss"):
            summary[f"{b}_peak_{m}_full_gb"] = by[b, "full"][f"peak_{m}_gb"]
            summary[f"{b}_peak_{m}_full_over_half"] = round(
                by[b, "full"][f"peak_{m}_gb"] / by[b, "half"][f"peak_{m}_gb"], 3)
    if {"local", "ray"} <= set(args.builds.split(",")):
        summary["ray_over_local_encode"] = round(by["ray", "full"]["encode_tokens_per_s"]
                                                 / by["local", "full"]["encode_tokens_per_s"], 3)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
