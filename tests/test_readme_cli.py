"""Issue 15.6: every redis-cli example in the README runs as written, as the user it names.

The README's ``redis-cli`` lines (and the ``export REDISCLI_AUTH=...`` lines that give them
their password) are run through bash and the real ``redis-cli`` binary against the test
cluster, from a folder where ``.shardqa/cluster`` is the test cluster's folder; only the port
is substituted. The read-only ``reader`` user must also be refused every write.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cluster import acl, functions, keys

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="no redis-cli binary")


def readme_examples() -> list[tuple[str, str]]:
    """(command, the output the README shows for it) for every redis-cli line, in order.

    In a ``redis-cli`` block commands start with ``$ `` and the lines after one are its
    output; elsewhere a command is a line starting with ``redis-cli`` or ``export
    REDISCLI_AUTH``, continued by a trailing backslash.
    """
    examples: list[tuple[str, str]] = []
    for lang, body in FENCE.findall(README.read_text()):
        lines = body.splitlines()
        if lang == "redis-cli":
            for line in lines:
                if line.startswith("$ "):
                    examples.append((line[2:], ""))
                elif examples:
                    command, shown = examples[-1]
                    examples[-1] = (command, (shown + "\n" + line).strip())
            continue
        command = ""
        for line in lines:
            if command or line.startswith(("redis-cli ", "export REDISCLI_AUTH")):
                command += line.rstrip("\\") + " "
                if not line.endswith("\\"):
                    examples.append((command.strip(), ""))
                    command = ""
    return examples


def test_readme_has_the_examples():
    commands = [c for c, _ in readme_examples()]
    assert sum(c.startswith("redis-cli") for c in commands) >= 6
    assert all("--user reader" in c for c in commands if c.startswith("redis-cli")), commands
    assert not any(" FCALL " in c for c in commands)  # FCALL checks keys as read-write


def run_line(line: str, auth: str, port: int, cwd: Path) -> subprocess.CompletedProcess:
    script = f"{auth}\n{line.replace('-p 7000', f'-p {port}')}"
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_every_readme_redis_cli_line_works(shared_pipeline, redis_cluster, tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (.ci/run installs it)")
    (tmp_path / ".shardqa").mkdir()
    (tmp_path / ".shardqa" / "cluster").symlink_to(Path(redis_cluster.target.directory))
    port = redis_cluster.local.startup_nodes()[0][1]
    auth = ""
    for command, shown in readme_examples():
        if command.startswith("export REDISCLI_AUTH"):
            auth = command
            check = run_line(f'{command} && test -n "$REDISCLI_AUTH"', "", port, tmp_path)
            assert check.returncode == 0, check.stderr
            continue
        out = run_line(command, auth, port, tmp_path)
        deadline = time.monotonic() + 30
        # an answer the README shows appears once the shard worker has read the question
        while shown.startswith('"{') and not out.stdout.startswith("{"):
            assert time.monotonic() < deadline, f"{command}: no answer: {out.stdout}"
            time.sleep(0.2)
            out = run_line(command, auth, port, tmp_path)
        text = out.stdout + out.stderr
        assert out.returncode == 0 and not re.search(r"NOPERM|ERR|WRONGPASS|NOAUTH|error",
                                                     text), f"{command}:\n{text}"
        if shown.startswith('"{'):
            answer = json.loads(out.stdout)
            assert answer["question"] in command and "answer" in answer
        elif shown.startswith('"pending'):
            assert out.stdout.startswith(("pending", "{")), out.stdout
        elif "shardqa_version" in command:
            assert out.stdout.strip() == functions.version()


def test_reader_may_not_write(redis_cluster):
    reader = redis_cluster.client_as("reader")
    node = reader.get_redis_connection(reader.get_primaries()[0])
    tag = "p0.0"
    writes = [
        lambda: reader.set(keys.ask_key("poisoned?"), "{}"),
        lambda: reader.set(keys.answer_cache(0, 5, "poisoned?"), "{}"),
        lambda: reader.delete(keys.ask_key("x")),
        lambda: reader.hset(keys.passage(tag, "x.0"), "text", "forged"),
        lambda: reader.xadd(keys.ingest_stream(tag), {"op": "del", "pid": "x.0"}),
        lambda: reader.xadd(keys.request_stream(tag), {"q": "x"}),
        lambda: reader.fcall("ask", 1, keys.ask_key("x")),
        lambda: reader.fcall("counts", 1, keys.index_df(tag), "x", 1),
        lambda: reader.get(keys.model_current(tag)),
        lambda: node.execute_command("KEYS", "*"),
        lambda: node.execute_command("FLUSHALL"),
        lambda: node.execute_command("CONFIG", "GET", "*"),
    ]
    for write in writes:
        with pytest.raises(Exception, match="(?i)noperm|no permissions"):
            write()
    assert reader.fcall_ro("shardqa_version", 0).decode() == functions.version()
    assert "reader" in acl.load(redis_cluster.local.dir)


def test_reader_may_vsim_where_the_server_has_vector_sets(redis_cluster):
    from cluster.capabilities import binary_has_vector_sets
    from cluster.local import find_redis_server

    if not binary_has_vector_sets(find_redis_server()):
        pytest.skip("this redis-server has no vector sets (Redis 8 has)")
    admin, reader = redis_cluster.client(), redis_cluster.client_as("reader")
    key = "sq:{p0.0}:vs"
    admin.execute_command("VADD", key, "VALUES", 2, 1.0, 0.0, "a")
    try:
        found = reader.execute_command("VSIM", key, "VALUES", 2, 1.0, 0.0)
        assert [x.decode() for x in found] == ["a"]
        with pytest.raises(Exception, match="(?i)noperm|no permissions"):
            reader.execute_command("VADD", key, "VALUES", 2, 0.0, 1.0, "b")
    finally:
        admin.delete(key)


def test_a_cluster_made_before_the_reader_role_gains_it_at_restart(tmp_path):
    from tests.conftest import start_cluster

    handle = start_cluster(tmp_path, masters=1)
    try:
        folder = handle.local.dir
        old = {role: pw for role, pw in acl.load(folder).items() if role != "reader"}
        handle.local.down()
        acl.save(folder, old)  # users.json as a cluster made before 'reader' existed
        handle.local.up()
        now = acl.load(folder)
        assert set(now) == set(acl.ROLES) and {r: now[r] for r in old} == old
        reader = handle.client_as("reader")
        assert reader.get(keys.ask_key("anything?")) is None
        with pytest.raises(Exception, match="(?i)noperm|no permissions"):
            reader.set(keys.ask_key("anything?"), "{}")
    finally:
        handle.local.down(purge=True)
