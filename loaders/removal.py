"""Taking whole documents out of the corpus (a synced source lost them).

Per partition, one MULTI/EXEC drops the document's hash and announces a ``del`` on the
ingest stream for every passage it had; the shard worker then unindexes and deletes those
passages, as it does for the positions a shrunken document no longer has (loaders.writer).
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster import keys, partitions, routing
from cluster.partitions import doc_key
from loaders.writer import ensure_groups


def delete_documents(client, doc_ids: Iterable[str]) -> tuple[int, int]:
    """Remove the documents; returns (documents removed, passages announced deleted).
    Ids the corpus does not hold are ignored."""
    pmap = partitions.load(client)
    ensure_groups(client, pmap)
    by_tag: dict[str, list[str]] = {}
    for doc_id in doc_ids:
        by_tag.setdefault(pmap.for_doc_key(doc_key(doc_id)).tag, []).append(doc_id)
    documents = passages = 0
    for tag, ids in by_tag.items():
        removed, deleted = _delete_in_partition(client, tag, ids)
        documents += removed
        passages += deleted
    return documents, passages


def _delete_in_partition(client, tag: str, doc_ids: list[str]) -> tuple[int, int]:
    def read(pipe) -> list:
        for doc_id in doc_ids:
            pipe.hget(keys.doc(tag, doc_key(doc_id)), "passages")
        return pipe.execute()

    counts = routing.run_on_owner(client, keys.ingest_stream(tag), read, transaction=False)
    held = [(doc_id, int(n)) for doc_id, n in zip(doc_ids, counts, strict=True)
            if n is not None]
    if not held:
        return 0, 0

    def write(pipe) -> int:
        stream = keys.ingest_stream(tag)
        for doc_id, count in held:
            for position in range(count):
                pipe.xadd(stream, {"op": "del", "pid": partitions.passage_id(doc_id, position)})
            pipe.delete(keys.doc(tag, doc_key(doc_id)))
        pipe.execute()
        return sum(count for _, count in held)

    return len(held), routing.run_on_owner(client, keys.ingest_stream(tag), write,
                                           transaction=True, replicated=True)
