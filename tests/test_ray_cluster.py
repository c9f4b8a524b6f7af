"""`--engine ray --ray-address` on a separately started two-node Ray cluster gives the local engine's tables.

Both nodes are `ray start --block` processes on this machine, each with its own temp dir, ports and
process group (a new OS session), so the workers of node 2 share no memory with the driver: the data
reaches them through Ray's object store. `ray stop` is never called (it stops every Ray process on the machine);
the test ends the process groups it started, then any process still naming its temp dir.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

# Small, yet every kind of training runs on Ray: natural, PGD, the cross-validation folds, and the
# health checks' retrainings (a second round of tasks). --eps skips the calibration stage.
OPTS = ["--dataset", "digits", "--noise", "0.1", "--models", "natural,pgd", "--epochs", "24", "--robust-epochs", "4",
        "--robust-lr", "0.05", "--cv-epochs", "4", "--folds", "2", "--eps", "0.1", "--threads", "1", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """n distinct ports free now (held open together while the kernel picks them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_range(n: int, taken: set[int]) -> tuple[int, int]:
    """A run of n consecutive free ports (the workers' --min-worker-port/--max-worker-port)."""
    for _ in range(200):
        lo = random.randrange(20000, 30000)
        if all(p not in taken and _bindable(p) for p in range(lo, lo + n)):
            taken.update(range(lo, lo + n))
            return lo, lo + n - 1
    raise RuntimeError("no free port range")


class Cluster:
    """A head and more nodes on this machine, each a `ray start --block` in its own session."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.procs: list[subprocess.Popen] = []
        self.taken: set[int] = set()
        self.address, self.client_port = "", 0

    def _ports(self, n: int) -> list[int]:
        while True:
            ports = _free_ports(n)
            if not self.taken & set(ports):
                self.taken.update(ports)
                return ports

    def start(self, name: str, cpus: int = 1) -> int:
        """Start node ``name`` (the first is the head); returns its node manager port (its identity)."""
        temp = self.root / name
        nm, om, agent, agent_grpc, metrics, rt_env, dash, gcs = self._ports(8)
        lo, hi = _free_range(16, self.taken)
        cmd = [shutil.which("ray") or "ray", "start", "--block", "--num-cpus", str(cpus), "--temp-dir", str(temp),
               "--disable-usage-stats", "--node-manager-port", str(nm), "--object-manager-port", str(om),
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
               "--min-worker-port", str(lo), "--max-worker-port", str(hi)]
        if not self.address:
            cmd += ["--head", "--port", str(gcs), "--include-dashboard=false", "--dashboard-port", str(dash)]
            if _has_ray_client():  # `ray start --head` would take port 10001 for the Ray client server
                self.client_port = self._ports(1)[0]
                cmd += ["--ray-client-server-port", str(self.client_port)]
        else:
            cmd += ["--address", self.address]
        log = open(self.root / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))
        self._wait_started(self.procs[-1], self.root / f"{name}.log")
        if not self.address:
            self.address = f"{ray.util.get_node_ip_address()}:{gcs}"
        return nm

    def _wait_started(self, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
        """Until `ray start` says the node is up (a driver joining earlier can hang on the GCS)."""
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`ray start` did not start ({proc.poll()}): {log.read_text()[-3000:]}")
            time.sleep(0.5)

    def nodes(self) -> list[dict]:
        """ray.nodes() of the cluster, from a driver subprocess (this process never joins Ray)."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps([{k: n[k] for k in ('NodeID', 'Alive', 'NodeManagerPort')} for n in ray.nodes()]))")
        try:
            r = subprocess.run([sys.executable, "-c", code % self.address], capture_output=True, text=True,
                               env=self.env, timeout=60)
        except subprocess.TimeoutExpired:
            return []
        if r.returncode != 0:
            return []
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wait_for(self, n: int, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"`ray start` exited with {p.returncode}: {self.logs()}")
            alive = [x for x in self.nodes() if x["Alive"]]
            if len(alive) >= n:
                return alive
            time.sleep(1)
        raise AssertionError(f"the cluster never reported {n} nodes: {self.logs()}")

    def logs(self) -> str:
        """The nodes' output, then the head's Ray client server logs (where a ray:// connection fails)."""
        files = sorted(self.root.glob("*.log")) + sorted(self.root.glob("head/session_2*/logs/ray_client_server*.err"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in files)

    def stop(self) -> None:
        """End what this cluster started, and nothing else: each node's process group (SIGTERM, then
        SIGKILL), then any process left whose command line names this cluster's temp dir."""
        for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for p in self.procs:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                time.sleep(0.2)
        for pid in _pids_naming(str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids_naming(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _has_ray_client() -> bool:
    try:
        import grpc  # noqa: F401  - what ray[client] adds
    except ImportError:
        return False
    return True


def _audit(args, env, timeout=900):
    # 900 s: under `pytest -n 2` the other worker's tests share the two cores with both nodes; a run that
    # took 52 s alone once passed 300 s there
    return subprocess.run([sys.executable, "-m", "audit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _tasks_run_by(temp: Path) -> int:
    """How many engine tasks the workers of the node with temp dir ``temp`` ran: each Ray worker logs
    ``:task_name:<function>`` to its own log file (under that node's temp dir) as it starts a task."""
    logs = temp.glob("session_*/logs/worker-*.out")
    return sum(p.read_text(errors="replace").count(":task_name:execute_remote\n") for p in logs
               if not p.parent.parent.is_symlink())


def _local_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node, one CPU each, and the local engine's run of OPTS (``cluster.local``),
    started first to run while the nodes come up."""
    out = tmp_path_factory.mktemp("ray-cluster")
    env = {**_local_env(),
           # token authentication with this cluster's own token (not ~/.ray/auth_token)
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    local = subprocess.Popen([sys.executable, "-m", "audit", "run", *OPTS, "--out", str(out / "local")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_local_env(), cwd=ROOT)
    # Short: Ray's sockets live under the temp dir, and a unix socket path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="audit-rc-", dir="/tmp"))
    c = Cluster(root, env)
    try:
        c.start("head")
        second = c.start("node2")
        assert second in {n["NodeManagerPort"] for n in c.wait_for(2)}
        c.out, c.local_proc = out, local
        yield c
    finally:
        c.stop()
        left = _pids_naming(str(root))
        shutil.rmtree(root, ignore_errors=True)
        if local.poll() is None:
            local.kill()
        local.wait()
        assert not left, f"Ray processes of the test still running: {left}"


def _local_run(c: Cluster) -> Path:
    _, err = c.local_proc.communicate(timeout=300)
    assert c.local_proc.returncode == 0, err[-3000:]
    return c.out / "local"


def _run_on(c: Cluster, address: str, name: str) -> Path:
    """``audit run --engine ray --ray-address address``; checks it ran every training on the cluster,
    some on the second node, and that its tables are the local engine's, bit for bit."""
    before = {n: _tasks_run_by(c.root / n) for n in ("head", "node2")}
    t0 = time.monotonic()
    out = c.out / name
    r = _audit(["run", *OPTS, "--engine", "ray", "--ray-address", address, "--out", str(out)], c.env)
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:] + c.logs()
    ran = {n: _tasks_run_by(c.root / n) - before[n] for n in before}
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["engine"] == "ray" and man["status"] == "complete"
    trainings = [k for k in man["stages"] if k.startswith(("train_", "crossval"))]
    assert sum(ran.values()) == len(trainings), (ran, trainings)
    assert ran["node2"] >= 1, f"no training ran on the second node: {ran}"
    print(f"{address}: {seconds:.1f} s, trainings per node {ran}")
    local = _local_run(c)
    for table in ("examples.parquet", "pairs.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(local / table), check_exact=True)
    return out


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_ray_address_on_a_two_node_cluster_matches_local_bit_for_bit(cluster):
    _run_on(cluster, cluster.address, "head-address")


@pytest.mark.slow
@pytest.mark.ray_cluster
@pytest.mark.skipif(not _has_ray_client(), reason="ray:// needs ray[client] (grpcio)")
def test_ray_client_address_matches_local_bit_for_bit(cluster):
    _run_on(cluster, f"ray://127.0.0.1:{cluster.client_port}", "ray-client")
