"""Haystack, the peer written elsewhere (issue 16): its extractive QA pipeline on the same
corpus, questions and reader weights as shardqa.

haystack-ai 3.4.1 with transformers-haystack 2.0.0 (the optional extra ``shardqa[peer]``):
an ``InMemoryDocumentStore`` holding every passage shardqa ingests (the passage text as the
document; its title in the metadata), ``InMemoryBM25Retriever`` (its default BM25L, pure
Python over every document) taking the top k, and ``TransformersExtractiveReader`` on
shardqa's own bundled reader checkpoint in fp32 (it would load the stored fp16 otherwise),
2 torch threads, its best answer taken. Used as its documentation shows; nothing tuned.
Haystack's telemetry is switched off before it is imported, and nothing is downloaded: the
reader is a local folder, loaded with ``local_files_only``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time
from pathlib import Path

from gears.asker import normalize
from loaders.passages import Passage

#: the extra's packages: (distribution, module that must import)
PACKAGES = (("haystack-ai", "haystack"),
            ("transformers-haystack", "haystack_integrations.components.readers.transformers"))
INSTALL_HINT = "pip install 'shardqa[peer]' (make bench installs it)"


def missing() -> str | None:
    """Why the Haystack peer cannot run here (None: it can)."""
    for distribution, module in PACKAGES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{distribution} is not installed: {INSTALL_HINT}"
    return None


def versions() -> dict[str, str]:
    return {d: importlib.metadata.version(d) for d, _m in PACKAGES}


class HaystackQA:
    """A Haystack pipeline (BM25 retriever -> extractive reader) over ``passages``."""

    def __init__(self, checkpoint: Path, passages: list[Passage], *, threads: int = 2):
        os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"
        t0 = time.perf_counter()
        import torch
        from haystack import Document, Pipeline
        from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
        from haystack.document_stores.in_memory import InMemoryDocumentStore
        from haystack_integrations.components.readers.transformers import (
            TransformersExtractiveReader,
        )

        torch.set_num_threads(threads)
        store = InMemoryDocumentStore()
        store.write_documents([Document(id=p.pid, content=p.text, meta={"title": p.title})
                               for p in passages])
        reader = TransformersExtractiveReader(
            model=str(checkpoint), device=None, top_k=1, no_answer=False,
            model_kwargs={"dtype": torch.float32, "local_files_only": True})
        reader.warm_up()
        self.pipeline = Pipeline()
        self.pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store))
        self.pipeline.add_component("reader", reader)
        self.pipeline.connect("retriever.documents", "reader.documents")
        self.load_s = round(time.perf_counter() - t0, 2)

    def answer(self, question: str, k: int) -> tuple[float, str | None]:
        """(ms end to end: retrieve, read; the best answer's text)."""
        t0 = time.perf_counter()
        q = normalize(question)
        out = self.pipeline.run({"retriever": {"query": q, "top_k": k},
                                 "reader": {"query": q, "top_k": 1}})
        found = [a.data for a in out["reader"]["answers"] if a.data]
        return (time.perf_counter() - t0) * 1000, found[0] if found else None
