"""Rank latency as the corpus grows (10k, 50k, 100k passages), on its own index-only cluster.

BM25 needs no reader, so this testbed's workers run without a model: they only index. The
corpus grows in stages (dev paragraphs, then distinct copies of the Wikipedia summaries);
after each stage the same dev questions are ranked (k=5) and timed.

Beside the shipped rank (every posting of every query term is read), the bench measures a
proposal for common terms: read at most ``cap`` postings per term and partition, highest
term frequency first (loaded as a separate function library on this throwaway cluster
only), with its overlap with the exact top k.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.corpus import synthetic_stages
from bench.testbed import Testbed
from bench.timing import percentiles
from cluster import keys, partitions
from cluster.partitions import PartitionMap
from gears import analyzer, fanout, ranking
from gears.asker import normalize
from loaders.writer import ingest, wait_indexed

CAPPED_LIBRARY = """#!lua name=shardqa_bench
-- rank_capped: the shipped BM25 rank, reading at most ARGV[5] postings per term
-- (highest tf first). KEYS: lengths, term postings. ARGV: k, k1, b, avgdl, cap, weights...
local function rank_capped(keys, args)
  local k = tonumber(args[1]) or 5
  local k1 = tonumber(args[2]) or 1.2
  local b = tonumber(args[3]) or 0.75
  local avgdl = tonumber(args[4]) or 1
  local cap = tonumber(args[5]) or 1000
  if avgdl <= 0 then avgdl = 1 end
  local pids, seen = {}, {}
  for i = 2, #keys do
    local w = tonumber(args[4 + i]) or 1
    local postings = redis.call('ZRANGE', keys[i], 0, cap - 1, 'REV', 'WITHSCORES')
    for j = 1, #postings, 2 do
      local pid = postings[j]
      local entry = seen[pid]
      if not entry then
        entry = {}
        seen[pid] = entry
        pids[#pids + 1] = pid
      end
      entry[#entry + 1] = w
      entry[#entry + 1] = tonumber(postings[j + 1])
    end
  end
  if #pids == 0 then return {} end
  local scored = {}
  for start = 1, #pids, 4000 do
    local stop = math.min(start + 3999, #pids)
    local lens = redis.call('HMGET', keys[1], unpack(pids, start, stop))
    for i = start, stop do
      local dl = tonumber(lens[i - start + 1]) or avgdl
      local norm = k1 * (1 - b + b * dl / avgdl)
      local entry = seen[pids[i]]
      local s = 0
      for j = 1, #entry, 2 do
        local tf = entry[j + 1]
        s = s + entry[j] * tf * (k1 + 1) / (tf + norm)
      end
      scored[#scored + 1] = {pids[i], s}
    end
  end
  table.sort(scored, function(x, y)
    if x[2] == y[2] then return x[1] < y[1] end
    return x[2] > y[2]
  end)
  local out = {}
  for i = 1, math.min(k, #scored) do
    out[#out + 1] = scored[i][1]
    out[#out + 1] = string.format('%.17g', scored[i][2])
  end
  return out
end
redis.register_function{function_name='rank_capped', callback=rank_capped,
                        flags={'no-writes'}}
"""


def rank_capped(client, pmap: PartitionMap, question: str, k: int, cap: int) -> list[str]:
    """Top-k passage ids with at most ``cap`` postings read per term and partition."""
    terms = analyzer.query_terms(question)
    if not terms:
        return []
    stats = ranking.global_stats(client, pmap, terms)
    terms = [t for t in terms if stats.df.get(t)]
    if not terms or not stats.passages:
        return []
    weights = [repr(stats.idf(t)) for t in terms]

    def build(pipe, p):
        pipe.fcall_ro("rank_capped", 1 + len(terms), keys.index_lengths(p.tag),
                      *[keys.index_term(p.tag, t) for t in terms],
                      k, ranking.K1, ranking.B, repr(stats.avgdl), cap, *weights)

    found = []
    for reply in fanout.run(client, pmap.partitions, build).values():
        if isinstance(reply, Exception):
            raise reply
        for i in range(0, len(reply), 2):
            found.append((-float(reply[i + 1]), reply[i].decode()))
    return [pid for _, pid in sorted(found)[:k]]


def measure_rank(client, pmap: PartitionMap, questions: list[str], k: int, cap: int) -> dict:
    exact_ms, capped_ms, overlap = [], [], []
    for q in questions:
        q = normalize(q)
        t0 = time.perf_counter()
        exact = ranking.rank(client, pmap, q, k)
        exact_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        capped = rank_capped(client, pmap, q, k, cap)
        capped_ms.append((time.perf_counter() - t0) * 1000)
        want = {r.pid for r in exact}
        if want:
            overlap.append(len(want & set(capped)) / len(want))
    return {"exact": percentiles(exact_ms), "capped": percentiles(capped_ms),
            "capped_overlap_at_k": round(sum(overlap) / max(1, len(overlap)), 4)}


def rank_at_scale(root: Path, *, masters: int, targets: list[int], base, seeds,
                  questions: list[str], k: int = 5, cap: int = 1000, say=print) -> list[dict]:
    rows = []
    with Testbed(root, masters=masters, threads=1, api=False) as bed:
        bed.start(artifact=None)
        client = bed.client
        client.function_load(CAPPED_LIBRARY, replace=True)
        pmap = partitions.load(client)
        for target, stage, total in synthetic_stages(base, seeds, targets):
            before = bed.used_memory()
            t0 = time.perf_counter()
            report = ingest(client, stage, progress=False)
            written_s = time.perf_counter() - t0
            wait_indexed(client, timeout=900, progress=False)
            indexed_s = time.perf_counter() - t0
            grown = bed.used_memory() - before
            # warm every node and the functions once before timing
            measure_rank(client, pmap, questions[:5], k, cap)
            row = {"target": target, "passages": total, "stage_passages": report.written,
                   "ingest_passages_per_s": round(report.written / max(written_s, 1e-9)),
                   "indexed_passages_per_s": round(report.written / max(indexed_s, 1e-9)),
                   "redis_bytes_per_passage_index_only": round(grown / max(1, report.written)),
                   "k": k, "cap": cap, **measure_rank(client, pmap, questions, k, cap)}
            rows.append(row)
            say(f"  {total:,} passages: rank p50 {row['exact']['p50']:.2f} ms "
                f"(capped {row['capped']['p50']:.2f} ms, overlap "
                f"{row['capped_overlap_at_k']:.2f}); indexed {row['indexed_passages_per_s']:,}"
                " passages/s")
    return rows
