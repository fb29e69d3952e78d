"""A split's token stream on disk: fixed-size `.bin` shards plus an index, read back as one array.

Layout (written by `ShardWriter`, one per split, into the cache directory):
    <split>-00000.bin, <split>-00001.bin, ...   raw token ids, `dtype`, exactly `shard_tokens` ids
                                                each except the last; documents run across shard
                                                boundaries (the stream is one concatenation)
    index.json                                  {split: {"dtype", "shard_tokens", "tokens",
                                                "shards": [{"file", "tokens", "sha256"}]}}

Fixed-size shards make the global position -> (shard, offset) map pure arithmetic (pos // size), so
a window that crosses a boundary costs one extra gather and nothing else. `TokenShards` opens every
shard as a read-only `np.memmap` (no bytes are read until indexed) and checks each file's size
against the index: a truncated or swapped shard is a CorpusError naming the file, not a silent
wrong window. `verify()` re-hashes the files (sha256) for a full check; opening does not, because
every trial opens the corpus and hashing 20 GB of shards would take a minute each time.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from trainer.data.corpus import CorpusError

INDEX = "index.json"


class ShardWriter:
    """Appends token arrays to `<split>-NNNNN.bin` files of exactly `shard_tokens` ids each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.dir, self.split, self.dtype, self.size = Path(directory), split, np.dtype(dtype), shard_tokens
        self.shards: list[dict] = []
        self._f = None
        self._hash = None
        self._filled = 0

    def _roll(self) -> None:
        self._close_shard()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f, self._hash, self._filled = open(self.dir / name, "wb"), hashlib.sha256(), 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _close_shard(self) -> None:
        if self._f is not None:
            self._f.close()
            self.shards[-1].update(tokens=self._filled, sha256=self._hash.hexdigest())
            self._f = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self._f is None or self._filled == self.size:
                self._roll()
            take = min(self.size - self._filled, len(tokens))
            chunk = tokens[:take].tobytes()
            self._f.write(chunk)
            self._hash.update(chunk)
            self._filled += take
            tokens = tokens[take:]

    def close(self) -> dict:
        """The split's index entry."""
        self._close_shard()
        return {"dtype": self.dtype.name, "shard_tokens": self.size,
                "tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}


class TokenShards:
    """One split's stream as a read-only 1-D array: `len`, integer / integer-array indexing and
    contiguous slices, across shard boundaries. `np.asarray(shards)` concatenates everything (small
    splits only; `sample_batch` and `validation_windows` index without it)."""

    def __init__(self, directory: Path, entry: dict):
        self.dtype = np.dtype(entry["dtype"])
        self.shard_tokens = int(entry["shard_tokens"])
        self.n = int(entry["tokens"])
        self.files = [Path(directory) / s["file"] for s in entry["shards"]]
        self.sha256 = [s["sha256"] for s in entry["shards"]]
        self.maps = []
        for path, s in zip(self.files, entry["shards"], strict=True):
            want = int(s["tokens"]) * self.dtype.itemsize
            have = path.stat().st_size if path.is_file() else None
            if have != want:
                raise CorpusError(f"token shard {path} is {'missing' if have is None else f'{have} bytes'}, "
                                  f"the index says {want}: the cache is damaged; delete {Path(directory)} "
                                  "to rebuild it")
            self.maps.append(np.memmap(path, dtype=self.dtype, mode="r"))
        if sum(len(m) for m in self.maps) != self.n or any(
                len(m) != self.shard_tokens for m in self.maps[:-1]):
            raise CorpusError(f"index of {Path(directory)} is inconsistent (shard sizes vs total)")

    @classmethod
    def open(cls, directory: Path, split: str) -> TokenShards:
        index = json.loads((Path(directory) / INDEX).read_text())
        return cls(directory, index[split])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, max(start, stop))
        pos = np.asarray(idx)
        if not np.issubdtype(pos.dtype, np.integer):
            raise TypeError(f"token positions must be integers, got {pos.dtype}")
        pos = np.where(pos < 0, pos + self.n, pos)
        if pos.size and (pos.min() < 0 or pos.max() >= self.n):
            raise IndexError(f"token position out of range for a stream of {self.n} tokens")
        shard, offset = np.divmod(pos, self.shard_tokens)
        out = np.empty(pos.shape, dtype=self.dtype)
        for s in np.unique(shard):                 # a window spans one shard, rarely two
            where = shard == s
            out[where] = self.maps[int(s)][offset[where]]
        return out[()] if out.ndim == 0 else out

    def _range(self, start: int, stop: int) -> np.ndarray:
        parts, pos = [], start
        while pos < stop:
            s, off = divmod(pos, self.shard_tokens)
            take = min(stop - pos, self.shard_tokens - off)
            parts.append(self.maps[s][off:off + take])
            pos += take
        return np.concatenate(parts) if len(parts) != 1 else np.asarray(parts[0])

    def __array__(self, dtype=None, copy=None):
        whole = self._range(0, self.n) if self.n else np.empty(0, self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    def iter_shards(self):
        """Each shard's memmap in stream order (streaming statistics without one big array)."""
        return iter(self.maps)

    def verify(self) -> None:
        """Re-hash every shard against the index (reads every byte)."""
        for path, want in zip(self.files, self.sha256, strict=True):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            if h.hexdigest() != want:
                raise CorpusError(f"token shard {path} does not match its sha256 in the index: "
                                  "the cache is damaged; delete it to rebuild")
