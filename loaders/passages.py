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
    leaves a reasonable piece, else at the last whitespace, else hard."""
    pieces: list[str] = []
    rest = paragraph
    min_cut = max(1, max_chars // 3)  # a sentence cut before this leaves too small a piece
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cut = 0
        for match in _SENTENCE_END.finditer(window):
            if match.end() <= max_chars:
                cut = match.end()
        if cut < min_cut:
            spaces = [m.start() for m in _WHITESPACE.finditer(window) if m.start() > 0]
            cut = spaces[-1] if spaces else max_chars
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if piece:
            pieces.append(piece)
    if rest:
        pieces.append(rest)
    return pieces
