"""The orchestrator: the one owner of a run directory's cache, manifest, lock and checkpoints.

Stages (:mod:`audit.stages`) never see it. For each stage it derives a cache key from the stage's
sub-config, its upstream keys, the dataset fingerprint and the stage's version; a rerun whose key is
unchanged loads ``.cache/<stage>.npz`` instead of recomputing, so an interrupted run resumes where it
stopped and a cached rerun keeps the earlier stage timings. One process writes a run directory at a
time (a lock file, :mod:`filelock`); a new run removes the temporary files a killed one left.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from audit.config import stable_hash
from audit.errors import AuditInputError
from audit.io import load_arrays, read_json, save_arrays, write_json
from audit.recipes import as_key
from audit.stages import state_from_arrays, train_arrays
from audit.train.engine import save_atomic

# Bumped when a stage's algorithm changes, so a rerun recomputes it instead of reusing old outputs.
# v4: canaries are flipped copies whose source leaves training (no correctly labelled twin).
STAGE_VERSIONS = {"train": 4, "train_aug": 4, "crossval": 4, "influence": 4, "apgd": 1, "calibrate": 1, "issues": 1,
                  "given": 1}
LOCK_NAME = ".audit.lock"
OWNER_NAME = ".audit.lock.owner"


class RunDirLock:
    """One writer per run directory at a time (an audit, or ``audit verify``): a :mod:`filelock` lock,
    taken without waiting, and an owner file naming the holder for the error another process gets."""

    def __init__(self, out: Path, what: str, hint: str = "", name: str | None = None):
        self.out, self.what, self.hint = Path(out), what, hint
        self.name = name or str(self.out)
        self._lock = FileLock(str(self.out / LOCK_NAME))

    def __enter__(self) -> "RunDirLock":
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            alternative = f" or {self.hint}" if self.hint else ""
            raise AuditInputError(f"{self.name}: another audit is writing this run directory "
                                  f"({_owner(self.out / OWNER_NAME)}); wait for it{alternative}") from None
        write_json(self.out / OWNER_NAME, {"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                                           "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return self

    def __exit__(self, *exc) -> None:
        (self.out / OWNER_NAME).unlink(missing_ok=True)
        self._lock.release()


class Orchestrator:
    """Cache, manifest, lock and checkpoints of one run directory ``out``."""

    def __init__(self, out: Path, fingerprint: str, *, progress: bool = True):
        self.out, self.fingerprint, self.progress = Path(out), fingerprint, progress
        self.cache, self.ckpt = self.out / ".cache", self.out / "checkpoints"
        self.keys: dict[str, str] = {}
        self.stages: dict[str, dict] = {}
        self._lock: RunDirLock | None = None
        self._previous = _previous_stages(self.out / "manifest.json")

    # -- one writer at a time ----------------------------------------------------------------------
    def __enter__(self) -> "Orchestrator":
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = RunDirLock(self.out, "run", "choose another --out", name=f"--out {self.out}")
        self._lock.__enter__()
        remove_stale_temporaries(self.out)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.__exit__(*exc)

    # -- stage bookkeeping ---------------------------------------------------------------------------
    def key(self, name: str, kind: str, config, upstream: tuple[str, ...] = ()) -> str:
        """The cache key of stage ``name`` (of algorithm ``kind``): its sub-config, upstream keys,
        the dataset fingerprint and the algorithm's version."""
        h = stable_hash([f"{kind}@v{STAGE_VERSIONS[kind]}", self.fingerprint, as_key(config),
                         [self.keys[u] for u in upstream]])
        self.keys[name] = h
        return h

    def cached(self, name: str) -> dict | None:
        """The stage's arrays when ``.cache/<name>.npz`` holds them for the current key."""
        h = self.keys[name]
        arrays, key = self.cache / f"{name}.npz", self.cache / f"{name}.json"
        try:
            if not (arrays.exists() and key.exists() and read_json(key).get("key") == h):
                return None
            out = load_arrays(arrays)
        except (OSError, ValueError):  # a damaged cache entry is recomputed, never trusted
            return None
        prev = self._previous.get(name, {})
        seconds = prev.get("seconds", 0.0) if prev.get("key") == h else None
        self.stages[name] = {"status": "cached", "key": h, "seconds": seconds}
        self.log(f"{name}: up to date, skipped")
        return out

    def start(self, name: str) -> None:
        self.stages[name] = {"status": "running", "key": self.keys[name]}

    def store(self, name: str, arrays: dict, seconds: float) -> dict:
        """Cache a finished stage's arrays (training stages: weights go to checkpoints instead)."""
        if any("." in k for k in arrays):
            self._save_weights(name, arrays)
            arrays = train_arrays(arrays)
        save_arrays(self.cache / f"{name}.npz", arrays)
        write_json(self.cache / f"{name}.json", {"key": self.keys[name]})
        self.stages[name] = {"status": "done", "key": self.keys[name], "seconds": round(seconds, 3)}
        self.log(f"{name}: done in {seconds:.1f} s")
        return arrays

    def resume_path(self, name: str) -> str:
        """The per-epoch resume checkpoint of training stage ``name``, named by its key, so that an
        interrupted training resumes only into the same stage and config. Another key's (and the older,
        unkeyed ``<model>.resume.pt``) is stale and goes."""
        model = name.removeprefix("train_")
        path = self.ckpt / f"{model}.{self.keys[name]}.resume.pt"
        for old in [*self.ckpt.glob(f"{model}.*.resume.pt"), self.ckpt / f"{model}.resume.pt"]:
            if old != path:
                old.unlink(missing_ok=True)
        return str(path)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save_weights(self, name: str, arrays: dict) -> None:
        model = name.removeprefix("train_")
        save_atomic(state_from_arrays(arrays, "state"), self.ckpt / f"{model}.pt")
        for i, w in enumerate(arrays.get("tracin_weights", [])):
            save_atomic({"weight": float(w), "state": state_from_arrays(arrays, f"tracin{i}")},
                        self.ckpt / "tracin" / f"{model}-{i}.pt")

    def with_weights(self, name: str, arrays: dict) -> dict:
        """A cached training stage's arrays plus its TracIn checkpoints (as a stage returns them)."""
        out = dict(arrays)
        model = name.removeprefix("train_")
        for i in range(len(arrays.get("tracin_weights", []))):
            d = torch.load(self.ckpt / "tracin" / f"{model}-{i}.pt", map_location="cpu", weights_only=True)
            out.update({f"tracin{i}.{k}": v.numpy() for k, v in d["state"].items()})
        return out

    # -- manifest ------------------------------------------------------------------------------------
    def write_manifest(self, base: dict, status: str, metrics: dict | None = None, extra: dict | None = None) -> dict:
        man = {**base, "status": status, "stages": self.stages, "metrics": metrics or {}}
        if extra:
            man.update(extra)
        write_json(self.out / "manifest.json", man)
        return man

    def compute_seconds(self) -> float:
        """Seconds of computation behind the results, earlier runs' cached stages included."""
        return round(sum(s.get("seconds") or 0.0 for s in self.stages.values()), 2)

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[audit] {msg}", file=sys.stderr, flush=True)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``, ``*.tmp``) a killed run left in ``out``."""
    gone = []
    for d in (out, out / ".cache", out / "checkpoints", out / "checkpoints" / "tracin"):
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    gone.append(p)
    return gone


def _owner(path: Path) -> str:
    try:
        d = json.loads(path.read_text())
        what = f"audit {d['command']}, " if isinstance(d.get("command"), str) else ""
        return f"{what}process {d['pid']} on {d['host']} since {d['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _previous_stages(path: Path) -> dict:
    try:
        stages = read_json(path).get("stages", {})
        return stages if isinstance(stages, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def numpy_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
