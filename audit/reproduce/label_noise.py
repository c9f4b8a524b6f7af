"""The paper's Figure 2b: on a real dataset, the adversarial error of a naturally trained network
grows with the label noise η it was trained on, at every attack radius ε, while it still fits every
training label.

For each η and seed: flip round(η·n) training labels (:func:`audit.data.inject_noise`, symmetric),
train the dataset's default natural model (:func:`audit.config.resolve_defaults`: the MLP on tiny
images, the paper's CNN on MNIST-like, ResNet-18 on colour) with the audit's training engine, and
measure on the clean test split: test error, and adversarial error under ℓ∞ PGD (``steps`` steps of
2.5·ε/steps, random start) for each ε. Training error is measured on the noisy labels the model was
trained on. The paper used MNIST (ε up to 0.3) and CIFAR-10 (ε up to 8/255); the default ε grid here is
¼, ½ and 1 × the dataset's default training ε (0.1 for 8×8 digits, 0.3 for MNIST, 8/255 for colour).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, write_json
from audit.reproduce.common import band, cpu_threads, summarize, write_csv


@dataclass(frozen=True)
class LabelNoiseConfig:
    """``None`` means the dataset's default (as ``audit run`` would pick). eps in [0, 1] pixel units."""

    dataset: str = "digits"
    etas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    eps: tuple[float, ...] | None = None
    seeds: int = 3
    arch: str | None = None
    width: float | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    steps: int = 20
    n_attack: int = 1000


QUICK = dict(etas=(0.0, 0.2, 0.4), seeds=2, epochs=30, steps=10, n_attack=300)


def check_config(cfg: LabelNoiseConfig) -> None:
    if not cfg.etas or any(not 0 <= e < 1 for e in cfg.etas):
        raise AuditInputError(f"--etas {cfg.etas}: label noise rates must lie in [0, 1)")
    if cfg.eps is not None and (not cfg.eps or any(e <= 0 for e in cfg.eps)):
        raise AuditInputError(f"--eps {cfg.eps}: need one or more radii > 0")
    for name in ("seeds", "steps", "n_attack"):
        if getattr(cfg, name) < 1:
            raise AuditInputError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be ≥ 1")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise AuditInputError(f"--epochs {cfg.epochs}: must be ≥ 1")


def _resolved(cfg: LabelNoiseConfig, ds, device: torch.device):
    from audit.config import RunConfig, resolve_defaults
    from audit.data import TRAIN

    run_cfg = RunConfig(dataset=cfg.dataset, arch=cfg.arch, width=cfg.width, epochs=cfg.epochs, lr=cfg.lr,
                        batch_size=cfg.batch_size)
    return resolve_defaults(run_cfg, ds.shape, int((ds.split == TRAIN).sum()), device.type == "cuda")


def run_cell(ds, eta: float, seed: int, rc, eps_grid: tuple[float, ...], cfg: LabelNoiseConfig,
             device: torch.device) -> list[dict]:
    """Train one natural model at noise ``eta`` and measure its errors; one row per ε."""
    from audit.data import TEST, TRAIN, inject_noise
    from audit.train.attacks import PGD
    from audit.train.engine import TrainSpec, train_model
    from audit.train.evaluate import adversarial_correct, infer
    from audit.train.models import build_model

    t0 = time.perf_counter()
    noisy = inject_noise(ds, eta, kind="symmetric", seed=seed) if eta > 0 else ds
    tr, te = noisy.split_indices(TRAIN), noisy.split_indices(TEST)
    x_tr = torch.from_numpy(np.asarray(noisy.images[tr]))
    y_tr = torch.from_numpy(noisy.labels[tr].astype(np.int64))
    x_te = torch.from_numpy(np.asarray(ds.images[te]))
    y_te = torch.from_numpy(ds.labels[te].astype(np.int64))  # clean test labels
    spec = TrainSpec(method="natural", arch=rc.arch, width=rc.width, epochs=rc.epochs, batch_size=rc.batch_size,
                     lr=rc.lr, weight_decay=rc.weight_decay, seed=seed, tracin_checkpoints=1)
    torch.manual_seed(seed)
    model = build_model(rc.arch, ds.shape, ds.num_classes, rc.width)
    res = train_model(model, x_tr, y_tr, spec, device=device, progress=False)
    model = res.model.eval()
    train_err = float((infer(model, x_tr, device)[0].argmax(1) != y_tr.numpy()).mean())
    test_err = float((infer(model, x_te, device)[0].argmax(1) != y_te.numpy()).mean())
    k = min(cfg.n_attack, len(y_te))
    rows = []
    for eps in eps_grid:
        torch.manual_seed(seed + 1)
        attack = PGD(eps=eps, step_size=2.5 * eps / cfg.steps, steps=cfg.steps, norm="linf", random_start=True)
        adv = adversarial_correct(model, x_te[:k], y_te[:k], attack, device)
        rows.append({"eta": eta, "seed": seed, "eps": eps, "adversarial_error": float(1 - adv.mean()),
                     "test_error": test_err, "train_error": train_err, "flipped": int((noisy.labels[tr] != ds.labels[tr]).sum()),
                     "epochs": rc.epochs})
    secs = round(time.perf_counter() - t0, 2)
    for r in rows:
        r["seconds"] = secs
    return rows


def run(cfg: LabelNoiseConfig, out: str | Path, *, device: str = "auto", threads: int | None = None,
        progress: bool = True) -> pd.DataFrame:
    """Every (η, seed) into ``out``; returns the summary (one row per η, ε).

    Writes ``label_noise_runs.csv`` (per model and ε; a rerun with the same config resumes),
    ``label_noise.csv`` (mean and 95% CI over seeds), ``label_noise.png`` and ``label_noise.json``.
    """
    from tqdm.auto import tqdm

    from audit.data import load_dataset
    from audit.device import resolve_device

    check_config(cfg)
    dev = resolve_device(device)
    ds = load_dataset(cfg.dataset)
    rc = _resolved(cfg, ds, dev)
    eps_grid = tuple(cfg.eps) if cfg.eps else tuple(round(f * rc.eps, 5) for f in (0.25, 0.5, 1.0))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = {**json.loads(json.dumps(asdict(cfg))), "eps": list(eps_grid), "fingerprint": ds.fingerprint()}
    runs_path, meta_path = out / "label_noise_runs.csv", out / "label_noise.json"
    done: list[dict] = []
    if runs_path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("config") == key:
        done = pd.read_csv(runs_path).to_dict("records")
    have = {(r["eta"], r["seed"]) for r in done}
    write_json(meta_path, {"experiment": "label-noise-robustness", "config": key, "status": "running"})
    t0 = time.perf_counter()
    with cpu_threads(threads):
        for eta in tqdm(cfg.etas, desc="label-noise", unit="η", disable=None if progress else True):
            for seed in range(cfg.seeds):
                if (eta, seed) in have:
                    continue
                done.extend(run_cell(ds, eta, seed, rc, eps_grid, cfg, dev))
                write_csv(runs_path, pd.DataFrame(done))
    runs = pd.DataFrame(done)
    summary = summarize(runs, ["eps", "eta"], ["adversarial_error", "test_error", "train_error"])
    write_csv(out / "label_noise.csv", summary)
    plot(summary, cfg, rc, ds, out / "label_noise.png")
    write_json(meta_path, {"experiment": "label-noise-robustness", "config": key, "status": "complete",
                           "model": {"arch": rc.arch, "width": rc.width, "epochs": rc.epochs, "lr": rc.lr,
                                     "batch_size": rc.batch_size},
                           "device": str(dev), "seconds": round(time.perf_counter() - t0, 1)})
    return summary


def plot(summary: pd.DataFrame, cfg: LabelNoiseConfig, rc, ds, path: Path) -> None:
    """Adversarial error against η, one line per ε, with test and training error for reference."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    eps_vals = sorted(summary["eps"].unique())
    cmap = plt.get_cmap("Reds")
    for i, eps in enumerate(eps_vals):
        g = summary[summary["eps"] == eps].sort_values("eta")
        band(ax, g["eta"], g["adversarial_error_mean"], g["adversarial_error_ci95"],
             color=cmap(0.45 + 0.55 * i / max(1, len(eps_vals) - 1)), label=f"adversarial, ε = {eps:.3g} ({eps * 255:.3g}/255)")
    g = summary[summary["eps"] == eps_vals[0]].sort_values("eta")
    band(ax, g["eta"], g["test_error_mean"], g["test_error_ci95"], color="#1f77b4", label="test error (clean)", marker="s")
    band(ax, g["eta"], g["train_error_mean"], g["train_error_ci95"], color="#2ca02c", label="training error (noisy labels)",
         ls="--", marker="^")
    ax.set_xticks(sorted(summary["eta"].unique()), [f"{e:g}" for e in sorted(summary["eta"].unique())])
    ax.set_xlabel("label noise η (fraction of training labels flipped)")
    ax.set_ylabel("error")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    seeds = int(summary["seeds"].min())
    ax.set_title(f"Fig. 2b on {ds.name}: natural {rc.arch} ({rc.epochs} epochs), ℓ∞ PGD {cfg.steps} steps;\n"
                 f"mean and 95% band over {seeds} seed{'s' if seeds > 1 else ''}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def config_from_options(quick: bool, **options) -> LabelNoiseConfig:
    cfg = LabelNoiseConfig()
    if quick:
        cfg = replace(cfg, **QUICK)
    return replace(cfg, **{k: v for k, v in options.items() if v is not None})
