"""The corpus's tokenizer: a byte-level BPE trained on the corpus, or a file the user brings.

One small interface, `TextTokenizer`, so the cache builder never branches on where the tokenizer came
from. Kinds (the `kind` field, also the key of `meta.json`'s tokenizer entry):

| kind            | from                                               | class                    |
|-----------------|----------------------------------------------------|--------------------------|
| `bpe`           | `train_bpe` on the corpus's training split         | `HFTokenizer`            |
| `hf`            | a HuggingFace `tokenizer.json` (or its folder)     | `HFTokenizer`            |
| `gpt2`          | GPT-2's `encoder.json` + `vocab.bpe` (OpenAI form) | `HFTokenizer`            |
| `sentencepiece` | a SentencePiece `.model`                           | `SentencePieceTokenizer` |

Nothing is downloaded: a user file is read from disk. A tokenizer holds its serialized form (a str or
bytes), not the backend object, so it pickles cheaply to Ray workers; the backend is built on first use
in each process. `save` copies that form into the cache directory, so a cache stays usable after the
user's file moves; `open_saved` reads it back.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.data.corpus import EOT_ID, EOT_TEXT, CorpusError

# Document separators looked for, in order, when the user's file is given without data.eot_token.
EOT_CANDIDATES = (EOT_TEXT, "</s>", "<eos>", "<|end_of_text|>")
# File names inside a cache directory (and the role names of a user's files in the cache key).
HF_FILE = "tokenizer.json"
SP_FILE = "tokenizer.model"
GPT2_VOCAB, GPT2_MERGES = "encoder.json", "vocab.bpe"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextTokenizer(abc.ABC):
    """Texts <-> token ids, plus what the token stream needs: the vocabulary size and the separator."""

    kind: str
    """Registry name: "bpe", "hf", "gpt2" or "sentencepiece"."""
    vocab_size: int
    """Number of ids (max id + 1): the model's vocabulary."""
    eot_id: int
    """Document separator id: every document in the token stream is followed by it."""
    eot_token: str
    """The separator's text (a token of the vocabulary)."""

    @abc.abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, no special tokens added (no BOS/EOS); parallel where the backend is."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens (the separator included) kept as text."""

    @abc.abstractmethod
    def save(self, directory: Path) -> dict:
        """Write the files `open_saved` needs into `directory`; returns the JSON-able meta dict."""

    def _meta(self) -> dict:  # vocab_size and eot_id: open_saved checks them
        return {f: getattr(self, f) for f in ("kind", "eot_token", "vocab_size", "eot_id")}

    def __getstate__(self) -> dict:
        # the fields only: the lazily built backend (a cached_property in __dict__) is rebuilt
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFTokenizer(TextTokenizer):
    """A HuggingFace `tokenizers` tokenizer (kinds bpe, hf, gpt2), held as its tokenizer.json text."""

    tokenizer_json: str = dataclasses.field(repr=False)
    """`Tokenizer.to_str()`: what travels to Ray workers; each rebuilds the backend from it."""

    @functools.cached_property
    def _backend(self) -> Any:
        return Tokenizer.from_str(self.tokenizer_json)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast: parallel (Rust threads), and skips the offsets we do not need
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path) -> dict:
        (Path(directory) / HF_FILE).write_text(self.tokenizer_json, encoding="utf-8")
        return self._meta()


@dataclasses.dataclass(frozen=True, kw_only=True)
class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model, held as its serialized model proto."""

    model: bytes = dataclasses.field(repr=False)
    """`SentencePieceProcessor.serialized_model_proto()`."""

    @functools.cached_property
    def _backend(self) -> Any:
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_proto=self.model)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._backend.encode(texts)  # no bos/eos unless asked; C++ batch

    def decode(self, ids: Sequence[int]) -> str:
        # SentencePiece drops control pieces (eos) when decoding; decode the documents between
        # separators one by one (each was encoded alone, with its own dummy prefix) and put the
        # separator's text back, as the HF kinds show it.
        docs, cur = [], []
        for i in ids:
            if i == self.eot_id:
                docs.append(cur)
                cur = []
            else:
                cur.append(int(i))
        return self.eot_token.join(self._backend.decode(d) for d in docs + [cur])

    def save(self, directory: Path) -> dict:
        (Path(directory) / SP_FILE).write_bytes(self.model)
        return self._meta()


# --- Trained here ---


def train_bpe(texts: Iterable[str] | list[str], vocab_size: int) -> TextTokenizer:
    """Byte-level BPE (GPT-2 style): all 256 bytes are base tokens, so any text encodes and
    decodes exactly. `<|endoftext|>` is id 0. Same recipe, hence same ids, as the cache used before
    user tokenizers existed (frozen in tests/test_tokenizer.py): changing it must bump
    TOKENIZER_RECIPE_VERSION."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen in train or not
        show_progress=False,
    )
    length = len(texts) if hasattr(texts, "__len__") else None  # only for progress
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    if tok.token_to_id(EOT_TEXT) != EOT_ID:                  # AR windows start from EOT_ID
        raise CorpusError(f"{EOT_TEXT} got id {tok.token_to_id(EOT_TEXT)}, not {EOT_ID}")
    return _hf("bpe", tok, EOT_TEXT, "the trained BPE")


# --- Brought by the user: a registry of file kinds ---


def _hf(kind: str, tok: Any, eot_token: str | None, where: str) -> HFTokenizer:
    vocab = tok.get_vocab(with_added_tokens=True)
    eot = _pick_eot(eot_token, lambda t: t in vocab, where)
    size = max(tok.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1)
    return HFTokenizer(kind=kind, vocab_size=size, eot_id=vocab[eot], eot_token=eot,
                        tokenizer_json=tok.to_str())


def _sp(model: bytes, eot_token: str | None, where: str) -> SentencePieceTokenizer:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    size = sp.get_piece_size()
    has = lambda t: sp.id_to_piece(sp.piece_to_id(t)) == t  # unknown pieces map to unk's id
    fallback = sp.id_to_piece(sp.eos_id()) if sp.eos_id() >= 0 else None
    eot = _pick_eot(eot_token, has, where, fallback)
    return SentencePieceTokenizer(kind="sentencepiece", vocab_size=size, eot_id=sp.piece_to_id(eot),
                                  eot_token=eot, model=model)


def _pick_eot(eot_token: str | None, has: Callable[[str], bool], where: str,
              fallback: str | None = None) -> str:
    if eot_token is not None:
        if not has(eot_token):
            raise CorpusError(f"data.eot_token = {eot_token!r} is not in the vocabulary of {where}")
        return eot_token
    for t in EOT_CANDIDATES + ((fallback,) if fallback else ()):
        if has(t):
            return t
    raise CorpusError(f"{where} has none of the separators {EOT_CANDIDATES} (nor an eos id): "
                      "set data.eot_token to the token that ends a document")


def _load_hf_file(files: dict[str, Path], eot_token: str | None, where: str) -> TextTokenizer:
    return _hf("hf", Tokenizer.from_file(str(files[HF_FILE])), eot_token, where)


def _load_gpt2(files: dict[str, Path], eot_token: str | None, where: str) -> TextTokenizer:
    """GPT-2's byte-level BPE as OpenAI published it, rebuilt with `tokenizers` the way HF's gpt2
    tokenizer.json is: GPT-2's split regex + byte-to-unicode map (ByteLevel), ranked merges."""
    vocab = json.loads(files[GPT2_VOCAB].read_text(encoding="utf-8"))
    lines = files[GPT2_MERGES].read_text(encoding="utf-8").split("\n")
    # byte-level tokens hold no whitespace (a space is "Ġ"), so split() is exact and eats a "\r"
    merges = [tuple(ln.split()) for ln in lines if ln.strip() and not ln.startswith("#version")]
    if not all(len(m) == 2 for m in merges):
        raise ValueError(f"{files[GPT2_MERGES]} has a line that is not one merge 'a b'")
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t in EOT_CANDIDATES if t in vocab])  # never split in the text
    return _hf("gpt2", tok, eot_token, where)


def _load_sp_file(files: dict[str, Path], eot_token: str | None, where: str) -> TextTokenizer:
    return _sp(files[SP_FILE].read_bytes(), eot_token, where)


def _gpt2_files(p: Path) -> dict[str, Path] | None:
    folder = p if p.is_dir() else p.parent if p.name == GPT2_VOCAB else None
    if folder and (folder / GPT2_VOCAB).is_file() and (folder / GPT2_MERGES).is_file():
        return {GPT2_VOCAB: folder / GPT2_VOCAB, GPT2_MERGES: folder / GPT2_MERGES}
    return None


def _hf_files(p: Path) -> dict[str, Path] | None:  # a *.json, or a model folder holding tokenizer.json
    found = p if p.is_file() and p.suffix == ".json" else p / HF_FILE
    return {HF_FILE: found} if found.is_file() else None


def _sp_files(p: Path) -> dict[str, Path] | None:
    return {SP_FILE: p} if p.is_file() and p.suffix == ".model" else None


@dataclasses.dataclass(frozen=True)
class _FileKind:
    """A kind of user file: which paths it claims (its files by role name, or None) and its loader."""

    kind: str
    files: Callable[[Path], dict[str, Path] | None]
    load: Callable[[dict[str, Path], str | None, str], TextTokenizer]


# Order matters: GPT-2's encoder.json is also a *.json.
FILE_KINDS = (
    _FileKind("gpt2", _gpt2_files, _load_gpt2),
    _FileKind("hf", _hf_files, _load_hf_file),
    _FileKind("sentencepiece", _sp_files, _load_sp_file),
)


def _resolve(path: str) -> tuple[_FileKind, dict[str, Path]]:
    p = Path(path).expanduser()
    if not p.exists():
        raise CorpusError(f"data.tokenizer = {path!r}: no such file or directory")
    for fk in FILE_KINDS:
        if (files := fk.files(p)) is not None:
            return fk, files
    raise CorpusError(
        f"data.tokenizer = {path!r}: not a tokenizer file this trainer reads (a HuggingFace *.json, "
        f"GPT-2's {GPT2_VOCAB} + {GPT2_MERGES} (their folder or {GPT2_VOCAB}), a SentencePiece *.model)")


def load_tokenizer_file(path: str, eot_token: str | None = None) -> TextTokenizer:
    """The user's tokenizer file, read from disk (nothing is downloaded). `eot_token` = data.eot_token:
    the token ending each document; None -> the first of EOT_CANDIDATES the vocabulary has (then a
    SentencePiece model's eos)."""
    fk, files = _resolve(path)
    where = f"data.tokenizer = {path!r}"
    try:
        return fk.load(files, eot_token, where)
    except CorpusError:
        raise
    except Exception as e:  # the backends raise bare Exception / RuntimeError / OSError on bad files
        raise CorpusError(f"{where}: cannot read it as a {fk.kind} tokenizer: {e}") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_file_inputs(path: str, eot_token: str | None) -> dict:
    """What the cache key needs of a user tokenizer: its kind and content hashes by role name (not by
    path, so a copy elsewhere keys the same cache), and the separator asked for. Builds nothing."""
    fk, files = _resolve(path)
    return {"kind": fk.kind, "files": {name: _sha256(p) for name, p in sorted(files.items())},
            "eot_token": eot_token}


# --- Reopening a cache's copy ---


def _open_hf(directory: Path, meta: dict) -> TextTokenizer:
    return _hf(meta["kind"], Tokenizer.from_file(str(directory / HF_FILE)), meta["eot_token"],
               f"the cache's {directory / HF_FILE}")


def _open_sp(directory: Path, meta: dict) -> TextTokenizer:
    path = directory / SP_FILE
    return _sp(path.read_bytes(), meta["eot_token"], f"the cache's {path}")


SAVED_KINDS: dict[str, Callable[[Path, dict], TextTokenizer]] = {
    "bpe": _open_hf, "hf": _open_hf, "gpt2": _open_hf, "sentencepiece": _open_sp,
}


def open_saved(directory: Path, meta: dict) -> TextTokenizer:
    """The tokenizer `save` wrote into `directory` (with `meta`, what it returned)."""
    directory = Path(directory)
    opener = SAVED_KINDS.get(meta.get("kind"))
    if opener is None:
        raise CorpusError(f"{directory}: tokenizer kind {meta.get('kind')!r} is not one of "
                          f"{sorted(SAVED_KINDS)}")
    try:
        tok = opener(directory, meta)
    except CorpusError:
        raise
    except Exception as e:
        raise CorpusError(f"{directory}: cannot reopen its {meta['kind']} tokenizer: {e}") from e
    for field in ("vocab_size", "eot_id"):
        if field in meta and meta[field] != getattr(tok, field):
            raise CorpusError(f"{directory}: the saved tokenizer has {field} {getattr(tok, field)}, "
                              f"its meta says {meta[field]}")
    return tok


def file_vocab_size(path: str, eot_token: str | None = None) -> int:
    """The vocabulary size of a user tokenizer file (DataConfig.vocab_size follows it); cached per
    (path, size, mtime), since configs are built and replaced many times per sweep."""
    try:
        st = Path(path).stat()
    except OSError:
        return load_tokenizer_file(path, eot_token).vocab_size  # raises the CorpusError naming it
    return _file_vocab_size(str(path), eot_token, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_vocab_size(path: str, eot_token: str | None, size: int, mtime_ns: int) -> int:
    return load_tokenizer_file(path, eot_token).vocab_size
