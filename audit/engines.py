"""Where the independent trainings of a run execute: this process (``local``) or Ray tasks (``ray``).

A :class:`Task` is a stage function (:mod:`audit.stages`) with its plain arguments (arrays and frozen
configs), so the same call runs here or on any Ray worker. ``run_all`` calls ``on_done(task, arrays,
seconds)`` as each task finishes, so the orchestrator caches every finished training at once: a run
that fails later keeps them. With Ray, a worker that dies mid-task is retried (``max_retries``); a
task that keeps failing ends the run with an error naming its stage.

How the data reaches Ray workers: by value, through Ray's object store, never by a path only the driver
can read. ``RayEngine.run_all`` ``ray.put``s each distinct positional argument of its tasks once (the
:class:`audit.stages.TrainData` every training shares is one object, not one copy per task) and passes the
references; a worker on any node fetches them from the object store. A memmapped dataset travels as its
bytes (numpy pickles a memmap's data, not its file name). The one path a task carries is its resume
checkpoint (``resume``, in the run directory): a worker whose node cannot create that directory (no
shared file system) trains without one, which changes no result, only what an interrupted task resumes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from audit.errors import AuditError, AuditInputError, describe_error

# Fault injection for resilience tests: "STAGE:MARKER" kills the process running STAGE once (the first
# time, creating MARKER); "STAGE:*" kills it every time.
FAULT_ENV = "AUDIT_FAULT_INJECT"
_RAY_INIT = threading.Lock()  # audits of one batch may start Ray from several threads at once


@dataclass
class Task:
    name: str
    fn: Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)
    num_gpus: float = 0.0
    precision: str = "auto"  # --precision, set around the call (audit.device.precision) on any worker


def execute(task: Task, threads: int) -> tuple[dict, float]:
    """Run one task with ``threads`` torch threads; returns (arrays, seconds)."""
    import torch

    from audit.device import precision

    torch.set_num_threads(max(1, threads))
    _maybe_die(task.name)
    t0 = time.perf_counter()
    with precision(task.precision):
        out = task.fn(*task.args, **task.kwargs)
    return out, time.perf_counter() - t0


def execute_remote(task: Task, threads: int, *args) -> tuple[dict, float]:
    """:func:`execute` on a Ray worker: ``args`` are the task's positional arguments, which Ray resolved
    from the object store; ``task`` comes without them."""
    kwargs = dict(task.kwargs)
    if kwargs.get("resume") and not _writable_dir(os.path.dirname(kwargs["resume"])):
        kwargs["resume"] = None  # the driver's run directory is not on this node's file system
    return execute(replace(task, args=args, kwargs=kwargs), threads)


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def _maybe_die(name: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    stage, _, marker = spec.partition(":")
    if stage != name or not marker:
        return
    if marker != "*":
        if os.path.exists(marker):
            return
        open(marker, "w").close()
    os._exit(17)  # a worker killed mid-task, as by the OOM killer or a lost node


class LocalEngine:
    """Runs tasks one after another in this process."""

    def __init__(self, threads: int):
        self.threads = threads

    def run_all(self, tasks: list[Task], on_done: Callable[[Task, dict, float], None],
                on_start: Callable[[Task], None] | None = None) -> None:
        for t in tasks:
            if on_start:
                on_start(t)
            out, seconds = execute(t, self.threads)
            on_done(t, out, seconds)


def _gist(e: BaseException) -> str:
    """The line of an exception's message that says what went wrong: its first line, or, where that only
    introduces a traceback (Ray's client ends it with ``Initialization failure from server:``), the last."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()] or [type(e).__name__]
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[-1]}"
    return first[:300]


# Ray's client proxy can lose the server it starts for a new client (it forks while gRPC threads run:
# ray-project/ray#63202); a new connection usually gets a working one.
_CLIENT_START_RACE = "Initialization failure from server"
RAY_CLIENT_ATTEMPTS = 3


def ray_address_problem(address: str | None, e: BaseException) -> str:
    """One line on why Ray could not start or join ``address``, with what to do."""
    first = _gist(e)
    if address and address.startswith("ray://"):
        try:
            import ray.util.client  # noqa: F401
            import grpc  # noqa: F401  - ray[client]'s dependency
        except ImportError:
            return (f"--ray-address {address}: connecting through ray:// needs Ray's client "
                    "(pip install 'ray[client]'); or run on a cluster node with --ray-address auto")
        return f"--ray-address {address}: could not connect ({type(e).__name__}: {first})"
    if address:
        return (f"--ray-address {address}: no Ray cluster there ({type(e).__name__}: {first}); start one with "
                "`ray start --head`, or leave out --ray-address to start Ray on this machine")
    return f"--engine ray: Ray could not start on this machine ({type(e).__name__}: {first})"


class RayEngine:
    """Runs tasks as Ray tasks, each declaring its CPUs (``threads``) and GPUs; joins the cluster at
    ``address`` (``host:port`` of a head started with ``ray start --head``, ``auto``, ``ray://host:port``)
    or starts Ray on this machine. Each distinct task argument is ``ray.put`` once and reaches the
    workers through the object store (see the module docstring); every node must be able to import
    ``audit`` (benign-audit installed there, the same version as the driver's)."""

    def __init__(self, threads: int, address: str | None = None, max_retries: int = 2):
        self.threads, self.address, self.max_retries = threads, address, max_retries

    def _init(self):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the install
            raise AuditError("--engine ray needs the ray extra: pip install 'benign-audit[ray]'") from e
        with _RAY_INIT:
            if not ray.is_initialized():
                env = {"env_vars": {k: os.environ[k] for k in (FAULT_ENV, "OMP_NUM_THREADS") if k in os.environ}}
                client = bool(self.address and self.address.startswith("ray://"))
                for attempt in range(1, RAY_CLIENT_ATTEMPTS + 1):
                    try:
                        ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                                 ignore_reinit_error=True, runtime_env=env)
                        break
                    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
                        if client and _CLIENT_START_RACE in str(e) and attempt < RAY_CLIENT_ATTEMPTS:
                            print(f"audit: Ray's client server at {self.address} failed to start for this driver "
                                  f"(attempt {attempt} of {RAY_CLIENT_ATTEMPTS}: {_gist(e)[:160]}); connecting again",
                                  file=sys.stderr, flush=True)
                            try:
                                ray.shutdown()
                            except Exception:  # noqa: BLE001 - nothing to shut down after a failed connect
                                pass
                            time.sleep(1.0 * attempt)
                            continue
                        raise AuditInputError(ray_address_problem(self.address, e)) from None
        return ray

    def run_all(self, tasks: list[Task], on_done: Callable[[Task, dict, float], None],
                on_start: Callable[[Task], None] | None = None) -> None:
        if not tasks:
            return
        ray = self._init()
        remote = ray.remote(execute_remote)
        refs: dict[int, object] = {}  # id(argument) -> its object ref: one copy in the store per argument

        def ref(arg):
            if id(arg) not in refs:
                refs[id(arg)] = ray.put(arg)
            return refs[id(arg)]

        pending = {}
        for t in tasks:
            if on_start:
                on_start(t)
            opts = dict(num_cpus=self.threads, num_gpus=t.num_gpus, max_retries=self.max_retries)
            args = [ref(a) for a in t.args]
            pending[remote.options(**opts).remote(replace(t, args=()), self.threads, *args)] = t
        failed = None
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(done[0])
            try:
                out, seconds = ray.get(done[0])
            except Exception as e:  # failed for good; the others finish and stay cached
                failed = failed or (t, e)
                continue
            on_done(t, out, seconds)
        if failed:
            t, e = failed
            raise AuditError(f"stage {t.name} failed on Ray after {self.max_retries} retries: "
                             f"{describe_error(e)}") from e


def make_engine(name: str, threads: int, address: str | None):
    return RayEngine(threads, address) if name == "ray" else LocalEngine(threads)
