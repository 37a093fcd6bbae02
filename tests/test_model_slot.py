"""The model slot: a corrupt or missing reader copy is reported and retried, never given up
(issue 14.4, the worker's half). Real cluster, real tiny TorchScript reader."""

from __future__ import annotations

import time

from cluster import heartbeat, keys
from gears import health
from gears.model_slot import NO_MODEL, ModelSlot
from gears.settings import WorkerSettings
from models import store


def corrupt(client, node: str) -> tuple[str, int, bytes]:
    """Same-length corruption of one byte of ``node``'s current copy (as in the issue:
    SETRANGE ... 5000 X); returns what restores it."""
    pointer = store.current_meta(client, node)
    key = keys.model_chunk(store.tag_for(client, node), pointer["name"], pointer["version"], 0)
    offset = min(5000, client.strlen(key) - 1)
    original = client.getrange(key, offset, offset)
    client.setrange(key, offset, b"Y" if original == b"X" else b"X")
    return key, offset, original


def eventually(probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_no_model_is_said(cluster):
    slot = ModelSlot(cluster.client(), WorkerSettings())
    slot.refresh(cluster.masters[0])
    assert slot.reader is None and slot.problem == NO_MODEL


def test_corrupt_copy_is_reported_then_retried_after_a_pause_until_repaired(cluster,
                                                                            tiny_artifact):
    client = cluster.client()
    meta = store.push(client, tiny_artifact)
    store.clear_cache()
    node = cluster.masters[0]
    key, offset, original = corrupt(client, node)

    patient = ModelSlot(client, WorkerSettings(model_retry_s=3600))
    patient.refresh(node)
    assert patient.reader is None and patient.version is None
    assert patient.problem.startswith("no verified reader:") and "sha256" in patient.problem
    client.setrange(key, offset, original)  # repaired, but its pause is not over yet
    patient.refresh(node)
    assert patient.reader is None and patient.problem.startswith("no verified reader:")

    corrupt(client, node)
    eager = ModelSlot(client, WorkerSettings(model_retry_s=0.05, model_retry_max_s=0.2))
    eager.refresh(node)
    assert eager.reader is None and "sha256" in eager.problem
    client.setrange(key, offset, original)

    def loaded() -> bool:
        eager.refresh(node)
        return eager.reader is not None

    assert eventually(loaded)
    assert eager.problem is None
    assert eager.version == f"{meta['version']}:{meta['variant']}"
    assert eager.signature.endswith(f":{eager.window_tokens}:128")  # the default stride


def test_worker_without_a_verified_reader_says_so_and_recovers_without_restart(
        cluster, workers, tiny_artifact):
    client = cluster.client()
    store.push(client, tiny_artifact)
    node = cluster.masters[0]
    key, offset, original = corrupt(client, node)
    workers.start_all()
    workers.wait_ready(need_model=False)

    def beat_of_node():
        beats = [b for b in heartbeat.live_workers(client).values() if b.master == node]
        return beats[0] if beats and beats[0].no_reader else None

    beat = eventually(beat_of_node)
    assert beat.model is None and "sha256" in beat.no_reader
    report = health.status(client)
    assert any("without a verified reader" in p and "sha256" in p
               for p in health.problems(report))
    client.setrange(key, offset, original)
    workers.wait_ready(timeout=60)  # every worker has a verified reader, none restarted
    assert not health.problems(health.status(client))


def test_the_stride_is_the_artifacts_own_with_one_default():
    from models.tokenization import DEFAULT_STRIDE, window_shape

    assert window_shape({"max_seq_len": 384, "max_question_tokens": 64}) == (317, DEFAULT_STRIDE)
    assert window_shape({"max_seq_len": "256", "max_question_tokens": "32", "stride": "64"}) \
        == (221, 64)
