"""The two baselines shardqa is measured against, on the same candidates from the same rank.

* naive: what a user writes first. The eager Hugging Face model in the bench process (all
  cores), each candidate's text fetched and tokenized at question time, padded to max
  length, one (question, window) pair per forward pass, our span decoding.
* the-pattern style: the old RedisAI/RedisGears demo's shape. One read request per
  candidate through the shard protocol (the same workers and TorchScript reader as
  shardqa), sent one after the other, each waited for before the next; no batching, no
  cache read or write.

Both include ranking and fetching, like shardqa's end-to-end figure, and run in the bench
process (no HTTP), which if anything favours them. For throughput they are called from
several threads at once.
"""

from __future__ import annotations

import threading
import time
import uuid

import torch

from cluster import keys
from cluster.partitions import PartitionMap
from gears import ranking
from gears.asker import NoReply, normalize
from gears.protocol import ReadReply, ReadRequest, now_ms
from models.decoding import best_span
from models.tokenization import DEFAULT_STRIDE


class NaiveBaseline:
    """Eager Hugging Face QA, one padded pair at a time."""

    def __init__(self, source: str, *, max_seq_len: int = 384, stride: int = DEFAULT_STRIDE,
                 max_answer_tokens: int = 30, threads: int | None = None):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)  # the same random QA head as the export of an untrained encoder
        self.model = AutoModelForQuestionAnswering.from_pretrained(
            source, local_files_only=True, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        self.max_seq_len = max_seq_len
        self.stride = stride
        self.max_answer_tokens = max_answer_tokens
        # a Hugging Face fast tokenizer sets truncation and padding on its Rust object at
        # every call: two threads at once fail with "Already borrowed"
        self._tokenizing = threading.Lock()

    def read(self, question: str, text: str) -> tuple[str, float] | None:
        """Best (answer, score) in one passage, window by window."""
        with self._tokenizing:
            enc = self.tokenizer(question, text, truncation="only_second",
                                 max_length=self.max_seq_len, stride=self.stride,
                                 return_overflowing_tokens=True, return_offsets_mapping=True,
                                 padding="max_length", return_tensors="pt")
        best = None
        for w in range(enc["input_ids"].shape[0]):
            with torch.no_grad():
                out = self.model(input_ids=enc["input_ids"][w:w + 1],
                                 attention_mask=enc["attention_mask"][w:w + 1],
                                 token_type_ids=enc["token_type_ids"][w:w + 1])
            seq = enc.sequence_ids(w)
            context = [i for i, s in enumerate(seq) if s == 1]
            if not context:
                continue
            found = best_span(out.start_logits[0].numpy(), out.end_logits[0].numpy(),
                              context[0], context[-1] + 1, self.max_answer_tokens)
            if found is None:
                continue
            i, j, score = found
            offsets = enc["offset_mapping"][w]
            lo, hi = int(offsets[i][0]), int(offsets[j][1])
            if best is None or score > best[1]:
                best = (text[lo:hi], score)
        return best

    def answer(self, client, pmap: PartitionMap, question: str, k: int
               ) -> tuple[float, str | None]:
        """(ms end to end: rank, fetch, tokenize, read; answer text)."""
        t0 = time.perf_counter()
        q = normalize(question)
        best = None
        for r in ranking.rank(client, pmap, q, k):
            raw = client.hget(keys.passage(pmap.for_passage(r.pid).tag, r.pid), "text")
            if raw is None:
                continue
            found = self.read(q, raw.decode("utf-8"))
            if found is not None and (best is None or found[1] > best[1]):
                best = found
        return (time.perf_counter() - t0) * 1000, None if best is None else best[0]


def pattern_answer(client, pmap: PartitionMap, question: str, k: int,
                   timeout_s: float = 30.0) -> tuple[float, str | None]:
    """the-pattern style: rank, then one single-passage read request per candidate, each
    sent and waited for in turn. (ms end to end, answer text)."""
    t0 = time.perf_counter()
    q = normalize(question)
    best: tuple[float, str] | None = None
    for r in ranking.rank(client, pmap, q, k):
        ask_id = uuid.uuid4().hex[:16]
        reply_to = keys.reply_list(ask_id)
        request = ReadRequest(ask_id, r.partition, q, [r.pid], reply_to,
                              now_ms() + int(timeout_s * 1000))
        client.xadd(keys.request_stream(pmap[r.partition].tag), request.fields())
        got = client.blpop([reply_to], timeout=timeout_s)
        client.delete(reply_to)
        if got is None:
            raise NoReply(f"the-pattern baseline: no reply for {r.pid} within {timeout_s:g}s")
        reply = ReadReply.from_json(got[1])
        if reply.error:
            raise NoReply(f"the-pattern baseline: {reply.error}")
        for span in reply.spans:
            if best is None or span.score > best[0]:
                best = (span.score, span.text)
    return (time.perf_counter() - t0) * 1000, None if best is None else best[1]
