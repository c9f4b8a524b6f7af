"""The orchestrator: stages are functions of the frozen config and earlier stages' outputs.

Each stage's arrays are cached in ``RUN/.cache/<stage>.npz`` beside a key (a hash of the dataset
fingerprint, the config fields it reads and its upstream keys); a rerun skips a stage whose key is
unchanged, so an interrupted run resumes where it stopped. Final artifacts are written to temporary
names and renamed; the manifest records each stage's status and timing.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from audit import __version__
from audit.config import RunConfig, resolve_defaults, validate_config
from audit.data import TEST, TRAIN, AuditDataset, inject_noise, load_dataset
from audit.device import resolve_device
from audit.io import load_arrays, read_json, save_arrays, write_json
from audit.signals.canaries import make_canaries
from audit.train.engine import TrainSpec, train_model
from audit.train.models import build_model

# The config fields each stage reads (its cache key): a natural model does not depend on robust
# training options and vice versa, so changing --robust-epochs retrains only the robust models.
COMMON_KEYS = ("arch", "width", "weight_decay", "seed", "canary_rate", "noise", "noise_kind",
               "norm", "eps", "eval_steps", "eval_restarts")
NATURAL_KEYS = COMMON_KEYS + ("epochs", "batch_size", "lr", "tracin_checkpoints")
ROBUST_KEYS = COMMON_KEYS + ("robust_epochs", "robust_batch_size", "robust_lr", "step_size", "steps", "eps_warmup")
TRADES_KEYS = ROBUST_KEYS + ("trades_beta",)
CV_KEYS = ("arch", "width", "cv_epochs", "cv_batch_size", "cv_lr", "weight_decay", "seed", "folds", "repeats",
           "canary_rate")
PAIR_KEYS = ("knn_k", "pairs_per_test", "tracin_checkpoints")
AUG_KEYS = ("arch", "aug_width", "weight_decay", "seed", "canary_rate", "noise", "noise_kind", "augment",
            "aug_epochs", "batch_size", "lr")


# Bumped when a stage's algorithm changes, so a rerun recomputes it instead of reusing old outputs
# (training v2: adversarial accuracy counts every iterate of every restart, PGD.fooled).
STAGE_VERSIONS = {"crossval": 2, "train_natural": 2, "train_pgd": 2, "train_trades": 2, "train_fgsm": 2}


class Run:
    """The state one ``audit run`` works on: paths, resolved config, data, device, stage bookkeeping."""

    def __init__(self, cfg: RunConfig, out: Path, ds: AuditDataset, device: torch.device, progress: bool):
        self.cfg, self.out, self.ds, self.device, self.progress = cfg, out, ds, device, progress
        self.cache = out / ".cache"
        self.ckpt = out / "checkpoints"
        self.keys: dict[str, str] = {}
        self.stages: dict[str, dict] = {}
        self.fingerprint = ds.fingerprint()
        tr, te = ds.split_indices(TRAIN), ds.split_indices(TEST)
        self.train_rows, self.test_rows = tr, te
        c_img, c_lab, c_src = make_canaries(ds.images[tr], ds.labels[tr], ds.num_classes, cfg.canary_rate, cfg.seed)
        self.canary_source = c_src
        self.train_images = torch.from_numpy(np.concatenate([np.asarray(ds.images[tr]), c_img]))
        self.train_labels = np.concatenate([ds.labels[tr], c_lab]).astype(np.int64)
        self.is_canary = np.r_[np.zeros(len(tr), bool), np.ones(len(c_lab), bool)]
        # cross-validation groups: each canary shares its source image's group
        self.cv_groups = np.r_[np.arange(len(tr)), c_src]
        self.test_images = torch.from_numpy(np.asarray(ds.images[te]))
        self.test_labels = ds.labels[te].astype(np.int64)

    # -- stage bookkeeping ---------------------------------------------------------------------
    def stage(self, name: str, keys: tuple[str, ...], upstream: tuple[str, ...], fn: Callable[[], dict]) -> dict:
        """Run ``fn`` unless ``.cache/<name>.npz`` holds outputs for the same inputs and config."""
        tag = f"{name}@v{STAGE_VERSIONS[name]}" if name in STAGE_VERSIONS else name
        h = hashlib.sha256(json.dumps([tag, self.fingerprint, self.cfg.hash(keys),
                                       [self.keys[u] for u in upstream]]).encode()).hexdigest()[:16]
        self.keys[name] = h
        arrays_path, key_path = self.cache / f"{name}.npz", self.cache / f"{name}.json"
        if arrays_path.exists() and key_path.exists() and read_json(key_path).get("key") == h:
            self.stages[name] = {"status": "cached", "key": h, "seconds": 0.0}
            self.log(f"{name}: up to date, skipped")
            self.write_manifest(status="running")
            return load_arrays(arrays_path)
        self.stages[name] = {"status": "running", "key": h}
        self.write_manifest(status="running")
        t0 = time.perf_counter()
        try:
            out = fn()
        except BaseException:
            self.stages[name]["status"] = "failed"
            self.write_manifest(status="failed")
            raise
        save_arrays(arrays_path, out)
        write_json(key_path, {"key": h})
        self.stages[name] = {"status": "done", "key": h, "seconds": round(time.perf_counter() - t0, 3)}
        self.log(f"{name}: done in {self.stages[name]['seconds']:.1f} s")
        self.write_manifest(status="running")
        return out

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[audit] {msg}", file=sys.stderr, flush=True)

    def write_manifest(self, status: str, metrics: dict | None = None, extra: dict | None = None) -> dict:
        man = {
            "tool": "benign-audit",
            "version": __version__,
            "status": status,
            "config": self.cfg.to_dict(),
            "config_hash": self.cfg.hash(),
            "dataset": {
                "spec": absolute_spec(self.ds.spec), "name": self.ds.name, "fingerprint": self.fingerprint,
                "source_fingerprint": self.ds.extra.get("source_fingerprint"),
                "num_train": int(len(self.train_rows)), "num_test": int(len(self.test_rows)),
                "num_canaries": int(self.is_canary.sum()), "shape": list(self.ds.shape),
                "class_names": list(self.ds.class_names),
            },
            "device": str(self.device),
            "packages": _package_versions(),
            "stages": self.stages,
            "metrics": metrics or {},
        }
        if extra:
            man.update(extra)
        write_json(self.out / "manifest.json", man)
        return man

    # -- specs ---------------------------------------------------------------------------------
    def spec(self, method: str) -> TrainSpec:
        c = self.cfg
        return TrainSpec(method=method, arch=c.arch, width=c.width,
                         epochs=c.epochs if method == "natural" else c.robust_epochs,
                         batch_size=c.batch_size if method == "natural" else c.robust_batch_size,
                         lr=c.lr if method == "natural" else c.robust_lr,
                         weight_decay=c.weight_decay, norm=c.norm, eps=c.eps, step_size=c.step_size,
                         steps=c.steps, trades_beta=c.trades_beta, eps_warmup=0.0 if method == "natural" else c.eps_warmup,
                         seed=c.seed, tracin_checkpoints=c.tracin_checkpoints)

    def new_model(self) -> torch.nn.Module:
        return build_model(self.cfg.arch, self.ds.shape, self.ds.num_classes, self.cfg.width)


def absolute_spec(spec: str) -> str:
    """``npz:data/x.npz`` -> ``npz:/abs/data/x.npz``, so the app and reports find the data from any
    working directory; specs without a path (``digits``) are returned as they are."""
    prefix, sep, arg = spec.partition(":")
    if not sep or not arg:
        return spec
    return f"{prefix}:{Path(arg).expanduser().resolve()}"


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("torch", "torchvision", "cleanlab", "faiss-cpu", "numpy", "pandas", "pyarrow", "scikit-learn"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def prepare_dataset(cfg: RunConfig) -> AuditDataset:
    """Load ``cfg.dataset`` and inject ``cfg.noise`` into its training labels."""
    ds = load_dataset(cfg.dataset, download=cfg.download)
    # the fingerprint of the data as it lies on disk, before any injected noise: what a reader of the
    # run directory checks before it reads images (the run's ``fingerprint`` covers the noisy labels)
    ds.extra["source_fingerprint"] = ds.fingerprint()
    if cfg.noise > 0:
        confusion = None
        if cfg.noise_kind == "confusion":
            from audit.data.noise import model_confusion

            confusion = model_confusion(ds, seed=cfg.seed)
        ds = inject_noise(ds, cfg.noise, kind=cfg.noise_kind, seed=cfg.seed, confusion=confusion)
    return ds


def run_audit(cfg: RunConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Run the whole audit into ``out`` and return the manifest.

    Writes ``manifest.json``, ``examples.parquet``, ``pairs.parquet``, ``dynamics.npz`` and
    ``checkpoints/<model>.pt``. Raises :class:`audit.errors.AuditInputError` on bad input before any
    heavy work.
    """
    from audit.stages import crossval_stage, influence_stage, write_outputs

    t_start = time.perf_counter()
    validate_config(cfg)
    device = resolve_device(cfg.device)
    ds = prepare_dataset(cfg)
    n_train = int((ds.split == TRAIN).sum())
    if n_train < 2 * cfg.folds:
        from audit.errors import AuditInputError

        raise AuditInputError(f"--dataset {cfg.dataset}: {n_train} training examples, need at least {2 * cfg.folds}")
    cfg = resolve_defaults(cfg, ds.shape, n_train, device.type == "cuda")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(cfg, out, ds, device, progress)
    _drop_stale_outputs(out, cfg, run.fingerprint)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    trained = {}
    for m in cfg.models:
        keys = NATURAL_KEYS if m == "natural" else TRADES_KEYS if m == "trades" else ROBUST_KEYS
        trained[m] = run.stage(f"train_{m}", keys, (),
                               lambda m=m: train_stage(run, m))
    if cfg.augment != "none":
        trained["aug"] = run.stage("train_aug", AUG_KEYS, (), lambda: train_aug_stage(run))
    cv = run.stage("crossval", CV_KEYS + ("noise", "noise_kind"), (), lambda: crossval_stage(run))
    upstream = tuple(f"train_{m}" for m in cfg.models) + ("crossval",)
    infl = run.stage("influence", PAIR_KEYS, upstream, lambda: influence_stage(run, trained, cv))
    t0 = time.perf_counter()
    metrics, extra = write_outputs(run, trained, cv, infl)
    run.stages["write"] = {"status": "done", "seconds": round(time.perf_counter() - t0, 3)}
    metrics["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    return run.write_manifest(status="complete", metrics=metrics, extra=extra)


FINAL_OUTPUTS = ("examples.parquet", "pairs.parquet", "dynamics.npz", "report.html")


def _drop_stale_outputs(out: Path, cfg: RunConfig, fingerprint: str) -> None:
    """A run directory holds the outputs of one config and dataset: when the previous manifest says
    otherwise, its final tables go before any work starts (cached stages stay; their keys decide).
    Review decisions are never deleted."""
    man_path = out / "manifest.json"
    if not man_path.exists():
        return
    try:
        old = read_json(man_path)
    except (OSError, ValueError):
        old = {}
    same = old.get("config_hash") == cfg.hash() and old.get("dataset", {}).get("fingerprint") == fingerprint
    if not same:
        for name in FINAL_OUTPUTS:
            (out / name).unlink(missing_ok=True)


def train_aug_stage(run: Run) -> dict:
    """The augmented model: natural training on train + canaries with ``--augment`` for
    ``--aug-epochs`` at ``--aug-width``. Augmentation keeps it from memorizing noisy labels, so its
    area under the margin stays a clean noise signal to the end (``aum_aug``; Pleiss et al. 2020 train
    with augmentation too). Half the natural width by default: on 2 CPU cores that trains 3× faster,
    which buys more epochs (see :mod:`audit.config`). Only its per-example dynamics and test accuracy
    are kept."""
    from audit.train.evaluate import infer

    cfg = run.cfg
    spec = replace(run.spec("natural"), epochs=cfg.aug_epochs, width=cfg.aug_width, augment=cfg.augment,
                   tracin_checkpoints=1)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, run.ds.shape, run.ds.num_classes, cfg.aug_width)
    res = train_model(model, run.train_images, torch.as_tensor(run.train_labels), spec, device=run.device,
                      checkpoint=run.ckpt / "aug.resume.pt", desc=f"train natural, {cfg.augment} augmented",
                      progress=run.progress, compile=cfg.compile)
    acc = np.nan
    if len(run.test_images):
        acc = (infer(res.model, run.test_images, run.device)[0].argmax(1) == run.test_labels).mean()
    return {"margin": res.margin.astype(np.float16), "correct": res.correct, "test_accuracy": np.float64(acc),
            "train_seconds": np.float64(res.seconds)}


def train_stage(run: Run, method: str) -> dict:
    """Train one model on train + canaries; save its state_dict; evaluate it. Returns its arrays."""
    from audit.stages import evaluate_stage

    spec = run.spec(method)
    torch.manual_seed(run.cfg.seed)
    model = run.new_model()
    y = torch.as_tensor(run.train_labels)
    res = train_model(model, run.train_images, y, spec, device=run.device,
                      checkpoint=run.ckpt / f"{method}.resume.pt", desc=f"train {method}", progress=run.progress,
                      compile=run.cfg.compile)
    final = run.ckpt / f"{method}.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    torch.save(res.model.state_dict(), tmp)
    tmp.replace(final)
    if method == "natural":
        for i, (epoch, weight, state) in enumerate(res.tracin):
            p = run.ckpt / "tracin" / f"{method}-{i}.pt"
            p.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": epoch, "weight": weight, "state": state}, p.with_suffix(".tmp"))
            p.with_suffix(".tmp").replace(p)
    out = {"loss": res.loss.astype(np.float16), "margin": res.margin.astype(np.float16), "correct": res.correct,
           "lrs": res.lrs, "train_seconds": np.float64(res.seconds)}
    out.update(evaluate_stage(run, res.model, method))
    return out
