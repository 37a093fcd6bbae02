"""What the bench reads and asks: SQuAD dev paragraphs and questions, Wikipedia distractors,
and a synthetic corpus of distinct passages grown to a target size for rank at scale.

Questions come from the repository's ``data/squad/dev.json`` in a fixed shuffled order; each phase
takes its own slice, so no question is asked twice (every ask is a cache miss).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

from cluster.errors import ShardqaError
from loaders.documents import Document, read_documents, read_ovos_wiki
from loaders.passages import Passage, split_passages
from models.squad import SquadExample, read_squad
from shardqa import datasets

DEV = datasets.SQUAD_DEV
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class CorpusError(ShardqaError):
    """The bench's inputs are missing or unusable."""

    exit_code = 2


def dev_questions(path: Path = DEV, seed: int = 0) -> list[SquadExample]:
    """Every dev question (with its gold answers and paragraph), shuffled with ``seed``."""
    if not Path(path).is_file():
        raise CorpusError(f"{path} not found: pass --dev with a SQuAD v1.1 file")
    examples = read_squad(path)
    random.Random(seed).shuffle(examples)
    return examples


def dev_documents(path: Path = DEV) -> list[Document]:
    """The dev articles as documents, one passage per SQuAD paragraph."""
    return [d for d in read_documents([str(path)]) if isinstance(d, Document)]


def distractors(limit: int | None = None) -> list[Document]:
    """The ovos-wiki summaries (10,033 Wikipedia articles), the first ``limit`` of them."""
    try:
        docs = []
        for d in read_ovos_wiki():
            if isinstance(d, Document):
                docs.append(d)
                if limit is not None and len(docs) >= limit:
                    break
    except ShardqaError as exc:
        raise CorpusError(f"the distractor corpus is unavailable: {exc}") from None
    return docs


def passages(docs: list[Document]) -> list[Passage]:
    """The passages the loaders write for ``docs`` (same split, same ids): the corpus the
    in-process peers hold, so every system reads the same text."""
    return [p for doc in docs for p in split_passages(doc)]


class QuestionPool:
    """Hands out consecutive, never repeated slices of the shuffled dev questions."""

    def __init__(self, questions: list[SquadExample]):
        self.questions = questions
        self.next = 0

    def take(self, n: int) -> list[SquadExample]:
        if n > len(self.questions) - self.next:
            raise CorpusError(f"the bench needs more questions than dev has "
                              f"({len(self.questions)}); lower the counts")
        out = self.questions[self.next:self.next + n]
        self.next += n
        return out


def _variant(doc: Document, copy: int) -> Document:
    """Copy ``copy`` of a document: sentences rotated by ``copy`` (so passages differ in
    order and split points) under a distinct id."""
    if copy == 0:
        return doc
    sentences = _SENTENCE.split(doc.text.strip())
    shift = copy % max(1, len(sentences))
    text = " ".join(sentences[shift:] + sentences[:shift])
    return Document(doc_id=f"{doc.doc_id}~{copy}", text=text, title=doc.title,
                    source="bench-synthetic")


def synthetic_stages(base: list[Document], seeds: list[Document], targets: list[int]
                     ) -> Iterator[tuple[int, list[Document], int]]:
    """Grow a corpus to each target passage count: ``base`` first (the dev paragraphs), then
    copies of ``seeds`` (copy 0 = the originals, later copies rotated, ids distinct).
    Yields (target, documents to add for this stage, passages in the corpus after it)."""
    if not seeds:
        raise CorpusError("no seed documents to grow the corpus from")
    total = 0
    pending = list(base)

    def stream() -> Iterator[Document]:
        copy = 0
        while True:
            for doc in seeds:
                yield _variant(doc, copy)
            copy += 1

    source = stream()
    for target in sorted(targets):
        stage: list[Document] = []
        while total < target:
            doc = pending.pop(0) if pending else next(source)
            stage.append(doc)
            total += len(split_passages(doc))
        yield target, stage, total
