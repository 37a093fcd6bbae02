"""A bench run's figures as files: the full JSON, a short Markdown summary and PNG plots
(latency against k, rank latency against corpus size, throughput against concurrency)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import comparison
from bench.rank_scale import GROWTH_NAMES, by_growth


def write(result: dict, out: Path) -> list[Path]:
    """``out`` is the JSON path; the .md and PNGs go beside it with the same stem."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(result))
    readme = out.with_name(out.stem + "-readme.md")
    readme.write_text(readme_section(result, out))
    return [out, md, readme, *plots(result, out)]


def _k(d: dict, k):
    """Rows keyed by k or concurrency: ints in memory, strings once read back from JSON."""
    return d.get(k, d.get(str(k)))


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(r: dict) -> str:
    m = r["machine"]
    s = r["settings"]
    reader = r.get("reader", {})
    lines = [
        f"# shardqa bench {'(--quick) ' if s.get('quick') else ''}{r.get('started', '')}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}; load average at start "
        f"{m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}. "
        f"Deployment: {s['masters']} masters, one worker each ({s['worker_threads']} torch "
        f"thread{'s' if s['worker_threads'] != 1 else ''}), the API under waitress. "
        f"Reader: {reader.get('name')} "
        f"({'random QA head: F1 not meaningful' if reader.get('random_qa_head') else 'trained'})"
        f". Run took {_fmt(r.get('elapsed_s'))} s.",
    ]
    if r.get("systems"):
        lines += ["", "## Every system (uncached, end to end)", "", *comparison.table(r),
                  *comparison.notes(r)]
    lines += [
        "",
        "## Uncached latency (ms), end to end",
        "",
        "| system | k | p50 | p95 | p99 | n | F1 | EM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in r.get("systems", {}).items():
        for k in s["ks"]:
            row = _k(rows, k)
            lat = row["latency"]
            lines.append(f"| {name} | {k} | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} | "
                         f"{_fmt(lat['p99'])} | {lat['n']} | {_fmt(row['f1'])} | "
                         f"{_fmt(row['exact_match'])} |")
    stages = [(name, k, _k(rows, k).get("server_stages_p50_ms"))
              for name, rows in r.get("systems", {}).items() for k in s["ks"]]
    stages = [(name, k, st) for name, k, st in stages if st]
    if stages:
        lines += ["", "Where the time goes (server-side p50 per stage, ms: rank = BM25 fan-out, "
                  "wait = request to reply, queue = in the request stream, read = the "
                  "worker's reader batch):", ""]
        for name, k, st in stages:
            lines.append(f"- {name}, k={k}: " + ", ".join(
                f"{stage} {_fmt(v)}" for stage, v in st.items() if v is not None))
    if r.get("vs_naive"):
        lines += ["", "Speed-up over the naive baseline (naive p50 / p50, same questions):", ""]
        for name, by_k in r["vs_naive"].items():
            lines.append(f"- {name}: " + ", ".join(f"k={k}: {_fmt(_k(by_k, k), 2)}x"
                                                    for k in s["ks"]))
    if r.get("throughput"):
        lines += ["", "## Throughput (uncached, k=5, through the API)", "",
                  "| system | concurrency | questions/s | p50 ms | p95 ms |",
                  "|---|---|---|---|---|"]
        for name, rows in r["throughput"].items():
            for c in s["concurrency"]:
                row = _k(rows, c)
                lines.append(f"| {name} | {c} | {_fmt(row['questions_per_s'])} | "
                             f"{_fmt(row['latency'].get('p50'))} | "
                             f"{_fmt(row['latency'].get('p95'))} |")
    if r.get("cached"):
        c = r["cached"]
        lines += ["", "## Cached latency (ms)", "", "| path | p50 | p95 | p99 |",
                  "|---|---|---|---|"]
        for name, label in (("redis_get_cluster_client", "Redis GET (RedisCluster client)"),
                            ("redis_get_direct_node", "Redis GET (direct to the node)"),
                            ("http_api", "HTTP API (lean keep-alive client, as wrk/curl)"),
                            ("http_api_python_client", "HTTP API (Python http.client)")):
            if name not in c:
                continue
            lines.append(f"| {label} | {_fmt(c[name]['p50'], 3)} | {_fmt(c[name]['p95'], 3)} | "
                         f"{_fmt(c[name]['p99'], 3)} |")
    if r.get("ingest"):
        i = r["ingest"]
        lines += ["", f"## Ingest: {i['passages']:,} passages; {i['write_passages_per_s']:,} "
                  f"passages/s written, {i['indexed_passages_per_s']:,} passages/s tokenized "
                  f"and indexed; {i['redis_bytes_per_passage']:,} Redis bytes per passage"]
    if r.get("rank_scale"):
        lines += ["", "## Rank latency against corpus size (k=5, ms)", "",
                  "| growth | passages | terms | rarest term's postings | p50 | p95 | "
                  "capped p50 | capped p95 | capped overlap@k | index B/passage |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for growth, rows in by_growth(r["rank_scale"]).items():
            for row in rows:
                lines.append(
                    f"| {GROWTH_NAMES.get(growth, growth)} | {row['passages']:,} | "
                    f"{_fmt(row.get('vocabulary'), 0)} | {_fmt(row.get('rarest_term_postings'))} | "
                    f"{_fmt(row['exact']['p50'], 2)} | {_fmt(row['exact']['p95'], 2)} | "
                    f"{_fmt(row['capped']['p50'], 2)} | {_fmt(row['capped']['p95'], 2)} | "
                    f"{row['capped_overlap_at_k']:.3f} | "
                    f"{row['redis_bytes_per_passage_index_only']:,} |")
    if r.get("forward"):
        lim = r["matmul"]
        lines += ["", "## Reader forward vs the fp32 matmul limit", "",
                  f"fp32 matmul (2048^2; median of 7, the better of a measurement before and "
                  f"one after the forward runs): {lim['1_threads']['median_gflops']} GFLOP/s on "
                  f"1 thread, {lim['2_threads']['median_gflops']} on 2.", "",
                  "| threads | batch x len | GFLOP | eager ms | TS fp32 ms | TS int8 ms | "
                  "TS bf16 ms | fp32 GFLOP/s (% of matmul) |", "|---|---|---|---|---|---|---|---|"]
        for key, rows in r["forward"].items():
            for row in rows:
                fp = row["ts_fp32"]
                lines.append(
                    f"| {key.split('_')[0]} | {row['batch']} x {row['length']} | {row['gflop']} | "
                    f"{_fmt(row.get('eager', {}).get('median_ms'))} | {_fmt(fp['median_ms'])} | "
                    f"{_fmt(row.get('ts_int8', {}).get('median_ms'))} | "
                    f"{_fmt(row.get('ts_bf16', {}).get('median_ms'))} | {_fmt(fp['gflops'])} "
                    f"({100 * fp['share_of_matmul']:.0f}%) |")
    if r.get("quality"):
        lines += ["", "## Quality on dev (reader mode: gold paragraph)", "",
                  "| variant | EM | F1 | F1 vs fp32 | questions |", "|---|---|---|---|---|"]
        for v, q in r["quality"].items():
            lines.append(f"| {v} | {_fmt(q['exact_match'])} | {_fmt(q['f1'])} | "
                         f"{_fmt(q.get('f1_delta_vs_fp32'), 2)} | {q['count']} |")
    if r.get("options"):
        o = r["options"]
        lines += ["", f"## Reader options (in process, {o['threads']} thread, k={o['k']} ranked "
                  "candidates, one question at a time)", "",
                  "| option | p50 ms | speed-up | windows | F1 | F1 delta | EM |",
                  "|---|---|---|---|---|---|---|"]
        for row in o["rows"]:
            lines.append(f"| {row['option']} | {_fmt(row['p50_ms'])} | "
                         f"{_fmt(row['speedup_vs_fp32_all_k'], 2)}x | "
                         f"{_fmt(row['mean_windows'])} | {_fmt(row['f1'])} | "
                         f"{_fmt(row['f1_delta_vs_fp32_all_k'], 2)} | "
                         f"{_fmt(row['exact_match'])} |")
        lines.append("\n" + question_tokenization_line(o["question_tokenization"])[2:] + ".")
    lines += _budget(r.get("cpu_budget"))
    extra = []
    if r.get("warm_up"):
        w = r["warm_up"]
        extra.append(f"- warm-up at load ({w['variant']}, {w['batch']}): first call "
                     f"{w['first_ms']} ms, second {w['second_ms']} ms, steady {w['steady_ms']} ms")
    if r.get("threads_per_worker"):
        t = r["threads_per_worker"]
        extra.append(f"- threads per worker ({t['variant']}, k=5 batch): 1 thread "
                     f"{t['1_thread_ms']} ms, 2 threads {t['2_thread_ms']} ms "
                     f"({t['speedup_2_threads']}x)")
    if r.get("bf16"):
        b = r["bf16"]
        extra.append(f"- bf16: CPU flags {b['cpu_bf16_flags'] or 'none'}; matmul fp32 "
                     f"{b['matmul_fp32_gflops']} vs bf16 {b['matmul_bf16_gflops']} GFLOP/s: "
                     f"{b['decision']}")
    if extra:
        lines += ["", "## Other options", "", *extra]
    if r.get("goals"):
        lines += ["", "## Goals", "", "| goal | measured | target | reached |", "|---|---|---|---|"]
        for g in r["goals"]:
            mark = {True: "yes", False: "**no**", None: "-"}[g["reached"]]
            lines.append(f"| {g['goal']} | {_fmt(g['measured'], 2)} {g['unit']} | "
                         f"{g['target']} {g['unit']} | {mark} |")
    return "\n".join(lines) + "\n"


def _budget(b: dict | None) -> list[str]:
    """The CPU budget table: CPU ms per question by process, and its biggest stages."""
    if not b:
        return []
    cpu = b["cpu_ms_per_question"]
    lines = ["", f"## CPU budget (concurrency {b['concurrency']}, k={b['k']}, {b['variant']}: "
             f"{b['questions_per_s']} q/s; other processes used "
             f"{b['machine']['others_cores_mean']} cores meanwhile)", "",
             "| process | CPU ms / question | biggest stages (ms) |", "|---|---|---|"]
    for name, ms in cpu["by_process"].items():
        profile = b.get("profiles", {}).get(name, {})
        parts = [f"{st['frame']} {_fmt(st['cpu_ms_per_question'], 2)}"
                 for st in profile.get("stages", [])[:3]]
        if "pool_threads_cpu_ms_per_question" in profile:
            parts.append(f"torch pool threads {_fmt(profile['pool_threads_cpu_ms_per_question'])}")
        lines.append(f"| {name} | {_fmt(ms)} | {', '.join(parts)} |")
    lines.append(f"| **total** | **{_fmt(cpu['ours_total'])}** | |")
    return lines


def readme_section(r: dict, out: Path) -> str:
    """The README's performance section: machine, command, headline table, goals."""
    m, s = r["machine"], r["settings"]
    wiki = f"the first {s['distractor_docs']:,}" if s.get("distractor_docs") else "all 10,033"
    lines = [
        "## Performance",
        "",
        f"Measured by `shardqa bench{' --quick' if s.get('quick') else ''}` "
        f"({r.get('started', '')}) on {m['cpu']}, {m['cores']} cores "
        f"(load average {m.get('loadavg_at_start')} at start); {deployment(r)}; corpus: "
        f"SQuAD dev paragraphs + {wiki}"
        " ovos-wiki summaries as distractors; questions from dev, each asked once (uncached).",
        f"Command: `{command(r)}` (the run took {_fmt((r.get('elapsed_s') or 0) / 60)} "
        f"minutes). Full figures: `{out.name}` and `{out.with_suffix('.md').name}` in "
        "`bench/results/`.",
        "",
        *comparison.table(r),
        *comparison.notes(r),
        "",
    ]
    if r.get("cached"):
        c = r["cached"]
        lines.append(f"Cached: p50 {c['redis_get_direct_node']['p50']:.3f} ms by Redis GET on "
                     f"the owning master's connection (what the asker does; "
                     f"{c['redis_get_cluster_client']['p50']:.3f} ms through redis-py's "
                     f"cluster client), {c['http_api']['p50']:.3f} ms through the HTTP API "
                     f"(a lean keep-alive client; "
                     f"{c.get('http_api_python_client', {}).get('p50', 0):.3f} ms with Python's "
                     f"http.client, whose header parsing is the client's own cost).")
    if r.get("ingest"):
        i = r["ingest"]
        work = "tokenized, indexed and embedded" if i.get("embedded") else \
            "tokenized and indexed"
        lines.append(f"Ingest: {i['write_passages_per_s']:,} passages/s written, "
                     f"{i['indexed_passages_per_s']:,} passages/s {work}; "
                     f"{i['redis_bytes_per_passage']:,} Redis bytes per passage.")
    if r.get("rank_scale"):
        lines.append("Rank (k=5, cap " + str(r["rank_scale"][-1]["cap"]) + ") p50: " + "; ".join(
            f"{GROWTH_NAMES.get(growth, growth)}: " + ", ".join(
                f"{_fmt(row['capped']['p50'], 2)} ms at {row['passages']:,}" for row in rows)
            + f" passages ({rows[-1]['capped']['p50'] / rows[0]['capped']['p50']:.2f}x)"
            for growth, rows in by_growth(r["rank_scale"]).items()) + ".")
    lines += optimizations(r)
    if r.get("goals"):
        lines += ["", "| goal | target | measured | reached |", "|---|---|---|---|"]
        for g in r["goals"]:
            mark = {True: "yes", False: "no", None: "-"}[g["reached"]]
            lines.append(f"| {g['goal']} | {g['target']} {g['unit']} | "
                         f"{_fmt(g['measured'], 2)} {g['unit']} | {mark} |")
    return "\n".join(lines) + "\n"


def deployment(r: dict) -> str:
    """How shardqa was deployed in the run, if it was."""
    s = r["settings"]
    if not any(key in r for key in ("ingest", "cached", "options")) and \
            not any(a.get("kind") == "api" for a in r.get("system_info", {}).values()):
        return "shardqa not deployed in this run (the systems below ran in the bench process)"
    threads = s["worker_threads"]
    return (f"{s['masters']} masters with one worker each ({threads} torch "
            f"thread{'s' if threads != 1 else ''}), the API under waitress")


def command(r: dict) -> str:
    """The command line that made the run (as far as its settings say)."""
    s = r["settings"]
    words = ["shardqa bench"] + (["--quick"] if s.get("quick") else [])
    if s.get("only"):
        words.append("--only " + ",".join(s["only"]))
    return " ".join(words)


def optimizations(r: dict) -> list[str]:
    """One line per speed option with its measured effect (and quality cost)."""
    lines = ["", "What each speed option buys (measured in the same run):", ""]
    rows = {row["option"]: row for row in r.get("options", {}).get("rows", [])}
    quality = r.get("quality", {})
    random_head = r.get("reader", {}).get("random_qa_head")
    shipped = rows.get("fp32, length-bucketed, all k read")
    padded = rows.get("fp32, padded to max_seq_len")
    if shipped and padded:
        lines.append(f"- padding-free batches grouped by length: {padded['p50_ms']:.0f} -> "
                     f"{shipped['p50_ms']:.0f} ms per k=5 read "
                     f"({padded['p50_ms'] / shipped['p50_ms']:.2f}x); {_agreement(padded)}")
    int8 = next((row for name, row in rows.items() if name.startswith("int8 per-channel")), None)
    if shipped and int8:
        cost = ""
        if "int8" in quality and not random_head:
            cost = (f"; dev F1 {quality['int8']['f1']:.1f} vs {quality['fp32']['f1']:.1f} "
                    f"({quality['int8']['f1_delta_vs_fp32']:+.2f})")
        lines.append(f"- int8 dynamic quantization (per-channel): {shipped['p50_ms']:.0f} -> "
                     f"{int8['p50_ms']:.0f} ms ({shipped['p50_ms'] / int8['p50_ms']:.2f}x){cost}")
    for name, row in rows.items():
        if "skip" in name:
            cost = "" if random_head else f"; end-to-end F1 {row['f1_delta_vs_fp32_all_k']:+.2f}"
            lines.append(f"- {name}: {row['mean_windows']:.1f} windows instead of "
                         f"{shipped['mean_windows']:.1f}, {row['speedup_vs_fp32_all_k']:.2f}x "
                         f"vs fp32 reading all k{cost}")
    qt = r.get("options", {}).get("question_tokenization")
    if qt:
        lines.append(question_tokenization_line(qt))
    w = r.get("warm_up")
    if w:
        lines.append(f"- warm-up at load: the first forward of a fresh reader takes "
                     f"{w['first_ms']:.0f} ms vs {w['steady_ms']:.0f} ms steady; the worker pays "
                     "it before its first question")
    t = r.get("threads_per_worker")
    if t:
        lines.append(f"- threads per worker: a k=5 batch takes {t['1_thread_ms']:.0f} ms on 1 "
                     f"thread, {t['2_thread_ms']:.0f} ms on 2 ({t['speedup_2_threads']:.2f}x); "
                     "the bench gives each of its 2 workers every core; `shardqa up` divides "
                     "the cores among its workers, since 3 workers with 2 threads each on 2 "
                     "cores made the soak's slowest questions slower")
    b = r.get("bf16")
    if b:
        flags = ", ".join(b["cpu_bf16_flags"]) or "none of amx_bf16/avx512_bf16"
        lines.append(f"- bf16: CPU flags {flags}; bf16 matmul {b['matmul_bf16_gflops']} vs "
                     f"fp32 {b['matmul_fp32_gflops']} GFLOP/s: {b['decision']}")
    for growth, rows in by_growth(r.get("rank_scale") or []).items():
        last = rows[-1]
        order = ("timed in alternating order" if last.get("order") == "interleaved" else
                 "exact timed first for every question, so capped may profit from warm caches")
        lines.append(f"- rank reading at most {last['cap']} postings per term and partition "
                     f"(shipped; exact scores for every passage found), "
                     f"{GROWTH_NAMES.get(growth, growth)}: p50 "
                     f"{last['exact']['p50']:.1f} -> "
                     f"{last['capped']['p50']:.1f} ms at {last['passages']:,} passages "
                     f"({order}), top-{last['k']} overlap {last['capped_overlap_at_k']:.2f}")
    return lines if len(lines) > 3 else []


def _agreement(row: dict) -> str:
    """How far an option's answers agree with fp32 reading all k: compared answer by
    answer where the run did, else only F1 (which equal answers give, but not only they)."""
    same = row.get("same_answers_as_fp32_all_k")
    if same is None:
        return (f"F1 {row['f1']:.2f} (F1 delta {row['f1_delta_vs_fp32_all_k']:+.2f}; answers "
                "not compared in this run)")
    return f"the same answer on {same} of {row['questions']} questions"


def question_tokenization_line(qt: dict) -> str:
    """What tokenizing the question once (not once per pair) saves, at the pairs the
    shipped floor reads when the run measured them."""
    line = (f"- question tokenized once per question, not once per pair: "
            f"{qt['question_tokenize_us']:.0f} µs per tokenization")
    if "shipped_pairs_per_question" in qt:
        return (line + f"; saves {qt['shipped_saved_us_per_question']:.0f} µs per question "
                f"at the shipped floor's {qt['shipped_pairs_per_question']:.2f} pairs "
                f"({qt['saved_us_per_question']:.0f} µs if all "
                f"{qt['pairs_per_question']:.2f} were read)")
    return (line + f"; saves {qt['saved_us_per_question']:.0f} µs per question only if all "
            f"{qt['pairs_per_question']:.2f} pairs of the top k are read (the shipped floor "
            "reads fewer)")


def plots(r: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ks = r["settings"]["ks"]
    if r.get("systems"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, rows in r["systems"].items():
            p50 = [_k(rows, k)["latency"]["p50"] for k in ks]
            p95 = [_k(rows, k)["latency"]["p95"] for k in ks]
            line, = ax.plot(ks, p50, marker="o", label=f"{name} p50")
            ax.plot(ks, p95, linestyle="--", color=line.get_color(), alpha=0.6)
        ax.set_xlabel("k (best-ranked passages per question; the baselines read all k, "
                      "shardqa skips those far below the best)", fontsize=8)
        ax.set_ylabel("uncached latency, ms (dashed: p95)")
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"latency against k ({r['machine']['cpu']}, {r['machine']['cores']} cores)",
                     fontsize=9)
        path = out.with_name(out.stem + "-latency-k.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if r.get("rank_scale"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for growth, rows in by_growth(r["rank_scale"]).items():
            sizes = [row["passages"] for row in rows]
            for key, label in (("exact", "every posting"), ("capped", "capped (shipped)")):
                line, = ax.plot(sizes, [row[key]["p50"] for row in rows], marker="o",
                                label=f"{GROWTH_NAMES.get(growth, growth)}, {label} p50")
                ax.plot(sizes, [row[key]["p95"] for row in rows], linestyle="--",
                        color=line.get_color(), alpha=0.6)
        ax.set_xlabel("passages in the corpus")
        ax.set_ylabel("rank latency, ms (dashed: p95)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("rank latency against corpus size (k=5)", fontsize=9)
        path = out.with_name(out.stem + "-rank-size.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if r.get("throughput"):
        cs = r["settings"]["concurrency"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, rows in r["throughput"].items():
            ax.plot(cs, [_k(rows, c)["questions_per_s"] for c in cs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs)
        ax.set_xticklabels([str(c) for c in cs])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("uncached questions/s (k=5)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        path = out.with_name(out.stem + "-throughput.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
