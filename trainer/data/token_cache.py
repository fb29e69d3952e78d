"""Writing one token cache: document split, byte-level BPE, token arrays, metadata.

Pure mechanics, no configuration object: `trainer.data.loader.load_corpus` decides *where* and *whether*
to build (cache key, lock, atomic rename) and calls `build_cache` on a fresh temp directory.

Cache layout (all written by `build_cache`):
    train.bin, val.bin   flat token ids (uint16, or uint32 above 65535 tokens); every document is
                         followed by `<|endoftext|>`, so #EOT == #documents in each split
    tokenizer.json       the HuggingFace `tokenizers` BPE
    documents.json       {"train": [[source, doc_id], ...], "val": [...]} in stream order
    meta.json            written last: inputs, per-source/per-split counts, dtype, build time
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.data.corpus import EOT_ID, EOT_TEXT, CorpusError, Document

log = logging.getLogger(__name__)

# Bump when the tokenizer recipe (pre-tokenizer, trainer options, stream layout) or the split rule
# changes: it enters the cache key.
TOKENIZER_RECIPE_VERSION = 1
# Salts of the two deterministic document orders (split choice, stream order).
_SPLIT_SALT = "split-v1"
_ORDER_SALT = "order-v1"
# Characters per encode_batch call: big enough to keep both cores busy, small enough that one
# call's results stay in the tens of MB.
_ENCODE_CHUNK_CHARS = 2_000_000


def _stable_hash(*parts: str) -> int:
    """Process-independent (unlike hash()) 64-bit hash."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def split_documents(
    docs: list[Document], val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """(train, val), split by whole documents, separately for every source.

    Within a source, documents are ordered by a stable hash of (source, doc_id) and moved to
    validation until they hold >= val_fraction of the source's characters; a source with >= 2
    documents gives at least one to each split, a single-document source goes to train. Per source,
    because sources differ wildly in granularity (66 Bible books vs 10k short articles): one global
    order would let a few huge documents decide the validation mix. Each split is then shuffled
    (seeded hash order) so the training stream interleaves sources.
    """
    by_source: dict[str, list[Document]] = {}
    for d in docs:
        by_source.setdefault(d.source, []).append(d)
    train, val = [], []
    for source, group in by_source.items():
        group = sorted(group, key=lambda d: _stable_hash(_SPLIT_SALT, source, d.doc_id))
        target = val_fraction * sum(len(d.text) for d in group)
        n_val, held = 0, 0
        while n_val < len(group) - 1 and held < target:  # leaves >= 1 document for training
            held += len(group[n_val].text)
            n_val += 1
        val += group[:n_val]
        train += group[n_val:]

    def order(d: Document) -> int:
        return _stable_hash(_ORDER_SALT, d.source, d.doc_id)

    return sorted(train, key=order), sorted(val, key=order)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): all 256 bytes are base tokens, so any text encodes and
    decodes exactly. `<|endoftext|>` is id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen in train or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tok.token_to_id(EOT_TEXT) != EOT_ID:                  # AR windows start from EOT_ID
        raise CorpusError(f"{EOT_TEXT} got id {tok.token_to_id(EOT_TEXT)}, not {EOT_ID}")
    return tok


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _chunks(docs: list[Document]) -> Iterator[tuple[int, int]]:
    start, chars = 0, 0
    for i, d in enumerate(docs):
        chars += len(d.text)
        if chars >= _ENCODE_CHUNK_CHARS or i == len(docs) - 1:
            yield start, i + 1
            start, chars = i + 1, 0


def _encode_to_file(
    tok: Tokenizer, docs: list[Document], path: Path, dtype: np.dtype, split: str
) -> list[int]:
    """Write `doc tokens, EOT` for each document; returns each document's token count (no EOT)."""
    eot = np.array([tok.token_to_id(EOT_TEXT)], dtype=dtype).tobytes()
    counts: list[int] = []
    with open(path, "wb") as f:
        for start, stop in _chunks(docs):
            # encode_batch_fast: parallel, and skips the offsets we do not need
            for enc in tok.encode_batch_fast(
                [d.text for d in docs[start:stop]], add_special_tokens=False
            ):
                f.write(np.asarray(enc.ids, dtype=dtype).tobytes())
                f.write(eot)
                counts.append(len(enc.ids))
            log.info(
                "  %s: encoded %d/%d documents, %d tokens", split, stop, len(docs), sum(counts)
            )
    return counts


def _split_stats(docs: list[Document], counts: list[int]) -> dict:
    """{"sources": {name: counts}, "total": counts + bytes_per_token + stream_tokens}."""
    stats: dict[str, dict[str, int]] = {}
    for d, n in zip(docs, counts, strict=True):
        s = stats.setdefault(d.source, {"documents": 0, "characters": 0, "bytes": 0, "tokens": 0})
        s["documents"] += 1
        s["characters"] += len(d.text)
        s["bytes"] += len(d.text.encode("utf-8"))
        s["tokens"] += n
    total: dict = {
        k: sum(s[k] for s in stats.values()) for k in ("documents", "characters", "bytes", "tokens")
    }
    # UTF-8 bytes per text token; the EOT separators encode no text and are left out.
    total["bytes_per_token"] = total["bytes"] / max(total["tokens"], 1)
    total["stream_tokens"] = total["tokens"] + total["documents"]  # array length, EOTs included
    return {"sources": stats, "total": total}


def build_cache(
    docs: list[Document], *, vocab_size: int, val_fraction: float, out: Path, meta_extra: dict
) -> dict:
    """Split, train the BPE on train, tokenise both splits into `out`; returns the meta dict.

    Raises CorpusError if validation would be empty. `meta_extra` (key, inputs, ...) is merged
    into meta.json.
    """
    t0 = time.perf_counter()
    train, val = split_documents(docs, val_fraction)
    if not val:
        sources = sorted({d.source for d in docs})
        raise CorpusError(
            f"validation split is empty: sources {sources} need >= 2 documents each "
            "(documents are never cut in two)"
        )
    log.info(
        "split: %d train / %d val documents; training BPE (vocab %d) on train",
        len(train),
        len(val),
        vocab_size,
    )
    tok = train_tokenizer([d.text for d in train], vocab_size)
    log.info(
        "tokenizer trained: %d tokens (%.1f s)", tok.get_vocab_size(), time.perf_counter() - t0
    )
    dtype = token_dtype(tok.get_vocab_size())
    splits = {}
    for split, split_docs in (("train", train), ("val", val)):
        counts = _encode_to_file(tok, split_docs, out / f"{split}.bin", dtype, split)
        splits[split] = _split_stats(split_docs, counts)
    tok.save(str(out / "tokenizer.json"))
    documents = {
        split: [[d.source, d.doc_id] for d in ds] for split, ds in (("train", train), ("val", val))
    }
    (out / "documents.json").write_text(json.dumps(documents))
    meta = {
        **meta_extra,
        "vocab_size": tok.get_vocab_size(),
        "eot_id": tok.token_to_id(EOT_TEXT),
        "dtype": dtype.name,
        "splits": splits,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the cache complete
    return meta
