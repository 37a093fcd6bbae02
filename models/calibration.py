"""Fitting how a reader turns logits into decisions people can use, on a dev file.

Two settings, both stored in the artifact's metadata (``models.export.READING_FIELDS``):
the null threshold of a SQuAD 2.0-style reader (the official script's best-F1 threshold on
``null score - best span score``) and the softmax temperature that makes an answer's
confidence match how often such answers are right (expected calibration error, ECE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cluster.errors import ShardqaError
from models.decoding import log_partition

#: temperatures tried when fitting (log-spaced); the best by negative log-likelihood wins
TEMPERATURES = tuple(float(t) for t in np.geomspace(0.05, 20.0, 121))
CALIBRATION_BINS = 10


def fit_null_threshold(diffs: Sequence[float], answer_f1: Sequence[float],
                       null_f1: Sequence[float]) -> tuple[float, float]:
    """(threshold, mean F1): "no answer" when ``null - span > threshold`` scores best.

    ``diffs[i]`` is question i's null score minus its best span score; ``answer_f1`` and
    ``null_f1`` what it scores answering or abstaining. Ties keep the highest threshold
    (abstain least)."""
    d = np.asarray(diffs, dtype=np.float64)
    if not d.size:
        raise ValueError("no questions to fit a null threshold on")
    gain = np.asarray(null_f1, dtype=np.float64) - np.asarray(answer_f1, dtype=np.float64)
    order = np.argsort(-d, kind="stable")  # abstaining flips questions from the top diff down
    totals = float(np.sum(answer_f1)) + np.concatenate([[0.0], np.cumsum(gain[order])])
    best = int(np.argmax(totals))
    ranked = d[order]
    if best == 0:
        threshold = float(ranked[0])
    elif best == len(ranked):
        threshold = float(ranked[-1]) - 1.0
    else:
        threshold = float((ranked[best - 1] + ranked[best]) / 2)
    return threshold, float(totals[best] / len(d))


def confidences(candidates: Sequence[Sequence[float]], temperature: float) -> np.ndarray:
    """Each question's best candidate's probability among its candidates (highest first)."""
    return np.asarray([np.exp(c[0] / temperature - log_partition(np.asarray(c), temperature))
                       if len(c) else 0.0 for c in candidates], dtype=np.float64)


def fit_temperature(candidates: Sequence[Sequence[float]], correct: Sequence[float]) -> float:
    """The temperature whose confidences best predict ``correct`` (negative log-likelihood)."""
    return best_temperature(lambda t: confidences(candidates, t), correct)


def best_temperature(probabilities_at: Callable[[float], Sequence[float]],
                     correct: Sequence[float]) -> float:
    """The temperature of TEMPERATURES whose probabilities (``probabilities_at(t)``, one per
    question) best predict ``correct``, by negative log-likelihood (the first of equals)."""
    y = np.asarray(correct, dtype=np.float64)
    if not y.size:
        raise ValueError("no questions to fit a temperature on")
    best, best_nll = 1.0, np.inf
    for t in TEMPERATURES:
        p = np.clip(probabilities_at(t), 1e-9, 1 - 1e-9)
        nll = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        if nll < best_nll:
            best, best_nll = t, nll
    return best


def reliability(conf: Sequence[float], correct: Sequence[float], bins: int = CALIBRATION_BINS
                ) -> tuple[float, list[dict]]:
    """(expected calibration error, per-bin rows): ECE = sum over equal-width confidence
    bins of (share of questions) x |accuracy - mean confidence|."""
    c = np.asarray(conf, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    which = np.minimum((c * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            acc, mean = float(y[inside].mean()), float(c[inside].mean())
            ece += n / len(c) * abs(acc - mean)
            rows.append({"bin": b, "count": n, "accuracy": acc, "confidence": mean})
    return float(ece), rows


def reliability_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]],
                     path: Path, title: str) -> Path:
    """A reliability diagram (accuracy against confidence per bin), one line per curve
    (e.g. before / after the fitted temperature), written as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ShardqaError("a reliability plot needs matplotlib: pip install "
                           "'shardqa[bench]'", exit_code=2) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect")
    for label, (conf, correct) in curves.items():
        ece, rows = reliability(conf, correct)
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                label=f"{label} (ECE {100 * ece:.1f})")
    ax.set(xlabel="confidence", ylabel="exact match", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- open mode: choosing the answer across passages, and its confidence -----------------------

#: retrieval weights and temperatures tried when fitting the open-mode answer choice
OPEN_WEIGHTS = tuple(float(w) for w in np.arange(0.0, 16.01, 1.0))
OPEN_TEMPERATURES = tuple(float(t) for t in np.geomspace(0.5, 16.0, 31))


def open_scores(span: Sequence[float], retrieval: Sequence[float], weight: float
                ) -> np.ndarray:
    """Each candidate span's answer score across passages: the reader's span score (start +
    end logit) plus ``weight`` x its passage's retrieval feature."""
    return np.asarray(span, dtype=np.float64) + weight * np.asarray(retrieval, dtype=np.float64)


def open_probabilities(scores: Sequence[float], temperature: float) -> np.ndarray:
    """softmax(score / temperature) over a question's candidate spans (every passage read)."""
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    if not z.size:
        return z
    z = np.exp(z - z.max())
    return z / z.sum()


def pooled(probabilities: Sequence[float], keys: Sequence[str]) -> np.ndarray:
    """Each candidate's answer probability: the sum over the candidates with its key (its
    normalised text: the same answer found in several passages, or twice in one, is one
    answer); an empty key pools with nothing."""
    total: dict[str, float] = {}
    for p, key in zip(probabilities, keys, strict=True):
        if key:
            total[key] = total.get(key, 0.0) + float(p)
    return np.asarray([total[key] if key else float(p)
                       for p, key in zip(probabilities, keys, strict=True)], dtype=np.float64)


def choose(span: Sequence[float], retrieval: Sequence[float], keys: Sequence[str],
           weight: float, temperature: float) -> tuple[int, float]:
    """(index, probability) of the answer: the answer (key) with the highest pooled
    probability, shown at its best-scoring candidate (ties: the higher score, then the
    first)."""
    scores = open_scores(span, retrieval, weight)
    answer = pooled(open_probabilities(scores, temperature), keys)
    best = max(range(len(scores)), key=lambda i: (answer[i], scores[i], -i))
    return best, float(answer[best])


def answer_probability(span: Sequence[float], retrieval: Sequence[float],
                       keys: Sequence[str], weight: float, temperature: float, index: int
                       ) -> float:
    """Candidate ``index``'s answer probability (pooled over its key) at ``temperature``."""
    scores = open_scores(span, retrieval, weight)
    return float(pooled(open_probabilities(scores, temperature), keys)[index])


def fit_open_choice(questions: Sequence[tuple], weights: Sequence[float] = OPEN_WEIGHTS,
                    temperatures: Sequence[float] = OPEN_TEMPERATURES
                    ) -> tuple[float, float, float]:
    """(weight, choice temperature, mean F1): the answer choice with the best F1.

    ``questions``: (span scores, retrieval features, keys, F1 of each candidate) per question
    (a question without candidates scores 0). The choice temperature says how much an
    answer's other occurrences add to its best one. Ties keep the first (smallest) weight,
    then temperature."""
    if not questions:
        raise ValueError("no questions to fit the answer choice on")
    best = (float(weights[0]), float(temperatures[0]), -1.0)
    for w in weights:
        for t in temperatures:
            f1 = float(np.mean([q[3][choose(q[0], q[1], q[2], w, t)[0]] if len(q[0]) else 0.0
                                for q in questions]))
            if f1 > best[2] + 1e-12:
                best = (float(w), float(t), f1)
    return best


def fit_open_temperature(questions: Sequence[tuple], chosen: Sequence[int | None],
                         correct: Sequence[float], weight: float) -> float:
    """The confidence temperature: the one whose pooled probabilities of the ``chosen``
    candidates best predict ``correct`` (their exact match), by negative log-likelihood."""
    return best_temperature(
        lambda t: [answer_probability(q[0], q[1], q[2], weight, t, c) if c is not None else 0.0
                   for q, c in zip(questions, chosen, strict=True)], correct)
