"""Every system of a bench run side by side: the one table (issue 16) and what its ratios are
made of. Markdown lines for bench/report.py (the run's .md and the README section); works on
a result in memory and on its JSON read back (string keys)."""

from __future__ import annotations

#: the shardqa rows the peers are compared with: same reader (fp32), BM25 like them
DEPLOYED_BM25 = "shardqa fp32, BM25"
ONE_PROCESS = "shardqa in one process (fp32, BM25)"
NAIVE = "naive (eager HF)"
SHIPPED_FLOOR = "(shipped)"


def _k(d: dict, k):
    """Rows keyed by k or concurrency: ints in memory, strings once read back from JSON."""
    return d.get(k, d.get(str(k))) if d else None


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def table(r: dict) -> list[str]:
    """One row per system: p50 / p95 at every k, questions/s at every concurrency, F1 at
    k=5 and on how many questions."""
    s = r["settings"]
    systems, tp = r.get("systems", {}), r.get("throughput", {})
    if not systems:
        return []
    cs = s["concurrency"]
    lines = ["| system | " + " | ".join(f"k={k} p50 / p95 ms" for k in s["ks"])
             + " | q/s at concurrency " + " / ".join(str(c) for c in cs)
             + " | F1 k=5 (questions) |",
             "|---|" + "---|" * (len(s["ks"]) + 2)]
    for name in ordered(r):
        rows = systems[name]
        cells = []
        for k in s["ks"]:
            lat = (_k(rows, k) or {}).get("latency", {})
            cells.append(f"{_ms(lat.get('p50'))} / {_ms(lat.get('p95'))}")
        by_c = tp.get(name, {})
        qps = " / ".join(_rate(_k(by_c, c)) for c in cs)
        at5 = _k(rows, 5)
        f1 = f"{at5['f1']:.1f} ({at5['latency']['n']})" if at5 else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {qps} | {f1} |")
    return lines


def _rate(row: dict | None) -> str:
    """Questions/s answered, and how many failed (503s, no reply) when any did."""
    if not row:
        return "-"
    failed = row.get("errors") or 0
    return _ms(row.get("questions_per_s")) + (f" ({failed} failed)" if failed else "")


def ordered(r: dict) -> list[str]:
    """shardqa deployed first, then the one-process system, the peers written elsewhere,
    the baselines written here; in run order within each."""
    info = r.get("system_info", {})

    def rank(name: str) -> int:
        if info.get(name, {}).get("kind") == "api" or (not info and name.startswith(
                "shardqa") and name != ONE_PROCESS):
            return 0
        if name == ONE_PROCESS:
            return 1
        if name.startswith("Haystack"):
            return 2
        return 3

    return sorted(r.get("systems", {}), key=rank)


def notes(r: dict) -> list[str]:
    """What each system is, the peers not measured, and where the ratios come from."""
    lines = []
    info = r.get("system_info", {})
    if info:
        lines += ["", "What each row is:", ""]
        lines += [f"- **{name}**: {info[name]['how']}" for name in ordered(r) if name in info]
    skipped = (r.get("peers") or {}).get("haystack", {}).get("skipped")
    if skipped:
        lines += ["", f"Haystack was not measured in this run: {skipped}."]
    if any(", BM25" in n for n in r.get("systems", {})) and \
            any(", hybrid" in n for n in r.get("systems", {})):
        lines += ["", "shardqa runs hybrid retrieval by default (BM25 and the question's "
                  "vector, fused); its BM25 rows are the fair comparison with the peers, "
                  "which rank by BM25 alone."]
    lines += design_cost(r) + naive_ratio(r)
    return lines


def design_cost(r: dict) -> list[str]:
    """shardqa deployed (BM25) against the same reading in one process: what the
    distributed design costs per question on one machine."""
    systems, tp = r.get("systems", {}), r.get("throughput", {})
    mine, one = systems.get(DEPLOYED_BM25), systems.get(ONE_PROCESS)
    if not (mine and one):
        return []
    ks = r["settings"]["ks"]
    deltas = ", ".join(f"{_k(mine, k)['latency']['p50'] - _k(one, k)['latency']['p50']:+,.1f} "
                       f"ms at k={k}" for k in ks)
    line = (f"The distributed design's cost per question on this machine ({DEPLOYED_BM25} "
            f"against {ONE_PROCESS}, p50): {deltas}")
    top = max(r["settings"]["concurrency"])
    a, b = _k(tp.get(DEPLOYED_BM25, {}), top), _k(tp.get(ONE_PROCESS, {}), top)
    if a and b:
        line += (f"; at concurrency {top}, {a['questions_per_s']:.1f} against "
                 f"{b['questions_per_s']:.1f} questions/s")
    return ["", line + ". What the design buys is not in these rows: the answer cache "
            "(a repeated question costs one Redis GET), workers beside shards on other "
            "machines, and more masters for a larger corpus."]


def naive_ratio(r: dict) -> list[str]:
    """The k=5 ratio to the naive script, split into what any single process could do too
    (length-grouped batches, the candidate floor: options, reader alone) and the rest."""
    vs = r.get("vs_naive", {})
    ratio = _k(vs.get(DEPLOYED_BM25, {}), 5)
    if not ratio:
        return []
    parts = [f"Against the naive script at k=5, {DEPLOYED_BM25} is {ratio:.2f}x faster "
             "(p50, the same questions)"]
    rows = {row["option"]: row for row in r.get("options", {}).get("rows", [])}
    padded = rows.get("fp32, padded to max_seq_len")
    bucketed = rows.get("fp32, length-bucketed, all k read")
    floor = next((row for name, row in rows.items() if SHIPPED_FLOOR in name), None)
    if padded and bucketed and floor:
        batching = padded["p50_ms"] / bucketed["p50_ms"]
        skipping = bucketed["p50_ms"] / floor["p50_ms"]
        parts.append(f"of which length-grouped batches (no padding to max_seq_len) are "
                     f"worth {batching:.2f}x and the candidate floor {skipping:.2f}x "
                     f"({batching * skipping:.2f}x together, the reader alone: options below)"
                     f", choices any single process can make")
    one = _k(vs.get(ONE_PROCESS, {}), 5)
    if not one:
        return ["", "; ".join(parts) + "."]
    parts.append(f"{ONE_PROCESS} (the same floor and batching, no Redis) is {one:.2f}x "
                 "faster than naive")
    verdict = ("none of the ratio is the distributed design's" if one >= ratio else
               f"the design adds {ratio / one:.2f}x on top of them")
    return ["", "; ".join(parts) + f": {verdict}."]
