"""The paper's Figure 2a ("Toy MNIST"): label noise makes an interpolating network adversarially
vulnerable while its training error stays zero.

Setup (Sanyal et al. 2021, Section 3): one image of a 0 and one of a 1; every sample is one of the
two plus i.i.d. Gaussian pixel noise of variance σ² ∈ {0.1, 0.3, 0.5}; 4,000 training samples whose
labels are flipped at rate η; a four-layer fully connected network (three hidden ReLU layers of 256,
:class:`audit.train.models.MLP`) trained with Adam until it fits every training label (zero training
error, checked after each epoch); then ℓ∞ PGD with ε = 64/255, 400 steps of 0.01, on clean-labelled
test samples. Reported per (σ², η): adversarial, test and training error, mean and 95% confidence
band over seeds.

Choices the paper leaves open, made here:

* The two images come from ``source``: ``digits`` (scikit-learn's bundled 8×8 digits, the first 0
  and the first 1, upscaled bilinearly to 28×28 so the input has MNIST's 784 dimensions) or any
  ``--dataset`` spec holding MNIST (``npz:``/``mnist:``; the first 0 and 1 of the training split,
  used as they are).
* Noisy images are clipped to [0, 1], the valid pixel range, so that ε = 64/255 means the same as on
  images and the attack stays in the image domain.
* Exactly round(η·n) training labels are flipped (:func:`audit.data.noise.noisy_labels`); test labels are clean.
* For a given seed the clean samples are the same for every η, so the η curve is a paired comparison.
* Adversarial error is measured on the first ``n_attack`` test samples (default 250) and counts test
  samples that are misclassified already; ``eps`` may list several radii (``--quick`` adds 0.05 and
  0.1 to 64/255, where its small network is already fragile at η = 0).
* Training runs at least ``min_epochs`` (100) with Adam, then on until zero training error.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from audit.errors import AuditInputError
from audit.io import write_json
from audit.reproduce.common import band, cpu_threads, summarize, write_csv

PAPER = {  # what the paper reports for Figure 2a (read off the figure; see README)
    "claim": "training error 0 for every η; test error stays low; adversarial error rises steeply with η, "
             "more so for larger σ²",
}


@dataclass(frozen=True)
class ToyMnistConfig:
    """Everything that determines the experiment's numbers. ``eps``/``step_size`` in [0, 1] pixel units."""

    source: str = "digits"
    size: int = 28
    sigma2: tuple[float, ...] = (0.1, 0.3, 0.5)
    etas: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)
    seeds: int = 3
    n_train: int = 4000
    n_test: int = 1000
    n_attack: int = 250
    width: float = 1.0
    min_epochs: int = 100
    max_epochs: int = 400
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    eps: tuple[float, ...] = (64 / 255,)
    step_size: float | None = 0.01
    steps: int = 400

    def key(self) -> dict:
        return asdict(self)


# --quick: the same experiment, smaller (about half a minute on 2 CPU cores).
QUICK = dict(n_train=1000, n_test=500, n_attack=200, width=0.25, etas=(0.0, 0.1, 0.2), seeds=2, min_epochs=30,
             max_epochs=150, eps=(0.05, 0.1, 64 / 255), steps=30, step_size=None)


def check_config(cfg: ToyMnistConfig) -> None:
    """Every option's range, before any work."""
    if not cfg.sigma2 or any(s <= 0 for s in cfg.sigma2):
        raise AuditInputError(f"--sigma2 {cfg.sigma2}: need one or more variances > 0")
    if not cfg.etas or any(not 0 <= e < 0.5 for e in cfg.etas):
        raise AuditInputError(f"--etas {cfg.etas}: label noise rates must lie in [0, 0.5)")
    for name in ("seeds", "n_train", "n_test", "max_epochs", "batch_size", "steps"):
        if getattr(cfg, name) < 1:
            raise AuditInputError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be ≥ 1")
    if not 1 <= cfg.n_attack <= cfg.n_test:
        raise AuditInputError(f"--n-attack {cfg.n_attack}: must lie in [1, n_test = {cfg.n_test}]")
    if not cfg.eps or any(e <= 0 for e in cfg.eps) or (cfg.step_size is not None and cfg.step_size <= 0):
        raise AuditInputError(f"--eps {cfg.eps} / --step-size {cfg.step_size}: must be > 0")
    if cfg.optimizer not in ("adam", "sgd"):
        raise AuditInputError(f"--optimizer {cfg.optimizer!r}: must be adam or sgd")


def two_images(source: str, size: int) -> np.ndarray:
    """The first training image of class 0 and of class 1 in ``source``: float32 (2, 1, S, S) in [0, 1]."""
    from audit.data import TRAIN, load_dataset

    ds = load_dataset(source)
    if ds.shape[0] != 1:
        raise AuditInputError(f"--source {source!r}: needs greyscale images, found {ds.shape[0]} channels")
    tr = ds.split_indices(TRAIN)
    out = []
    for c in (0, 1):
        rows = tr[ds.labels[tr] == c]
        if len(rows) == 0:
            raise AuditInputError(f"--source {source!r}: no training image of class {c}")
        out.append(np.asarray(ds.images[rows[0]], np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out))
    if size and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.numpy()


def sample(base: torch.Tensor, n: int, sigma2: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples: class y ~ Bernoulli(1/2), image base[y] + N(0, σ²) per pixel, clipped to [0, 1]."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = base[y] + float(np.sqrt(sigma2)) * torch.randn((n, *base.shape[1:]), generator=gen)
    return x.clamp_(0, 1), y


def train_to_interpolation(x: torch.Tensor, y: torch.Tensor, cfg: ToyMnistConfig, seed: int,
                           device: torch.device) -> tuple[torch.nn.Module, int, float]:
    """Adam on (x, y) for at least ``min_epochs`` and then until every training label is fitted (or
    ``max_epochs``). Returns (model, epochs, train error).

    Stopping at the first epoch with zero training error would leave the η = 0 models after one epoch
    with near-random weights on the noise pixels and tiny margins: adversarially fragile for a reason
    that has nothing to do with label noise. A fixed minimum budget trains every η alike.
    """
    from audit.train.models import build_model

    torch.manual_seed(seed)
    model = build_model("mlp", tuple(x.shape[1:]), 2, cfg.width).to(device)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    n, err, epoch = len(y), 1.0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        for b in range(0, n, cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            err = float((model(x).argmax(1) != y).float().mean())
        if err == 0.0 and epoch >= cfg.min_epochs:
            break
    return model, epoch, err


def run_cell(base: torch.Tensor, sigma2: float, eta: float, seed: int, cfg: ToyMnistConfig,
             device: torch.device) -> list[dict]:
    """One (σ², η, seed): sample, flip, train to zero training error, measure the errors; one row per ε."""
    from audit.data.noise import noisy_labels
    from audit.train.attacks import PGD

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(10_000 * seed + int(round(1000 * sigma2)))  # same clean data for every η
    x, y = sample(base, cfg.n_train, sigma2, gen)
    xt, yt = sample(base, cfg.n_test, sigma2, gen)
    y_noisy = torch.from_numpy(noisy_labels(y.numpy(), eta, 2, seed=seed))
    model, epochs, train_err = train_to_interpolation(x, y_noisy, cfg, seed, device)
    xt, yt = xt.to(device), yt.to(device)
    with torch.no_grad():
        test_err = float((model(xt).argmax(1) != yt).float().mean())
    rows = []
    for eps in cfg.eps:
        torch.manual_seed(seed + 1)
        step = cfg.step_size if cfg.step_size is not None else 2.5 * eps / cfg.steps
        attack = PGD(eps=eps, step_size=step, steps=cfg.steps, norm="linf", random_start=True)
        xa = attack(model, xt[:cfg.n_attack], yt[:cfg.n_attack])
        with torch.no_grad():
            adv_err = float((model(xa).argmax(1) != yt[:cfg.n_attack]).float().mean())
        rows.append({"sigma2": sigma2, "eta": eta, "seed": seed, "eps": round(eps, 6), "train_error": train_err,
                     "test_error": test_err, "adversarial_error": adv_err, "epochs": epochs,
                     "flipped": int((y_noisy != y).sum())})
    for r in rows:
        r["seconds"] = round(time.perf_counter() - t0, 2)
    return rows


def run(cfg: ToyMnistConfig, out: str | Path, *, device: str = "auto", threads: int | None = None,
        progress: bool = True) -> pd.DataFrame:
    """Run every (σ², η, seed) cell into ``out`` and return the summary (one row per σ², η).

    Writes ``toy_mnist_runs.csv`` (one row per cell, rewritten after each, so a rerun with the same
    config resumes), ``toy_mnist.csv`` (mean and 95% CI over seeds), ``toy_mnist.png``,
    ``toy_mnist_samples.png`` and ``toy_mnist.json``. Cells already in ``toy_mnist_runs.csv`` from a
    run with the same settings (the σ², η and seed grids may differ) are reused.
    """
    from tqdm.auto import tqdm

    from audit.device import resolve_device

    check_config(cfg)
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = torch.from_numpy(two_images(cfg.source, cfg.size))
    runs_path, meta_path = out / "toy_mnist_runs.csv", out / "toy_mnist.json"
    done: list[dict] = []
    if runs_path.is_file() and meta_path.is_file() and _same_cells(json.loads(meta_path.read_text()).get("config"), cfg):
        done = pd.read_csv(runs_path).to_dict("records")  # cells from an earlier run with the same settings
    have = {(r["sigma2"], r["eta"], r["seed"]) for r in done}
    cells = [(s, e, k) for s in cfg.sigma2 for e in cfg.etas for k in range(cfg.seeds)]
    t0 = time.perf_counter()
    write_json(meta_path, {"experiment": "toy-mnist", "config": _jsonable(cfg), "status": "running"})
    with cpu_threads(threads):
        for s, e, k in tqdm(cells, desc="toy-mnist", unit="model", disable=None if progress else True):
            if (s, e, k) in have:
                continue
            done.extend(run_cell(base, s, e, k, cfg, dev))
            write_csv(runs_path, pd.DataFrame(done))
    runs = pd.DataFrame(done)
    cell_set = set(cells)
    runs = runs[[(r.sigma2, r.eta, r.seed) in cell_set for r in runs.itertuples()]]
    summary = summarize(runs, ["sigma2", "eta", "eps"], ["adversarial_error", "test_error", "train_error", "epochs"])
    write_csv(out / "toy_mnist.csv", summary)
    plot(summary, cfg, out / "toy_mnist.png")
    plot_samples(base, cfg, out / "toy_mnist_samples.png")
    write_json(meta_path, {"experiment": "toy-mnist", "config": _jsonable(cfg), "status": "complete",
                           "device": str(dev), "seconds": round(time.perf_counter() - t0, 1), "paper": PAPER})
    return summary


GRID = ("sigma2", "etas", "seeds")


def _same_cells(old: dict | None, cfg: ToyMnistConfig) -> bool:
    """Would a cell computed under ``old`` come out the same under ``cfg``? (The grid may differ.)"""
    if not old:
        return False
    new = _jsonable(cfg)
    return {k: v for k, v in old.items() if k not in GRID} == {k: v for k, v in new.items() if k not in GRID}


def _jsonable(cfg: ToyMnistConfig) -> dict:
    return json.loads(json.dumps(cfg.key()))


def plot(summary: pd.DataFrame, cfg: ToyMnistConfig, path: Path) -> None:
    """One panel per σ²: adversarial error (one line per ε), test and training error against η, 95% bands over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from audit.io import atomic_write_bytes

    sig = sorted(summary["sigma2"].unique())
    eps_vals = sorted(summary["eps"].unique())
    reds = plt.get_cmap("Reds")
    fig, axes = plt.subplots(1, len(sig), figsize=(4.2 * len(sig), 4.0), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], sig):
        g = summary[summary["sigma2"] == s]
        for i, eps in enumerate(eps_vals):
            ge = g[g["eps"] == eps].sort_values("eta")
            band(ax, ge["eta"], ge["adversarial_error_mean"], ge["adversarial_error_ci95"],
                 color=reds(1.0 - 0.5 * (len(eps_vals) - 1 - i) / max(1, len(eps_vals) - 1)),
                 label=f"adversarial error, ε = {eps * 255:.3g}/255")
        ge = g[g["eps"] == eps_vals[0]].sort_values("eta")
        band(ax, ge["eta"], ge["test_error_mean"], ge["test_error_ci95"], color="#1f77b4", label="test error", marker="s")
        band(ax, ge["eta"], ge["train_error_mean"], ge["train_error_ci95"], color="#2ca02c", label="training error",
             ls="--", marker="^")
        ax.set_title(f"σ² = {s:g}")
        ax.set_xticks(sorted(g["eta"].unique()), [f"{e:g}" for e in sorted(g["eta"].unique())])
        ax.set_xlabel("label noise η")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("error")
    axes[0, 0].legend(fontsize=7, loc="center right")
    seeds = int(summary["seeds"].min())
    steps = f"{cfg.steps} steps of {cfg.step_size:.3g}" if cfg.step_size else f"{cfg.steps} steps of 2.5ε/{cfg.steps}"
    fig.suptitle(f"Toy MNIST (Fig. 2a): {cfg.n_train} samples, 4-layer FC net (width {int(256 * cfg.width)}) trained to "
                 f"zero training error; ℓ∞ PGD, {steps};\nmean and 95% band over {seeds} seed{'s' if seeds > 1 else ''}",
                 fontsize=9)
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig, plt))


def plot_samples(base: torch.Tensor, cfg: ToyMnistConfig, path: Path) -> None:
    """The two clean images and one noisy sample of each per σ²."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from audit.io import atomic_write_bytes

    gen = torch.Generator().manual_seed(0)
    cols = [("clean", base)] + [(f"σ² = {s:g}", (base + float(np.sqrt(s)) * torch.randn(base.shape, generator=gen)).clamp(0, 1))
                                for s in cfg.sigma2]
    fig, axes = plt.subplots(2, len(cols), figsize=(1.6 * len(cols), 3.4), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        for i in range(2):
            axes[i, j].imshow(imgs[i, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(title, fontsize=9)
    axes[0, 0].set_ylabel("class 0")
    axes[1, 0].set_ylabel("class 1")
    fig.suptitle(f"Toy MNIST inputs (source: {cfg.source})", fontsize=9)
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig, plt))


def _png(fig, plt) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def config_from_options(quick: bool, **options) -> ToyMnistConfig:
    """The default (the paper's) config, or ``QUICK`` with ``quick``, with ``options`` (not None) on top."""
    cfg = ToyMnistConfig()
    if quick:
        cfg = replace(cfg, **QUICK)
    return replace(cfg, **{k: v for k, v in options.items() if v is not None})
