"""What the bench reads and asks: SQuAD dev paragraphs and questions, Wikipedia distractors,
and synthetic corpora of distinct passages grown to a target size for rank at scale (rotated
copies of the summaries, or a natural vocabulary growth continuing them).

Questions come from the repository's ``data/squad/dev.json`` in a fixed shuffled order; each phase
takes its own slice, so no question is asked twice (every ask is a cache miss).
"""

from __future__ import annotations

import itertools
import math
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
_WORD = re.compile(r"\w+", re.UNICODE)


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


def rotated_copies(seeds: list[Document]) -> Iterator[Document]:
    """``seeds`` again and again (copy 0 = the originals, later copies rotated): every copy
    repeats the vocabulary, so each term's postings grow with the corpus."""
    copy = 0
    while True:
        for doc in seeds:
            yield _variant(doc, copy)
        copy += 1


def words(docs: list[Document]) -> list[str]:
    """Every word of ``docs``' text in order, stopwords included, case folded."""
    return [w for doc in docs for w in _WORD.findall(doc.text.casefold())]


def heaps_fit(tokens: list[str]) -> tuple[float, float]:
    """Heaps' law V = K * N**beta fitted (least squares in log-log) to the distinct words V
    seen after N tokens of ``tokens``, at N = len/64, len/32, ..., len."""
    points, seen, marks = [], set(), {len(tokens) >> s for s in range(7)} - {0}
    for n, token in enumerate(tokens, start=1):
        seen.add(token)
        if n in marks:
            points.append((math.log(n), math.log(len(seen))))
    if len(points) < 2:
        raise CorpusError("too few seed words to fit their vocabulary growth")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    beta = (sum((x - mx) * (y - my) for x, y in points) /
            sum((x - mx) ** 2 for x, _ in points))
    return math.exp(my - beta * mx), beta


def _fresh_word(n: int) -> str:
    """The ``n``-th invented word: letters only, never an English word ("qz" + base 26)."""
    letters = ""
    while True:
        n, digit = divmod(n, 26)
        letters = chr(ord("a") + digit) + letters
        if n == 0:
            return "qz" + letters


def natural_growth(seeds: list[Document], seed: int = 0) -> Iterator[Document]:
    """``seeds`` once, then synthetic one-passage documents that continue their vocabulary
    the way a real corpus grows (Simon's model): each word is, with the probability that
    Heaps' law fitted to the seeds gives at this length (dV/dN = K beta N**(beta-1)), a word
    never seen before; otherwise a copy of a uniformly drawn earlier word of the stream
    (seeds included), so every word keeps its share of the seeds' Zipf curve while new rare
    words keep appearing. Passage lengths cycle through the seeds' own. Deterministic."""
    tokens = words(seeds)
    lengths = [len(_WORD.findall(p.text)) for doc in seeds for p in split_passages(doc)]
    if not tokens or not lengths:
        raise CorpusError("no seed documents to grow the corpus from")
    scale, beta = heaps_fit(tokens)
    yield from seeds
    rng = random.Random(seed)
    fresh = 0
    for n in itertools.count():
        passage = []
        for _ in range(max(1, lengths[n % len(lengths)])):
            if rng.random() < scale * beta * len(tokens) ** (beta - 1):
                fresh += 1
                word = _fresh_word(fresh)
            else:
                word = tokens[rng.randrange(len(tokens))]
            tokens.append(word)
            passage.append(word)
        text = " ".join(passage) + "."
        yield Document(doc_id=f"natural:{n}", text=text, paragraphs=(text,),
                       source="bench-synthetic")


#: how the bench grows its corpus past the real documents: name -> seeds -> documents
GROWTHS = {"rotated": rotated_copies, "natural": natural_growth}


def synthetic_stages(base: list[Document], seeds: list[Document], targets: list[int],
                     growth: str = "rotated") -> Iterator[tuple[int, list[Document], int]]:
    """Grow a corpus to each target passage count: ``base`` first (the dev paragraphs), then
    the documents ``GROWTHS[growth]`` makes of ``seeds`` (both start with the originals).
    Yields (target, documents to add for this stage, passages in the corpus after it)."""
    if not seeds:
        raise CorpusError("no seed documents to grow the corpus from")
    total = 0
    pending = list(base)
    source = GROWTHS[growth](seeds)
    for target in sorted(targets):
        stage: list[Document] = []
        while total < target:
            doc = pending.pop(0) if pending else next(source)
            stage.append(doc)
            total += len(split_passages(doc))
        yield target, stage, total
