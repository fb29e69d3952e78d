"""`DataConfig`: which text, which tokenizer, where the cache lives and how it is built.

`trainer.data.loader.load_corpus(cfg)` turns it into a `Corpus`; `science()` is its part of the run id.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from core.paths import REPO_ROOT
from trainer.data.corpus import check_source_name
from trainer.data.tokenizer import file_vocab_size

BUILDS = ("auto", "local", "ray")
"""Executors of the build (trainer.data.pipeline.EXECUTORS, plus 'auto')."""


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
    """BPE vocabulary size including `<|endoftext|>`; >= 257 (256 bytes + end-of-text). When
    `tokenizer` names a file it is set to the file's size (whatever was given)."""
    tokenizer: str = "bpe"
    """"bpe": train a byte-level BPE of `vocab_size` on the train split. Otherwise the path of the
    user's tokenizer: a HuggingFace `tokenizer.json`, a SentencePiece `.model` (e.g. TinyLlama's, as
    2602.15014 uses), or a GPT-2 `encoder.json` (with `vocab.bpe` beside it) or their directory.
    Nothing is downloaded; the cache keeps its own copy."""
    eot_token: str | None = None
    """Document separator of a user tokenizer; None -> `<|endoftext|>`, `</s>`, `<eos>` or
    `<|end_of_text|>`, whichever the vocabulary has (SentencePiece: its eos id)."""
    tokenizer_sample_chars: int = 64_000_000
    """Characters of training text the BPE is trained on: all of it when it fits (the packaged
    corpus has ~26M), else the training documents of the lowest order hashes holding about this
    much. Bounds the build's memory; enters the cache key."""
    shard_tokens: int = 1 << 26
    """Tokens per shard file (64M: 128 MB at uint16). Layout only: not part of the cache key."""
    build: str = "auto"
    """Where the passes run: "local" (this process), "ray" (Ray Data on the current Ray session,
    RAY_ADDRESS's cluster, or an embedded one on loopback), "auto" (ray when in a Ray session or
    RAY_ADDRESS is set, else local). The tokens are the same whichever runs them."""
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
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ValueError(f"tokenizer must be 'bpe' or a file path, got {self.tokenizer!r}")
        if self.tokenizer != "bpe":  # the vocabulary follows the file (CorpusError names it)
            object.__setattr__(self, "vocab_size", file_vocab_size(self.tokenizer, self.eot_token))
        if not isinstance(self.vocab_size, int) or not 257 <= self.vocab_size < 2**32:
            raise ValueError(f"vocab_size must be an int in [257, 2**32), got {self.vocab_size!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if self.eot_token is not None and (not isinstance(self.eot_token, str) or not self.eot_token):
            raise ValueError(f"eot_token must be None or a non-empty string, got {self.eot_token!r}")
        for name in ("tokenizer_sample_chars", "shard_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.build not in BUILDS:
            raise ValueError(f"build must be one of {', '.join(BUILDS)}, got {self.build!r}")

    def science(self) -> dict:
        """The fields that change the tokens (RunConfig.science, the run id): not where the cache
        lives or how it is built and laid out; the tokenizer fields only where they differ from their
        defaults, so runs from before user tokenizers keep their ids."""
        d = dataclasses.asdict(self)
        for name in ("cache_dir", "shard_tokens", "build"):
            del d[name]
        for f in dataclasses.fields(self):
            if f.name in ("tokenizer", "eot_token", "tokenizer_sample_chars") and d[f.name] == f.default:
                del d[f.name]
        return d

    def source_names(self) -> tuple[str, ...]:
        """The corpus's sources: the user paths if any, else the packaged sources."""
        return self.paths if self.paths else self.sources

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(os.environ.get("DLM_CACHE_DIR") or REPO_ROOT / ".cache" / "corpus")


