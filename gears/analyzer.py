"""The one analyzer of the ranking index, shared by indexing (worker) and querying (asker).

Lowercase (casefold), Unicode word split, English stopwords dropped, very long tokens cut.
Both sides must produce the same terms, so nothing else may tokenize text for BM25.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERM_CHARS = 40

STOPWORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before
being below between both but by can cannot could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in into is
it its itself just me more most my myself no nor not of off on once only or other ought our
ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
s t d ll m re ve y
""".split())


def terms(text: str) -> list[str]:
    """Index terms of ``text`` in order (repeats kept: they are term frequencies)."""
    return [word[:MAX_TERM_CHARS] for word in _WORD.findall(text.casefold())
            if word not in STOPWORDS and word.strip("_")]


def term_frequencies(text: str) -> Counter[str]:
    return Counter(terms(text))


def query_terms(question: str, limit: int = 32) -> list[str]:
    """Distinct terms of a question, first occurrence first, at most ``limit``."""
    seen: dict[str, None] = {}
    for term in terms(question):
        seen.setdefault(term, None)
        if len(seen) >= limit:
            break
    return list(seen)
