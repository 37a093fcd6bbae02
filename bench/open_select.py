"""Choosing and calibrating the answer across passages in open mode (issues 13 and 17).

``record``: every question of a set asked of a running stack (``shardqa up`` / ``demo``),
its top k ranked as the asker ranks it and every one of them read by the shard workers
(floor 0, so any floor can be replayed); per question it keeps each passage's retrieval
(fused score, BM25 and dense rank and score, gold or not) and every candidate span the
workers return (score, offsets, text, EM and F1 against the gold answers). One run per
question set, one JSON; the fits then need no stack.

``fit``: on the fit set (SQuAD dev) the answer-choice rule (retrieval feature and weight:
best mean F1, models.calibration.choose) then the confidence temperature (lowest negative
log-likelihood of "the answer is right"); reports F1 / EM / ECE before (the rule shipped
before: relative fused score x 8, the reader's own confidence) and after, on every recorded
set, the held-out ones included, and writes the reliability plots.

    python -m bench.open_select record --set squad-dev --out C.json [--dir CLUSTER] [--k 5]
    python -m bench.open_select fit --fit C-squad.json --held-out C-natural.json --out R.json
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console

from bench.floor_sweep import SETS
from cluster.options import target_options
from cluster.partitions import passage_id
from gears import ranking, selection
from gears.asker import HYBRID_MIN_RANK_RATIO, Asker, normalize
from gears.fusion import Fused
from gears.retrieval import MODES, QUESTION_THREADS
from models import calibration
from models.squad import SquadExample, normalize_answer, read_squad, score_answer
from shardqa import datasets

console = Console(highlight=False, stderr=True)
RESULTS = Path(__file__).resolve().parent / "results"


def record_question(asker: Asker, example: SquadExample, k: int) -> dict:
    """One question's top k, every one read by the workers, with every span they return."""
    q = normalize(example.question)
    gold = passage_id(example.title, example.paragraph_index)
    found = asker.retrieve(q, k)
    ranked, _missing = asker._live(ranking.above_floor(found.passages, 0.0))
    replies, _ = asker._read(q, ranked) if ranked else ([], 0.0)
    read = {span.pid: span for reply in replies for span in reply.spans}
    passages = []
    for position, f in enumerate(found.passages, start=1):
        span = read.get(f.pid)
        passages.append({
            "pid": f.pid, "position": position, "fused": f.score, "ranks": f.ranks,
            "scores": f.scores, "gold": f.pid == gold, "read": span is not None,
            "null": bool(span.null) if span else None,
            "log_z": span.log_z if span else None,
            "temperature": span.temperature if span else None,
            "spans": [[start, end, text, score, *score_answer(text, example.answers)]
                      for start, end, text, score in (span.all_spans() if span else [])],
        })
    return {"id": example.id, "question": example.question, "mode": found.mode,
            "answers": list(example.answers), "passages": passages}


def record(target, examples: list[SquadExample], k: int, mode: str = "hybrid") -> list[dict]:
    """Every question of ``examples`` recorded on the running stack ``target``, ranked in
    ``mode`` (hybrid or bm25)."""
    from cluster.connection import connect

    client = connect(target)
    try:
        asker = Asker(client, encoder_threads=QUESTION_THREADS, retrieval_mode=mode)
        out = []
        for i, example in enumerate(examples, start=1):
            out.append(record_question(asker, example, k))
            if i % 50 == 0:
                console.print(f"{i:,} / {len(examples):,} questions recorded")
        return out
    finally:
        client.close()


def load(path: Path) -> dict:
    """A ``record`` JSON (gzip if it ends in .gz)."""
    raw = gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") \
        else open(path, encoding="utf-8")
    with raw as f:
        return json.load(f)


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text + "\n", encoding="utf-8")


def candidates(question: dict, form: str, floor: float, weight: float = 0.0) -> tuple:
    """(span scores, retrieval features, keys, F1, EM) of the candidate spans of a question's
    passages at or above ``floor`` x the best fused score, in the asker's order (answer score
    at ``weight``, then passage, then offsets)."""
    passages = question["passages"]
    top = passages[0]["fused"] if passages else 0.0
    rule = selection.Selection(weight=weight, form=form)
    rows = []
    for p in passages:
        if not p["read"] or p["null"] or (floor > 0 and p["fused"] < floor * top):
            continue
        x = rule.feature(Fused(p["pid"], 0, p["fused"], p["ranks"], p["scores"]),
                         p["position"], top)
        for start, end, text, score, exact, f1 in p["spans"]:
            rows.append((rule.score(score, x), p["pid"], start, end, score, x,
                         normalize_answer(text), f1, exact))
    rows.sort(key=lambda r: (-r[0], r[1], r[2], r[3]))
    return tuple(np.asarray([r[i] for r in rows]) if i != 6 else [r[6] for r in rows]
                 for i in (4, 5, 6, 7, 8))


def reader_confidence(question: dict, floor: float, weight: float) -> tuple[float, float, float]:
    """(F1, EM, confidence) of the rule shipped before: each passage's best span + relative
    fused score x ``weight``, confidence = the reader's softmax over every span of every
    passage read (log_z), the retrieval weight left out."""
    passages = question["passages"]
    top = passages[0]["fused"] if passages else 0.0
    read = [p for p in passages if p["read"] and (floor <= 0 or p["fused"] >= floor * top)]
    best = None
    for p in read:
        if p["null"] or not p["spans"]:
            continue
        _s, _e, _t, score, exact, f1 = p["spans"][0]
        total = score + weight * (p["fused"] / top if top > 0 else 0.0)
        if best is None or total > best[0]:
            best = (total, score, exact, f1, p["temperature"] or 1.0)
    if best is None:
        return 0.0, 0.0, 0.0
    log_z = float(np.logaddexp.reduce([p["log_z"] for p in read]))
    return best[3], best[2], float(np.exp(best[1] / best[4] - log_z))


def evaluate(questions: list[dict], rule: selection.Selection, floor: float) -> dict:
    """F1, EM and ECE of ``rule`` as the asker applies it (Selection.answers)."""
    f1, em, conf = [], [], []
    for q in questions:
        span, feature, keys, f, e = candidates(q, rule.form, floor, rule.weight)
        chosen = rule.answers(list(rule.score(np.asarray(span), np.asarray(feature))), keys)
        index, confidence = chosen[0] if chosen else (None, 0.0)
        f1.append(f[index] if index is not None else 0.0)
        em.append(e[index] if index is not None else 0.0)
        conf.append(confidence)
    return summary(f1, em, conf)


def summary(f1, em, conf) -> dict:
    ece, bins = calibration.reliability(conf, em)
    return {"f1": round(100 * float(np.mean(f1)), 2),
            "exact_match": round(100 * float(np.mean(em)), 2), "ece": round(100 * ece, 2),
            "bins": bins, "_curve": (list(map(float, conf)), list(map(float, em)))}


def before(questions: list[dict], floor: float, weight: float) -> dict:
    f1, em, conf = zip(*(reader_confidence(q, floor, weight) for q in questions), strict=True)
    return summary(f1, em, conf)


def fit_rule(questions: list[dict], floor: float) -> tuple[selection.Selection, dict]:
    """The best form (by F1), its weight and choice temperature (by F1), then its confidence
    temperature (by NLL) on ``questions``; and every form's fitted row."""
    rows, rules = {}, {}
    for form in selection.FORMS:
        data = [candidates(q, form, floor) for q in questions]
        weight, choice_t, f1 = calibration.fit_open_choice(
            [(s, r, k, f) for s, r, k, f, _e in data])
        chosen = [calibration.choose(s, r, k, weight, choice_t)[0] if len(s) else None
                  for s, r, k, _f, _e in data]
        right = [e[c] if c is not None else 0.0 for (*_x, e), c in zip(data, chosen,
                                                                       strict=True)]
        temperature = calibration.fit_open_temperature(data, chosen, right, weight)
        rules[form] = selection.Selection(weight, round(temperature, 4), form,
                                          round(choice_t, 4))
        rows[form] = {"weight": weight, "choice_temperature": round(choice_t, 4),
                      "temperature": round(temperature, 4), "f1": round(100 * f1, 2)}
    form = max(selection.FORMS, key=lambda name: (rows[name]["f1"], name == "relative"))
    return rules[form], rows


@click.group()
def main() -> None:
    """Record open-mode candidates from a stack; fit the answer choice and confidence."""


@main.command("record")
@click.option("--set", "name", type=click.Choice(sorted(SETS)), default="squad-dev",
              show_default=True)
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--questions", type=click.IntRange(1), default=None,
              help="the first N questions (file order) [default: all]")
@click.option("--retrieval", "mode", type=click.Choice(MODES), default="hybrid",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON (.json.gz: gzip) of every question's candidates")
@target_options
def record_command(name, k, questions, mode, out, target):
    """Every question's top k read by the running stack's workers, every span kept."""
    examples = [e for e in read_squad(SETS[name]) if e.has_answer][:questions]
    t0 = time.perf_counter()
    rows = record(target, examples, k, mode)
    write(out, {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "set": name,
                "file": datasets.shown(SETS[name]), "k": k, "floor": 0.0,
                "seconds": round(time.perf_counter() - t0, 1), "questions": rows})
    console.print(f"wrote {out} ({len(rows):,} questions)")


def fit_confidence(questions: list[dict], floor: float, weight: float,
                   form: str = "relative") -> selection.Selection:
    """The answer choice kept (best score at ``weight``, no pooling); only the confidence
    temperature fitted (NLL of the chosen answer's pooled probability against its EM)."""
    data = [candidates(q, form, floor, weight) for q in questions]
    chosen = [0 if len(d[0]) else None for d in data]  # candidates come best score first
    right = [d[4][0] if len(d[0]) else 0.0 for d in data]
    t = calibration.fit_open_temperature(data, chosen, right, weight)
    return selection.Selection(weight, round(t, 4), form)


def rule_row(rule: selection.Selection) -> dict:
    return {"form": rule.form, "weight": rule.weight,
            "choice_temperature": rule.choice_temperature, "temperature": rule.temperature}


@main.command("fit")
@click.option("--fit", "fit_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="recorded candidates of the fit set (SQuAD dev)")
@click.option("--held-out", "held_out", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), multiple=True, help="recorded candidates of held-out sets")
@click.option("--floor", type=click.FloatRange(0, 1), default=HYBRID_MIN_RANK_RATIO,
              show_default=True, help="passages read: fused score >= floor x the best")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plots", type=str, default=None,
              help="reliability plots, {set} replaced by the set's name (PNG)")
@click.option("--retrieval", "mode", type=click.Choice(MODES), default="hybrid",
              show_default=True, help="the mode the candidates were recorded in")
@click.option("--temperature-only", is_flag=True, help="fit the temperature alone")
def fit_command(fit_path, held_out, floor, out, plots, mode, temperature_only):
    """Fit on one set (a) the whole rule: answer choice, then its temperature, and (b) the
    temperature alone for the choice shipped before (relative fused x 8); report both, the
    shipped rule (gears.selection) and the rule before on every set."""
    fit_set = load(fit_path)
    others = [load(p) for p in held_out]
    shipped = selection.default(mode)
    old = shipped.weight  # the weight shipped before (relative score): 8 hybrid, 4 BM25
    rules = {"fit_temperature_only": (fit_confidence(fit_set["questions"], floor, old), {})}
    if not temperature_only:
        rules["fit_choice_and_temperature"] = fit_rule(fit_set["questions"], floor)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "fit_set": fit_set["set"], "floor": floor, "k": fit_set["k"],
              "recorded": {d["set"]: {"file": d["file"], "date": d["date"],
                                      "questions": len(d["questions"])}
                           for d in [fit_set, *others]},
              "rules": {name: {**rule_row(rule), **({"forms": forms} if forms else {})}
                        for name, (rule, forms) in rules.items()},
              "retrieval": mode, "shipped": rule_row(shipped), "sets": {}}
    for data in [fit_set, *others]:
        qs = data["questions"]
        row = {"before": before(qs, floor, old), "shipped": evaluate(qs, shipped, floor),
               **{name: evaluate(qs, rule, floor) for name, (rule, _f) in rules.items()}}
        if data is not fit_set and not temperature_only:  # information only: fitted on itself
            own, _ = fit_rule(qs, floor)
            on_fit = evaluate(fit_set["questions"], own, floor)
            on_fit.pop("_curve")
            row["fit_on_this_set_in_sample"] = {**rule_row(own), **evaluate(qs, own, floor),
                                                "on_the_fit_set": on_fit}
        if plots:
            curves = {f"before (weight {old:g}, reader confidence)": row["before"]["_curve"],
                      f"shipped (weight {shipped.weight:g}, T {shipped.temperature:.3g})":
                      row["shipped"]["_curve"]}
            path = Path(plots.format(set=data["set"]))
            calibration.reliability_plot(curves, path,
                                         f"open mode, {mode}, k={data['k']}: {data['set']}")
            row["plot"] = str(path)
        for part in row.values():
            if isinstance(part, dict):
                part.pop("_curve", None)
        result["sets"][data["set"]] = row
        for name, part in row.items():
            if isinstance(part, dict):
                console.print(f"{data['set']} {name}: F1 {part['f1']} EM "
                              f"{part['exact_match']} ECE {part['ece']}")
    console.print(f"rules: {result['rules']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
