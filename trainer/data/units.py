"""Units of input: the pieces a corpus build reads independently, and the readers that stream them.

A corpus is planned (`plan_units`) as a list of small frozen `Unit`s before anything is read:

| kind       | one unit is                                   | documents                         |
|------------|-----------------------------------------------|-----------------------------------|
| `packaged` | one registered source (trainer.data.corpus)   | the loader's documents            |
| `text`     | a batch of .txt/.md files (<= 32 MB, <= 1024) | one per file, id = relative path  |
| `parquet`  | one row group of one parquet file             | one per non-empty row of the text |
|            |                                               | column, id = row index in the file|

`read_unit` streams a unit's cleaned documents; peak memory is one unit (one row group, one batch of
files), never the corpus. Units are plain data, so the same list is read in this process
(`trainer.data.pipeline` "local") or shipped to Ray Data workers ("ray"); planning reads only file
names, sizes and parquet footers, so a bad path, an unreadable parquet file or a missing text column
fails with a CorpusError naming it before any document is read.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from trainer.data.corpus import CorpusError, Document, load_source, normalize_whitespace

TEXT_SUFFIXES = (".txt", ".md")
PARQUET_SUFFIX = ".parquet"
TEXT_UNIT_BYTES = 32 << 20          # files per text unit: up to this many bytes ...
TEXT_UNIT_FILES = 1024              # ... or this many files


@dataclasses.dataclass(frozen=True, kw_only=True)
class Unit:
    kind: str
    """Reader name in READERS."""
    source: str
    """Source the documents belong to: a packaged source's name, or the user path as given."""
    path: str = ""
    """parquet: the file; text: the root the files are relative to (a directory, or the file)."""
    files: tuple[str, ...] = ()
    """text: files relative to `path` ('' for a single-file path)."""
    row_group: int = -1
    """parquet: row group index."""
    row_offset: int = 0
    """parquet: index (in the file) of the row group's first row."""
    id_prefix: str = ""
    """parquet inside a directory: the file's relative path + '#', so row ids stay unique."""
    text_column: str = "text"
    size: int = 0
    """Bytes on disk (parquet: the row group's uncompressed size): a hint for scheduling."""

    def as_row(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> Unit:
        return cls(**{**row, "files": tuple(row["files"])})


def user_files(path: str | Path) -> list[Path]:
    """The files a user path stands for: itself, or every .txt/.md/.parquet under a directory."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"user path {str(path)!r} does not exist")
    suffixes = (*TEXT_SUFFIXES, PARQUET_SUFFIX)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
    if p.suffix.lower() not in suffixes:
        raise CorpusError(
            f"user path {str(path)!r}: unsupported file type; use .txt, .md, .parquet or a dir"
        )
    return [p]


def _parquet_units(f: Path, source: str, prefix: str, column: str) -> list[Unit]:
    import pyarrow.parquet as pq  # lazy: only user parquet files need pyarrow

    try:
        meta = pq.ParquetFile(f).metadata
        names = meta.schema.to_arrow_schema().names
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise CorpusError(f"cannot read parquet file {str(f)!r} ({exc})") from exc
    if column not in names:
        raise CorpusError(f"parquet file {str(f)!r} has no text column {column!r} "
                          f"(columns: {', '.join(names)}); set data.text_column")
    units, offset = [], 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        units.append(Unit(kind="parquet", source=source, path=str(f), row_group=g, row_offset=offset,
                          id_prefix=prefix, text_column=column, size=rg.total_byte_size))
        offset += rg.num_rows
    return units


def plan_units(sources: tuple[str, ...], paths: tuple[str, ...], text_column: str) -> list[Unit]:
    """Every unit of the corpus, in a fixed order (sources, then files sorted by relative path)."""
    if not paths:
        return [Unit(kind="packaged", source=s) for s in sources]
    units: list[Unit] = []
    for path in paths:
        root, files = Path(path), user_files(path)
        batch: list[str] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes
            if batch:
                units.append(Unit(kind="text", source=path, path=str(root), files=tuple(batch),
                                  size=batch_bytes))
            batch, batch_bytes = [], 0

        for f in files:
            rel = f.relative_to(root).as_posix() if root.is_dir() else ""
            if f.suffix.lower() == PARQUET_SUFFIX:
                flush()
                units += _parquet_units(f, path, f"{rel}#" if rel else "", text_column)
                continue
            size = f.stat().st_size
            if batch and (batch_bytes + size > TEXT_UNIT_BYTES or len(batch) >= TEXT_UNIT_FILES):
                flush()
            batch.append(rel)
            batch_bytes += size
        flush()
        if not any(u.source == path for u in units):
            raise CorpusError(f"user path {path!r} yielded no documents: it holds no .txt, .md or "
                              ".parquet files")
    return units


# ---------------------------------------------------------------------------------------------
# Readers: one per kind.


def _read_packaged(unit: Unit) -> Iterator[Document]:
    yield from load_source(unit.source)


def _read_text(unit: Unit) -> Iterator[Document]:
    root = Path(unit.path)
    for rel in unit.files:
        f = root / rel if rel else root
        try:
            raw = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CorpusError(f"user path {unit.source!r}: cannot read {f} ({exc})") from exc
        text = normalize_whitespace(raw)
        if not text:
            raise CorpusError(f"user file {str(f)!r} is empty")
        yield Document(source=unit.source, doc_id=rel or f.name, text=text)


def _read_parquet(unit: Unit) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        column = pq.ParquetFile(unit.path).read_row_group(
            unit.row_group, columns=[unit.text_column]).column(0)
    except Exception as exc:
        raise CorpusError(f"cannot read parquet file {unit.path!r}, row group {unit.row_group} "
                          f"({type(exc).__name__}: {exc})") from exc
    for i, value in enumerate(column.to_pylist()):
        row = unit.row_offset + i
        if value is not None and not isinstance(value, str):
            raise CorpusError(f"parquet file {unit.path!r}: column {unit.text_column!r} is not text "
                              f"(row {row}: {type(value).__name__})")
        text = normalize_whitespace(value or "")
        if text:  # empty rows are skipped: a table often has a few
            yield Document(source=unit.source, doc_id=f"{unit.id_prefix}{row}", text=text)


READERS: dict[str, Callable[[Unit], Iterator[Document]]] = {
    "packaged": _read_packaged,
    "text": _read_text,
    "parquet": _read_parquet,
}


def read_unit(unit: Unit) -> Iterator[Document]:
    """The unit's cleaned documents, streamed."""
    return READERS[unit.kind](unit)
