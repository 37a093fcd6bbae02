"""bench/cpu_budget.py: what a CPU-per-question figure is made of.

The meter reads real processes (this one and the session cluster's redis-servers) and real
``INFO commandstats``; the sampler runs the real py-spy on a real Python process. Nothing
here asserts a time: only that CPU burnt and commands sent are found where they were spent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from bench import cpu_budget
from bench.cpu_budget import CpuMeter, Proc, Sampler, profile, slow_questions


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_meter_finds_cpu_and_redis_commands_where_they_were_spent(redis_cluster):
    client = redis_cluster.client()
    try:
        local = redis_cluster.local
        servers = [Proc("redis", f"redis {n.port}", local.pid_of(n))
                   for n in local.spec().nodes]
        me = Proc("bench client", "bench client", os.getpid())
        with CpuMeter([*servers, me], client) as meter:
            _burn(0.3)
            for i in range(200):
                client.set(f"budget:{{t}}:{i}", "x")
                client.get(f"budget:{{t}}:{i}")
        got = meter.report(answered=10)
    finally:
        client.close()
    cpu = got["cpu_ms_per_question"]
    assert cpu["by_kind"]["bench client"] >= 25  # 300 ms burnt over 10 "questions"
    assert set(cpu["by_process"]) == {p.name for p in [*servers, me]}
    assert got["redis_commands"]["set"]["calls_per_question"] == pytest.approx(20, abs=0.5)
    assert got["redis_commands"]["get"]["calls_per_question"] == pytest.approx(20, abs=0.5)
    assert got["machine"]["busy_core_s"] >= 0.25
    assert cpu["ours_total"] >= cpu["by_kind"]["bench client"]


def test_a_worker_s_main_thread_is_told_apart_from_its_other_threads():
    script = textwrap.dedent("""
        import threading, time
        def burn(s):
            end = time.thread_time() + s
            while time.thread_time() < end:
                pass
        t = threading.Thread(target=burn, args=(0.6,)); t.start(); t.join()
        print("done", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "done"
        whole = cpu_budget.process_cpu_s(proc.pid)
        main = cpu_budget.main_thread_cpu_s(proc.pid)
        assert whole - main >= 0.4  # the burning thread's CPU stays in the process total
        assert main < whole
    finally:
        proc.kill()
        proc.wait()


def _stack(*frames: tuple[str, str]) -> str:
    return ";".join(f"{func} ({path}:1)" for func, path in frames)


def test_samples_go_to_the_first_stage_found_in_their_stack():
    wsgi = ("Flask.wsgi_app", "flask/app.py")
    ask = ("Asker.ask", "gears/asker.py")
    stacks = Counter({
        _stack(wsgi, ask, ("Asker.retrieve", "gears/asker.py"), ("rank", "gears/ranking.py")): 6,
        _stack(wsgi, ask, ("Asker._send", "gears/asker.py")): 2,
        _stack(wsgi, ("json_response", "api/app.py")): 1,
        _stack(("handler_thread", "waitress/task.py")): 1,
    })
    got = profile(stacks, cpu_budget.API_STAGES, cpu_ms_per_question=10.0)
    stages = {row["frame"]: row for row in got["stages"]}
    assert got["samples"] == 10
    assert stages["retrieve: BM25 stats + rank fan-out"]["share"] == 0.6
    assert stages["retrieve: BM25 stats + rank fan-out"]["cpu_ms_per_question"] == 6.0
    assert stages["send read requests (XADD)"]["share"] == 0.2
    assert stages["Flask app and JSON"]["share"] == 0.1
    assert stages["waitress HTTP"]["share"] == 0.1
    assert got["top_self"][0]["frame"] == "rank (gears/ranking.py)"
    inclusive = {row["frame"]: row["share"] for row in got["top_inclusive"]}
    assert inclusive["Flask.wsgi_app (flask/app.py)"] == 0.9


def test_the_slowest_questions_are_summarized_against_the_rest():
    records = [{"question": "q " * 5, "ms": 30.0 + i, "error": False,
                "timings_ms": {"rank": 5.0, "read": 20.0}, "passages_read": ["a"]}
               for i in range(18)]
    records += [{"question": "long " * 12, "ms": 200.0, "error": False,
                 "timings_ms": {"rank": 6.0, "read": 180.0}, "passages_read": ["a", "b"]}
                for _ in range(2)]
    got = slow_questions(records, {"a": 1, "b": 3}, share=0.1)
    assert got["slowest"]["n"] == 2 and got["rest"]["n"] == 18
    assert got["slowest"]["windows_read"] == 4 and got["rest"]["windows_read"] == 1
    assert got["slowest"]["read_ms"] == 180.0
    assert got["slowest"]["question_words"] == 12


@pytest.mark.skipif(cpu_budget.py_spy_binary() is None, reason="py-spy not installed")
def test_py_spy_samples_the_function_that_burns_the_cpu(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        def spin_here():
            x = 0
            while True:
                x += 1
        print("ready", flush=True)
        spin_here()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        target = Proc("worker", "spinner", proc.pid)
        with Sampler([target], tmp_path, rate=100) as sampler:
            time.sleep(1.5)
        assert sampler.error(target) is None
        got = profile(sampler.stacks(target), cpu_budget.WORKER_STAGES, 100.0)
    finally:
        proc.kill()
        proc.wait()
    assert got["samples"] >= 20
    assert got["top_self"][0]["frame"] == "spin_here (<string>)"
    assert got["top_self"][0]["share"] > 0.8


def test_the_bench_report_shows_the_budget_by_process_with_its_stages():
    from bench import report

    budget = {"concurrency": 16, "k": 5, "variant": "int8", "questions_per_s": 20.0,
              "machine": {"others_cores_mean": 0.1},
              "cpu_ms_per_question": {"by_process": {"api": 4.0, "worker a": 60.0},
                                      "ours_total": 64.0},
              "profiles": {"worker a": {"stages": [
                  {"frame": "reader forward (TorchScript)", "cpu_ms_per_question": 29.0}],
                  "pool_threads_cpu_ms_per_question": 30.0}}}
    md = "\n".join(report._budget(budget))
    assert "| worker a | 60.0 | reader forward (TorchScript) 29.00, torch pool threads 30.0 |" in md
    assert "| api | 4.0 |  |" in md and "**64.0**" in md
    assert report._budget(None) == []
