"""Batch audits: many runs from one TOML file, one sub-folder each, and a summary table.

A batch file holds ``[[run]]`` tables and an optional ``[defaults]`` table::

    [defaults]                 # any run option, applied to every run
    models = ["natural", "pgd"]
    epochs = 60

    [[run]]
    name = "digits-clean"      # required: the run's folder under --out ([A-Za-z0-9._-])
    dataset = "digits"
    noise = 0.0

    [[run]]
    name = "digits-noise20"
    noise = 0.2
    seed = 1

Keys are the run options of ``audit run`` with ``_`` for ``-`` (``robust_epochs``, ``noise_kind``);
``models`` is a list or a comma string. Precedence, lowest first: :class:`RunConfig` defaults,
``[defaults]``, the ``[[run]]`` table, flags given on the ``audit batch`` command line. Relative
paths in ``npz:``/``folder:``/``csv:``/... dataset specs are resolved against the TOML file's folder.

Everything is checked before the first training starts: TOML syntax, unknown keys, value types,
option ranges, dataset sources and paths, duplicate names. Then each run goes to ``OUT/<name>``; a
run whose ``manifest.json`` says ``complete`` for the same options is skipped, a run that fails is
recorded (``OUT/<name>/error.txt`` holds the traceback) and the batch goes on. ``OUT/summary.csv``
and ``OUT/summary.parquet`` are rewritten after every run.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import tomllib

from audit.config import OPTIONS, RunConfig, check_value, config_from_dict
from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, write_parquet

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESERVED_NAMES = ("summary.csv", "summary.parquet")
STATUSES = ("pending", "complete", "skipped", "failed")
# Columns of the summary table, in order; per-model accuracy columns follow for every model in the batch.
SUMMARY_COLUMNS = [
    "name", "status", "dataset", "models", "noise", "noise_kind", "seed",
    "num_train", "num_test", "num_examples", "num_flagged_train", "estimated_noise_rate",
    "natural_train_accuracy", "natural_test_accuracy", "natural_test_adv_accuracy",
    "robust_model", "robust_train_accuracy", "robust_test_accuracy", "robust_test_adv_accuracy",
    "noise_auroc", "noise_auprc", "noise_precision", "noise_recall",
    "wall_seconds", "run_dir", "error",
]


@dataclass(frozen=True)
class BatchRun:
    """One ``[[run]]`` table: its folder name, its config, and the options it set explicitly."""

    name: str
    config: RunConfig
    options: dict[str, Any]


# -- reading and checking the batch file ----------------------------------------------------------
def _as_key(message: str) -> str:
    """``--noise 1.1: ...`` -> ``noise 1.1: ...``: name the option as the file spells it."""
    return re.sub(r"--([a-z-]+)", lambda m: m.group(1).replace("-", "_"), message)


def _check_options(path: Path, where: str, table: Any) -> dict[str, Any]:
    """Every key and value of a ``[defaults]`` or ``[[run]]`` table, checked by the options'
    declaration (:func:`audit.config.check_value`: type, range, choices)."""
    if not isinstance(table, dict):
        raise AuditInputError(f"{path}: {where} must be a table, found {type(table).__name__}")
    out = {}
    for key, value in table.items():
        if key == "name":
            out[key] = value
            continue
        try:
            out[key] = check_value(key, value)
        except AuditInputError as e:
            raise AuditInputError(f"{path}: {where}: {_as_key(str(e))}") from None
    return out


def _resolve_dataset(spec: str, base: Path) -> str:
    """Make a relative path in ``npz:PATH``-style specs relative to the batch file's folder."""
    prefix, sep, arg = spec.partition(":")
    if not sep or not arg or prefix == "digits":
        return spec
    p = Path(arg).expanduser()
    if not p.is_absolute():
        p = (base / p).resolve()
    return f"{prefix}:{p}"


def _check_dataset(path: Path, where: str, cfg: RunConfig) -> None:
    from audit.data.sources import SOURCES

    prefix, _, arg = cfg.dataset.partition(":")
    if prefix not in SOURCES:
        raise AuditInputError(f"{path}: {where}: dataset {cfg.dataset!r}: unknown source {prefix!r} "
                              f"(known: {', '.join(sorted(SOURCES))})")
    if prefix != "digits" and not arg:
        raise AuditInputError(f"{path}: {where}: dataset {cfg.dataset!r}: {prefix} needs a path, e.g. {prefix}:PATH")
    if arg and not cfg.download and not Path(arg).exists():
        raise AuditInputError(f"{path}: {where}: dataset {cfg.dataset!r}: {arg} does not exist")


def load_batch(path: str | Path, overrides: dict[str, Any] | None = None) -> list[BatchRun]:
    """Parse and check a batch file; every problem raises :class:`AuditInputError` naming the file
    and the ``[[run]]`` (by number and name) and key. ``overrides``: options that win over the file
    (the flags given to ``audit batch``)."""
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(f"{path}: no such batch file")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise AuditInputError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise AuditInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    extra = sorted(set(doc) - {"run", "defaults"})
    if extra:
        raise AuditInputError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))} "
                              "(expected [[run]] tables and an optional [defaults] table)")
    runs = doc.get("run")
    if not runs:
        raise AuditInputError(f"{path}: no [[run]] tables")
    if not isinstance(runs, list):
        raise AuditInputError(f"{path}: 'run' must be an array of tables: write [[run]], not [run]")
    defaults = _check_options(path, "[defaults]", doc.get("defaults", {}))
    if "name" in defaults:
        raise AuditInputError(f"{path}: [defaults]: 'name' belongs in each [[run]] table")
    overrides = dict(overrides or {})
    out: list[BatchRun] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(runs, 1):
        where = f"[[run]] #{i}"
        if not isinstance(table, dict):
            raise AuditInputError(f"{path}: {where} must be a table, found {type(table).__name__}")
        name = table.get("name")
        if name is None:
            raise AuditInputError(f"{path}: {where}: missing key 'name' (the run's folder under --out)")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise AuditInputError(f"{path}: {where}: name = {name!r} must be a folder name of letters, digits, '.', '_', '-'")
        where = f"[[run]] #{i} ({name!r})"
        if name.lower() in RESERVED_NAMES:
            raise AuditInputError(f"{path}: {where}: name {name!r} is the batch's own summary file; choose another")
        if name in seen:
            raise AuditInputError(f"{path}: {where}: name {name!r} is already used by [[run]] #{seen[name]}")
        seen[name] = i
        table = _check_options(path, where, table)
        opts = {**defaults, **{k: v for k, v in table.items() if k != "name"}, **overrides}
        if "dataset" in opts and "dataset" not in overrides:
            opts["dataset"] = _resolve_dataset(opts["dataset"], path.parent)
        try:
            cfg = config_from_dict(opts)
        except AuditInputError as e:
            raise AuditInputError(f"{path}: {where}: {_as_key(str(e))}") from None
        _check_dataset(path, where, cfg)
        out.append(BatchRun(name=name, config=cfg, options=opts))
    return out


# -- running --------------------------------------------------------------------------------------
def completed_manifest(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The manifest of a finished run in ``run_dir`` made with ``cfg`` (its options left ``None``
    resolve to dataset defaults, so only the ones set must match), by the same stage algorithms, on
    the dataset now on disk (its fingerprint); else ``None``."""
    from audit.orchestrator import STAGE_VERSIONS
    from audit.rundir import check_manifest, read_manifest

    p = run_dir / "manifest.json"
    try:  # the checked run-directory reader: a damaged or foreign manifest means "run it again"
        man = check_manifest(read_manifest(p), p) if p.is_file() else None
    except (OSError, AuditInputError):
        return None
    if man is None or man.get("stage_versions") != STAGE_VERSIONS:
        return None
    have = man.get("config", {})
    for k, v in cfg.to_dict().items():
        if not OPTIONS[k].metadata["results"] or v is None:
            continue
        got = have.get(k)
        if isinstance(v, float) and isinstance(got, (int, float)):
            if not np.isclose(v, got, rtol=1e-9, atol=0):
                return None
        elif got != v:
            return None
    return man if _same_source(man, cfg) else None


def _same_source(man: dict, cfg: RunConfig) -> bool:
    """Is the dataset on disk the one this run audited (before injected noise)?"""
    from audit.data import load_dataset

    recorded = (man.get("dataset") or {}).get("source_fingerprint")
    try:
        return recorded is not None and load_dataset(cfg.dataset, download=False).fingerprint() == recorded
    except AuditInputError:
        return False


def summary_row(run: BatchRun, run_dir: Path, status: str, manifest: dict | None, error: str = "") -> dict:
    """One row of the summary table from a run's manifest (metrics are NaN for pending/failed runs)."""
    cfg = run.config
    robust = [m for m in cfg.models if m != "natural"]
    row: dict[str, Any] = {c: np.nan for c in SUMMARY_COLUMNS}
    row.update(name=run.name, status=status, dataset=cfg.dataset, models=",".join(cfg.models), noise=cfg.noise,
               noise_kind=cfg.noise_kind, seed=cfg.seed, robust_model=robust[0] if robust else "",
               run_dir=str(run_dir), error=error)
    if manifest:
        ds, m = manifest.get("dataset", {}), manifest.get("metrics", {})
        row["num_train"], row["num_test"] = ds.get("num_train", np.nan), ds.get("num_test", np.nan)
        row["num_examples"] = row["num_train"] + row["num_test"] if "num_train" in ds and "num_test" in ds else np.nan
        for k in ("num_flagged_train", "estimated_noise_rate", "noise_auroc", "noise_auprc", "noise_precision",
                  "noise_recall", "wall_seconds"):
            row[k] = m.get(k, np.nan)
        for model in cfg.models:
            for part in ("train_accuracy", "test_accuracy", "test_adv_accuracy"):
                row[f"{model}_{part}"] = m.get(f"{model}_{part}", np.nan)
        if robust:
            for part in ("train_accuracy", "test_accuracy", "test_adv_accuracy"):
                row[f"robust_{part}"] = m.get(f"{robust[0]}_{part}", np.nan)
    return row


def write_summary(out: Path, rows: list[dict], meta: dict | None = None) -> pd.DataFrame:
    """Write ``summary.csv`` and ``summary.parquet`` atomically; returns the table."""
    extra = sorted({k for r in rows for k in r} - set(SUMMARY_COLUMNS))
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS + extra)
    for c in ("num_train", "num_test", "num_examples", "num_flagged_train", "seed"):
        df[c] = pd.array(df[c], dtype="Int64")
    text = df.drop(columns=["run_dir"]).to_csv(index=False, float_format="%.4f")
    atomic_write_bytes(out / "summary.csv", text.encode())
    write_parquet(out / "summary.parquet", df, {"kind": "batch_summary", **(meta or {})})
    return df


def run_batch(
    runs: list[BatchRun],
    out: str | Path,
    *,
    progress: bool = True,
    source: str = "",
    on_event: Callable[[str, str, str], None] | None = None,
    max_concurrent: int = 1,
) -> pd.DataFrame:
    """Run every audit of ``runs`` into ``out/<name>``; return the summary table.

    A run already complete with the same options is skipped; an exception in one run is recorded
    (status ``failed``, the message in ``error``, the traceback in ``out/<name>/error.txt``) and the
    batch goes on. ``KeyboardInterrupt`` stops the batch after writing the summary.
    ``on_event(name, status, detail)`` is called as each run starts and ends. ``max_concurrent`` > 1
    runs that many audits at once (for ``--engine ray``, whose trainings run on the cluster).
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": source, "runs": [r.name for r in runs]}
    rows = [summary_row(r, out / r.name, "pending", None) for r in runs]
    write_summary(out, rows, meta)
    emit = on_event or (lambda *a: None)
    if max_concurrent <= 1:
        for i, run in enumerate(runs):
            try:
                rows[i] = _one_run(run, out / run.name, progress, emit)
            except KeyboardInterrupt:
                rows[i] = summary_row(run, out / run.name, "failed", None, "interrupted")
                write_summary(out, rows, meta)
                raise
            write_summary(out, rows, meta)
        return write_summary(out, rows, meta)
    if all(r.config.engine == "ray" for r in runs):
        # the trainings run on the cluster: the driver threads only wait on them
        pool = ThreadPoolExecutor(max_workers=max_concurrent)
        futures = {pool.submit(_one_run, run, out / run.name, False, emit): i for i, run in enumerate(runs)}
    else:
        # Local trainings share this process's torch state (the global RNG, the thread count), so two in one
        # process at once give different tables for the same options: each run gets its own process.
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=max_concurrent, mp_context=multiprocessing.get_context("spawn"))
        futures = {}
        for i, run in enumerate(runs):
            emit(run.name, "running", str(out / run.name))
            futures[pool.submit(_one_run, run, out / run.name, False, None)] = i
    try:
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for f in done:
                i = futures.pop(f)
                rows[i] = f.result()
                if isinstance(pool, ProcessPoolExecutor):
                    emit(runs[i].name, rows[i]["status"], rows[i].get("error") or "")
            write_summary(out, rows, meta)
    except KeyboardInterrupt:
        for i in futures.values():
            rows[i] = summary_row(runs[i], out / runs[i].name, "failed", None, "interrupted")
        write_summary(out, rows, meta)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return write_summary(out, rows, meta)


def _one_run(run: BatchRun, run_dir: Path, progress: bool, emit: Callable[[str, str, str], None] | None) -> dict:
    """One audit of the batch: skipped when complete, else run; a failure is recorded, not raised.
    ``emit`` None: tell nobody (a worker process; the parent reports)."""
    from audit.pipeline import run_audit

    emit = emit or (lambda *a: None)
    done = completed_manifest(run_dir, run.config)
    if done is not None:
        emit(run.name, "skipped", "already complete")
        return summary_row(run, run_dir, "skipped", done)
    emit(run.name, "running", str(run_dir))
    t0 = time.perf_counter()
    try:
        man = run_audit(run.config, run_dir, progress=progress)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one bad run must not stop the batch
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "error.txt", traceback.format_exc().encode())
        emit(run.name, "failed", msg)
        return summary_row(run, run_dir, "failed", None, msg)
    (run_dir / "error.txt").unlink(missing_ok=True)
    emit(run.name, "complete", f"{time.perf_counter() - t0:.1f} s")
    return summary_row(run, run_dir, "complete", man)
