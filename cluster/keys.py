"""The key schema: every Redis key shardqa reads or writes is named here, and nowhere else.

Keys that belong to a partition carry the partition's hash tag, so that all of a
partition's state (passages, index, streams, model copy) lives in one slot on one master
and a Lua function can touch all of it in one call. Keys without a tag (the answer cache,
redis-cli answer keys) spread over the whole cluster by their own hash.
"""

from __future__ import annotations

import hashlib

PREFIX = "sq"

#: The documented prefix for redis-cli: ``GET "sq:qa:<question>"`` is answered by keymiss.
ASK_PREFIX = f"{PREFIX}:qa:"

#: Hash tag of cluster-wide metadata (partition map, corpus generation, worker heartbeats).
META_TAG = "sq"

#: Consumer group every shard worker joins on ingest and request streams.
WORKER_GROUP = "workers"


# --- cluster-wide metadata -------------------------------------------------------------

def partition_map() -> str:
    """JSON partition map: the one record of which hash tag each partition uses."""
    return f"{PREFIX}:{{{META_TAG}}}:partitions"


def generation() -> str:
    """Corpus generation counter; bumped whenever the indexed corpus changes."""
    return f"{PREFIX}:{{{META_TAG}}}:generation"


def generation_channel() -> str:
    """Pub/sub channel announcing a new generation (a hint; readers also poll)."""
    return f"{PREFIX}:generation"


def workers() -> str:
    """Hash worker id -> JSON heartbeat (master, partitions, time, counters)."""
    return f"{PREFIX}:{{{META_TAG}}}:workers"


def supervised() -> str:
    """Hash child name -> JSON (pid, restarts, last exit) of the local stack's supervisor."""
    return f"{PREFIX}:{{{META_TAG}}}:supervised"


# --- per-partition keys ----------------------------------------------------------------

def doc(tag: str, doc_key: str) -> str:
    """Hash describing one ingested document: id, digest, number of passages, source."""
    return f"{PREFIX}:{{{tag}}}:doc:{doc_key}"


def passage(tag: str, pid: str) -> str:
    """Hash of one passage: text, title, doc id, and its packed tokenization."""
    return f"{PREFIX}:{{{tag}}}:psg:{pid}"


def ingest_stream(tag: str) -> str:
    """Stream of passage puts/deletes for the shard worker to tokenize and index."""
    return f"{PREFIX}:{{{tag}}}:ingest"


def request_stream(tag: str) -> str:
    """Stream of read requests (question + passage ids) routed to this partition."""
    return f"{PREFIX}:{{{tag}}}:requests"


def dead_letters(tag: str) -> str:
    """Capped stream of ingest and request entries the shard worker could not handle."""
    return f"{PREFIX}:{{{tag}}}:dead"


def index_term(tag: str, term: str) -> str:
    """Sorted set of postings for one term: member passage id, score term frequency."""
    return f"{PREFIX}:{{{tag}}}:ix:t:{term}"


def index_term_prefix(tag: str) -> str:
    return f"{PREFIX}:{{{tag}}}:ix:t:"


def index_lengths(tag: str) -> str:
    """Hash passage id -> number of index terms (BM25 document length)."""
    return f"{PREFIX}:{{{tag}}}:ix:len"


def index_df(tag: str) -> str:
    """Hash term -> document frequency in this partition."""
    return f"{PREFIX}:{{{tag}}}:ix:df"


def index_stats(tag: str) -> str:
    """Hash with ``n`` (passages) and ``total`` (sum of lengths) for this partition."""
    return f"{PREFIX}:{{{tag}}}:ix:stats"


def index_windows(tag: str) -> str:
    """Hash passage id -> number of reader windows its stored tokenization has."""
    return f"{PREFIX}:{{{tag}}}:ix:wins"


def index_doc_terms(tag: str, pid: str) -> str:
    """The exact terms last indexed for a passage, so re-indexing can remove them first."""
    return f"{PREFIX}:{{{tag}}}:ix:doc:{pid}"


def vectors(tag: str) -> str:
    """Vector set (Redis 8) of this partition's passage embeddings: element = passage id.

    Under the partition's hash tag, so it moves with the partition and fails over with it.
    Every vector in it was made by the one encoder ``vector_meta`` names.
    """
    return f"{PREFIX}:{{{tag}}}:vs"


def vectors_next(tag: str) -> str:
    """The vector set a re-embed builds with a new encoder; renamed over ``vectors(tag)``
    (with ``vector_meta`` in the same transaction) once every passage is in it."""
    return f"{PREFIX}:{{{tag}}}:vs:next"


#: fields of ``vector_meta``
VECTOR_ENCODER, VECTOR_NEXT = "encoder", "next"


def vector_meta(tag: str) -> str:
    """Hash: ``encoder``, the encoder id (models.identity.model_id) that made every vector in
    ``vectors(tag)``; ``next``, the one a re-embed is building ``vectors_next(tag)`` with.

    Index metadata (under ``ix:``), so every user that may read the index may read it.
    """
    return f"{PREFIX}:{{{tag}}}:ix:vectors"


def model_current(tag: str, kind: str = "reader") -> str:
    """JSON pointer to the current model copy of a kind (reader, encoder) under this tag."""
    suffix = "" if kind == "reader" else f":{kind}"
    return f"{PREFIX}:{{{tag}}}:model:current{suffix}"


def model_meta(tag: str, name: str, version: str) -> str:
    return f"{PREFIX}:{{{tag}}}:model:{name}:{version}:meta"


def model_chunk(tag: str, name: str, version: str, index: int) -> str:
    return f"{PREFIX}:{{{tag}}}:model:{name}:{version}:chunk:{index}"


def model_prefix(tag: str) -> str:
    return f"{PREFIX}:{{{tag}}}:model:"


# --- the question path -----------------------------------------------------------------

def answer_cache(generation: int, k: int, normalized_question: str) -> str:
    """Answer cache entry; the generation in the key invalidates answers without a scan."""
    digest = hashlib.sha1(normalized_question.encode("utf-8")).hexdigest()
    return f"{PREFIX}:ans:{generation}:{k}:{digest}"


def ask_key(question: str) -> str:
    """The redis-cli answer key; a GET that misses it is answered by the owning worker."""
    return f"{ASK_PREFIX}{question}"


def reply_list(ask_id: str) -> str:
    """List the shard workers push their replies to; the asker BLPOPs it."""
    return f"{PREFIX}:reply:{{{ask_id}}}"


# --- the database of record (records/) -------------------------------------------------

#: Hash tag of the question-and-feedback log: one stream, one slot, its own master's load.
LOG_TAG = "log"

#: Consumer group of the write-behind job (``shardqa sync``) on the log stream.
SYNC_GROUP = "sync"


def log_stream() -> str:
    """Stream of answered questions and feedback, written by the API, drained into SQL."""
    return f"{PREFIX}:{{{LOG_TAG}}}:events"


def sql_source(source: str) -> str:
    """Hash document id -> version of the rows last ingested from one SQL source, so a
    re-run knows which rows are unchanged and which left the source."""
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:16]
    return f"{PREFIX}:{{src}}:sql:{digest}"
