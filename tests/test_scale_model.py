"""bench/scale_model.py: the scale model's quick run on real clusters (real redis-server,
real workers with the tiny reader and encoder, the real API) writes every figure the README
extrapolates from. Its 1- and 2-master stacks are what the phase compares, not the 3 masters
of the pipeline tests. Nothing here asserts a time."""

from __future__ import annotations

from bench import corpus, scale_model
from bench.scale_model import ScaleSettings, category, extrapolate, run_scale


def test_keys_are_sized_by_what_they_hold():
    assert category(b"sq:{p3.0}:ix:t:tower") == "bm25_index"
    assert category(b"sq:{p3.0}:ix:wins") == "windows"
    assert category(b"sq:{p3.0}:psg:abc") == "passage"
    assert category(b"sq:{p3.0}:doc:abc") == "passage_text_metadata"
    assert category(b"sq:{p3.0}:vs") == "vectors"
    assert category(b"sq:{p3.0}:ingest") == "streams"
    assert category(b"sq:{p3.0}:model:r:1:chunk:0") == "models"
    assert category(b"sq:qa:5:what") == "other"


def test_the_model_counts_masters_for_memory_and_for_retrieval_time():
    memory = {"bytes_per_passage": {"bm25_index": 9, "windows": 2000, "passage_text_metadata": 9,
                                    "vectors": 9}}
    row = {"bytes_per_passage": {"bm25_index": 3000, "windows": 0,
                                 "passage_text_metadata": 1000, "vectors": 1000},
           "passages_in_partition": 100_000, "rank_k100": {"server_us_per_item": 15_000},
           "vsim_count100": {"server_us_per_item": 5_000}}
    model = extrapolate(memory, [row])
    assert model["bytes_per_passage_sum"] == 7000  # windows from the tokenizing stack
    # 10 M x 7 kB = 70 GB over 16 GB x 0.6 usable: 8 masters, 16 nodes with a replica each
    assert model["masters_for_memory"]["10000000"] == {"data_gb": 70.0, "masters": 8,
                                                       "nodes_with_replicas": 16}
    # 100 partitions of 100k x 20 ms = 2,000 ms of Redis per question: 100 masters at 20 ms
    assert model["masters_for_retrieval_time"]["10000000"]["100000"] == {
        "partitions": 100, "redis_ms_per_question": 2000, "masters_for_budget": 100}


def test_the_quick_run_writes_every_field(tmp_path, tiny_artifact, tiny_encoder_artifact):
    settings = ScaleSettings.for_run(True, partition_sizes=(300, 600), memory_documents=20,
                                     throughput_documents=10, throughput_questions=12,
                                     timed_questions=8, seed_vectors=20)
    docs = corpus.dev_documents()
    questions = [q.question for q in corpus.dev_questions()][:80]
    out = run_scale(settings, tmp_path, artifact=tiny_artifact, encoder=tiny_encoder_artifact,
                    dev_documents=docs[:2], distractors=docs[2:40], questions=questions,
                    say=lambda _m: None)
    assert set(out["elapsed_s"]) == {"memory", "partition_growth", "per_master"}

    memory = out["memory"]
    assert memory["passages"] > 0
    for cat in scale_model.PER_PASSAGE:  # tokenized, indexed and embedded: all four held
        assert memory["bytes_per_passage"][cat] > 0, cat

    growth = out["partition_growth"]
    assert [r["target"] for r in growth] == [300, 600]
    for row in growth:
        assert row["passages_in_partition"] >= row["target"]
        assert row["bytes_per_passage"]["bm25_index"] > 0
        assert row["bytes_per_passage"]["vectors"] > 0
        assert row["bytes_per_passage"]["windows"] == 0  # this worker only indexes
        for kind, calls in (("rank_k5", 2), ("rank_k100", 2), ("vsim_count100", 1)):
            assert row[kind]["client_ms"]["n"] == 8
            assert row[kind]["server_calls_per_item"] == calls  # stats + rank; one VSIM
            assert row[kind]["server_us_per_item"] > 0

    stacks = out["per_master"]
    assert [r["masters"] for r in stacks] == [1, 2]
    for row in stacks:
        assert row["answered"] == row["questions"] == 12
        assert row["questions_per_s"] > 0
        assert {"api", "worker", "redis"} <= set(row["cpu_ms_per_question"])

    model = out["model"]
    for n in ("10000000", "100000000"):
        assert model["masters_for_memory"][n]["masters"] >= 1
        assert set(model["masters_for_retrieval_time"][n]) == {
            str(r["passages_in_partition"]) for r in growth}
    assert model["per_core"]["masters"] == 2
    assert model["per_core"]["questions_per_s_per_core"]["worker"] > 0
