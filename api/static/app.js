// The shardqa page: asks POST /qa and shows the answer in its passage. No dependencies,
// nothing fetched but this API; every value is set as text, never as HTML.
"use strict";

const TOKEN_KEY = "shardqa-token";
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// The passage text with [start, end) in a <mark>; the whole text if the offsets are off.
function highlighted(target, text, start, end) {
  target.replaceChildren();
  text = text || "";
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > text.length ||
      start >= end) {
    target.append(text);
    return;
  }
  target.append(text.slice(0, start), el("mark", text.slice(start, end)), text.slice(end));
}

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(2) : "–";
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  $("result").hidden = true;
}

function errorMessage(status, body) {
  const err = body && body.error;
  if (err && err.message) return `Error ${err.status || status}: ${err.message}`;
  return `Error ${status}: the API answered without a readable message`;
}

function showTimings(timings) {
  const list = $("timings");
  list.replaceChildren();
  for (const [stage, ms] of Object.entries(timings || {})) {
    const pair = el("div");
    pair.append(el("dt", stage), el("dd", `${Number(ms).toFixed(1)} ms`));
    list.append(pair);
  }
}

// Retrieval: {"mode": "hybrid"|"bm25", "bm25": rank, "dense": rank}, when the server sends it.
function showRetrieval(retrieval) {
  const line = $("retrieval");
  if (!retrieval || typeof retrieval !== "object") {
    line.hidden = true;
    return;
  }
  const { mode, ...ranks } = retrieval;
  const parts = Object.entries(ranks)
    .filter(([name, rank]) => mode !== "bm25" || name !== "dense" || rank != null)
    .map(([name, rank]) => (rank === null || rank === undefined ? `${name}: not found` : `${name} #${rank}`));
  const how = mode === "hybrid" ? " (hybrid)" : mode === "bm25" ? " (BM25 only)" : "";
  line.textContent = `Retrieval${how}: ${parts.join(", ")}`;
  line.hidden = false;
}

function sameAnswer(item, body) {
  const a = item.passage || {};
  const b = body.passage || {};
  return item.answer === body.answer && item.start === body.start && a.id === b.id;
}

// Further answers: the server's "answers" (with n > 1: the n best distinct answers, best
// first, each with its passage); the main answer is not repeated.
function showMore(body) {
  const more = $("more");
  const list = $("answers");
  list.replaceChildren();
  const all = Array.isArray(body.answers) ? body.answers : [];
  const rest = all.filter((item) => item && !sameAnswer(item, body));
  for (const item of rest) {
    const li = el("li");
    const passage = item.passage || {};
    const sure = typeof item.confidence === "number"
      ? `, confidence ${Math.round(100 * item.confidence)}%` : "";
    li.append(el("strong", item.answer), ` (score ${formatScore(item.score)}${sure})`);
    if (passage.title) li.append(" — ", el("em", passage.title));
    const text = el("p");
    highlighted(text, passage.text, item.start, item.end);
    li.append(text);
    list.append(li);
  }
  more.hidden = rest.length === 0;
}

function showAnswer(body) {
  $("error").hidden = true;
  const passage = body.passage || {};
  if (body.answer === null || body.answer === undefined) {
    $("answer").textContent = body.reason
      ? `No answer: ${body.reason}.`
      : "No answer: no passage in the corpus matches this question.";
    $("passage").hidden = true;
  } else {
    $("answer").textContent = body.answer;
    $("passage").hidden = false;
    $("passage-title").textContent = passage.title || passage.id || "";
    highlighted($("passage-text"), passage.text, body.start, body.end);
  }
  const meta = $("meta");
  const sure = typeof body.confidence === "number"
    ? ` · confidence ${Math.round(100 * body.confidence)}%` : "";
  meta.replaceChildren(`Score ${formatScore(body.score)}${sure} · `,
    el("span", body.cached ? "from the cache" : "computed now",
       body.cached ? "badge hit" : "badge"));
  showRetrieval(body.retrieval);
  showTimings(body.timings_ms);
  showMore(body);
  $("result").hidden = false;
}

// The request body; min_confidence only when chosen (else the server's --min-confidence).
function question() {
  const body = {
    question: $("question").value, k: Number($("k").value), n: Number($("n").value),
  };
  const least = $("min-confidence").value;
  if (least !== "") body.min_confidence = Number(least);
  return body;
}

async function ask(event) {
  event.preventDefault();
  const button = $("submit");
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  button.disabled = true;
  button.textContent = "Asking…";
  try {
    const response = await fetch("qa", {
      method: "POST", headers,
      body: JSON.stringify(question()),
    });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      showError(errorMessage(response.status, body));
      if (response.status === 401) $("auth").open = true;
    } else {
      showAnswer(body);
    }
  } catch (err) {
    showError(`Cannot reach the API: ${err.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Ask";
    $("question").focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("ask").addEventListener("submit", ask);
  $("question").focus();
});
