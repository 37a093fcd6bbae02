"""The bf16 reader variant: export and its parity gate on a tiny model, a bf16 reader served
by real workers on the real 3-master cluster, and the ``auto`` choice (bf16 only on CPUs with
fast bf16)."""

from __future__ import annotations

import pytest
import torch

from cluster import heartbeat
from gears.asker import Asker
from models import export as export_module
from models import store
from models.export import ExportError, export, read_metadata, sample_inputs, sha256_file
from models.variants import VariantError, choose_reader_variant, fast_bf16
from tests.conftest import run_cli
from tests.corpus import QUESTIONS
from tests.test_pipeline import direct_answer


@pytest.fixture(scope="module")
def bf16_artifact(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-bf16") / "tiny"
    return export(tiny_checkpoint, "tiny", out, bf16=True, max_seq_len=384)


def test_bf16_export_is_parity_checked_and_returns_float32_logits(bf16_artifact):
    meta = read_metadata(bf16_artifact)
    info = meta["variants"]["bf16"]
    assert info["file"] == "reader-bf16.pt" and info["dtype"] == "bfloat16"
    assert info["sha256"] == sha256_file(bf16_artifact / "reader-bf16.pt")
    assert "int8" not in meta["variants"]
    gate = meta["parity"]["bf16"]
    assert gate["max_span_regret"] <= gate["tolerance_span_regret"]
    assert 0.0 <= gate["span_agreement"] <= 1.0 and gate["pairs"] == 15
    module = torch.jit.load(str(bf16_artifact / "reader-bf16.pt"))
    fp32 = torch.jit.load(str(bf16_artifact / "reader.pt"))
    weights = {p.dtype for p in module.parameters()}
    assert weights == {torch.bfloat16}
    ids, mask, types = sample_inputs(3000, (1, 2, 0), batch=2, length=40, seed=0)
    with torch.inference_mode():
        start, end = module(ids, mask, types)
        ref_start, ref_end = fp32(ids, mask, types)
    assert start.dtype == end.dtype == torch.float32 and start.shape == (2, 40)
    assert torch.allclose(start, ref_start, atol=0.1) and not torch.equal(start, ref_start)
    assert torch.allclose(end, ref_end, atol=0.1)


def test_bf16_export_past_its_tolerance_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "BF16_SPAN_TOLERANCE", -1.0)
    out = tmp_path / "refused"
    with pytest.raises(ExportError, match="bf16 picks spans"):
        export(tiny_checkpoint, "tiny", out, bf16=True)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_auto_is_bf16_only_where_bf16_is_fast():
    assert choose_reader_variant("auto", {"avx2", "avx512_bf16"}) == "bf16"
    assert choose_reader_variant(None, {"amx_bf16", "amx_tile"}) == "bf16"
    assert choose_reader_variant("auto", {"avx2", "fma"}) == "fp32"
    assert choose_reader_variant("int8", {"avx512_bf16"}) == "int8"
    assert choose_reader_variant("bf16", {"avx512_bf16"}) == "bf16"
    with pytest.raises(VariantError, match="no fast bf16"):
        choose_reader_variant("bf16", {"avx2", "avx512f"})
    with pytest.raises(VariantError):
        choose_reader_variant("fp16", {"avx512_bf16"})
    assert fast_bf16(set()) is False


def test_a_bf16_served_reader_answers_like_the_reader_itself(cluster, workers, bf16_artifact):
    from loaders.writer import ingest, wait_indexed
    from tests.corpus import CORPUS

    client = cluster.client()
    pushed = store.push(client, bf16_artifact, variant="bf16")
    assert pushed["variant"] == "bf16" and pushed["dtype"] == "bfloat16"
    workers.start_all()
    workers.wait_ready()
    loaded = {b.model for b in heartbeat.live_workers(client).values()}
    assert loaded == {f"{pushed['version']}:bf16"}
    ingest(client, CORPUS, progress=False)
    wait_indexed(client, timeout=60, progress=False)
    asker = Asker(client, timeout_s=20)
    for question in QUESTIONS[:3]:
        answer = asker.ask(question)
        ranked, best = direct_answer(client, bf16_artifact, question)
        assert best is not None and answer.answer is not None
        _, pid, span = best
        assert (answer.passage_id, answer.start, answer.end) == (pid, span.start, span.end)
        assert answer.answer == span.text


@pytest.mark.parametrize(("flags", "requested", "expected"), [
    ({"avx512_bf16"}, None, {"tiny": "fp32", "bf16": "bf16"}),  # auto: bf16 where exported
    ({"avx2"}, "auto", {"tiny": "fp32", "bf16": "fp32"}),
    ({"avx2"}, "int8", {"tiny": "int8", "bf16": "int8"}),  # asked for: push says if missing
])
def test_up_pushes_what_auto_chooses_from_the_artifact(monkeypatch, tiny_artifact, bf16_artifact,
                                                       flags, requested, expected):
    """``up``/``demo``'s choice per artifact: the CPU's flags are the test's, not the host's."""
    from models import variants
    from shardqa.stack import artifact_variant

    monkeypatch.setattr(variants, "cpu_flags", lambda: set(flags))
    for name, artifact in (("tiny", tiny_artifact), ("bf16", bf16_artifact)):
        chosen = artifact_variant(artifact, requested)
        assert chosen == expected[name], (name, chosen)


def test_up_refuses_bf16_on_a_cpu_without_fast_bf16(monkeypatch, bf16_artifact):
    from models import variants
    from shardqa.stack import artifact_variant

    monkeypatch.setattr(variants, "cpu_flags", lambda: {"avx2", "avx512f"})
    with pytest.raises(VariantError, match="slower than fp32"):
        artifact_variant(bf16_artifact, "bf16")


def test_cli_exports_bf16_for_readers_only(tiny_checkpoint, tiny_encoder_checkpoint, tmp_path):
    out = tmp_path / "cli-bf16"
    done = run_cli("model", "export", str(tiny_checkpoint), "--name", "tiny", "--out", str(out),
                   "--bf16")
    assert done.returncode == 0, done.stderr
    assert "bf16: best span equals fp32's" in done.stdout
    assert set(read_metadata(out)["variants"]) == {"fp32", "bf16"}
    refused = run_cli("model", "export", str(tiny_encoder_checkpoint), "--name", "enc", "--out",
                      str(tmp_path / "enc"), "--encoder", "--bf16")
    assert refused.returncode == 2 and "--bf16 is for readers" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "enc").exists()
