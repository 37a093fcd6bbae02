"""Splitting documents into passages: the unit that is tokenized, indexed and read.

Passages follow the document's paragraphs (blank-line separated): tiny paragraphs (headings,
one-liners) are merged into a neighbour, and no passage grows past about ``MAX_CHARS`` (a
long paragraph is cut at a sentence end, else at whitespace). The split is deterministic, so
a passage's position, and with it its id, is stable for the same text. SQuAD contexts are
already passages and are kept exactly as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cluster.partitions import passage_id
from loaders.documents import Document

MAX_CHARS = 1200
#: A paragraph shorter than this is merged into its neighbour when they fit together.
MIN_CHARS = 200

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002][\"'\u201d\u2019)\]]*(?=\s)")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Passage:
    pid: str
    doc_id: str
    position: int
    title: str
    text: str


def split_passages(doc: Document) -> list[Passage]:
    """The document's passages in order; position i has id ``passage_id(doc_id, i)``."""
    if doc.paragraphs is not None:
        texts = list(doc.paragraphs)
    else:
        texts = split_text(doc.text)
    return [Passage(passage_id(doc.doc_id, i), doc.doc_id, i, doc.title, text)
            for i, text in enumerate(texts)]


def split_text(text: str, max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS) -> list[str]:
    """Paragraphs, long ones cut, tiny ones merged; every piece non-empty and stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if paragraph:
            pieces.extend(cut_long(paragraph, max_chars))
    passages: list[str] = []
    for piece in pieces:
        if passages and _mergeable(passages[-1], piece, max_chars, min_chars):
            passages[-1] = f"{passages[-1]}\n\n{piece}"
        else:
            passages.append(piece)
    return passages


def _mergeable(previous: str, piece: str, max_chars: int, min_chars: int) -> bool:
    small = len(previous) < min_chars or len(piece) < min_chars
    return small and len(previous) + 2 + len(piece) <= max_chars


def cut_long(paragraph: str, max_chars: int = MAX_CHARS) -> list[str]:
    """Cut a paragraph into pieces of at most ``max_chars``: at the last sentence end that
    leaves a reasonable piece, else at the last whitespace, else hard.

    Linear in the paragraph's length: each cut looks only at the next ``max_chars + 1``
    characters (by position, never by copying the rest of the text)."""
    pieces: list[str] = []
    start, end = 0, len(paragraph)
    min_cut = max(1, max_chars // 3)  # a sentence cut before this leaves too small a piece
    while end - start > max_chars:
        cut = _cut_point(paragraph, start, max_chars, min_cut)
        piece = paragraph[start:start + cut].rstrip()
        if piece:
            pieces.append(piece)
        start += cut
        blank = _WHITESPACE.match(paragraph, start)
        if blank:
            start = blank.end()
    if start < end:
        pieces.append(paragraph[start:])
    return pieces


def _cut_point(text: str, start: int, max_chars: int, min_cut: int) -> int:
    """Length of the next piece of ``text`` from ``start`` (which has more than
    ``max_chars`` characters left)."""
    stop = start + max_chars + 1  # the window: the same view a slice of it would give
    cut = 0
    for match in _SENTENCE_END.finditer(text, start, stop):
        if match.end() - start <= max_chars:
            cut = match.end() - start
    if cut < min_cut:
        spaces = [m.start() - start for m in _WHITESPACE.finditer(text, start, stop)
                  if m.start() > start]
        cut = spaces[-1] if spaces else max_chars
    return cut
