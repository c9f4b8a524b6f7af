"""The run configuration: one frozen dataclass, defaults chosen per dataset, flags override.

Per-dataset defaults (eps and step sizes in [0, 1] pixel units):

=============  ==========  ========  ===================  ==============================================
images         arch        epochs*   train attack         source
=============  ==========  ========  ===================  ==============================================
≤ 16×16 grey   mlp         100/40/60 eps 0.1, 5 steps     scaled down for scikit-learn's 8×8 digits (0..16 grey levels)
MNIST-like     mnist_cnn   15/8/10   eps ≤ 0.3, 2 steps   Madry et al. 2018 / the paper: eps 0.3 (paper: 30 steps)
colour         airbench    30/12/8   eps ≤ 8/255, 3 steps airbench94's net (Jordan 2024) at width 0.25; radius of
                                                          Madry et al. 2018, 3 steps of 2.5·eps/3
colour, named  resnet18    40/30/15  eps 8/255, 7 steps   ``--arch resnet18``: Madry et al. 2018 / Rice et al. 2020
=============  ==========  ========  ===================  ==============================================

The colour default (:data:`COLOUR_RECIPE`, issue #24) is a small fast net: a frozen 2×2 patch-whitening
convolution computed from the first training batch, three conv–pool–BN–GELU blocks of 16-64-64 channels
at width 0.25 (1.0, airbench94's 64-256-256, on a GPU) and a max-pooled linear head
(:class:`audit.train.models.AirBench`). On one CPU thread it trains several times as many images a
second as ResNet-18 at width 0.25 (``benchmarks/colour_speed.py throughput``). Natural model: 30 epochs
of batch 128 at peak lr 0.1 (16, scaled to 35 on 451 tinted Fashion-MNIST images, fit under 90% and
retrained at twice the epochs); PGD-AT: 12 epochs of batch 64 at lr 0.05, 3 steps of 2.5·eps/3, eps
ramped over the first 20%; cross-validation: 8 epochs; the augmented model (shift+flip): 16 epochs at
half width; weight decay 5e-4; all for 1,000 training images, scaled to smaller sets like the grey
recipes. No label smoothing: the engine's loss is plain cross-entropy, and the natural model must
memorize. ``--preset paper`` still trains ResNet-18 (unless ``--arch`` says otherwise).

The radius in this table is where a calibration starts: without ``--eps`` (or ``--preset``), the run tries
a ladder of radii downwards from it on a subset and keeps the largest at which adversarial training still
learns the classes (:mod:`audit.train.calibrate`; Fashion-MNIST gets 0.1, MNIST 0.3), whatever the
dataset is called.

(*) natural / robust / cross-validation epochs, for ``REF_ROWS`` training images or more; with fewer,
the grey recipes' epochs grow by s = ``REF_ROWS / n`` (at most 4x) and their batch sizes shrink by s
(to a power of two, at least 32, the learning rate by the square root of the batch ratio), so that a
small set gets the optimizer steps a large one gets (500 Fashion-MNIST images at 15 epochs of batch 64:
120 steps, and the natural model stayed at chance; PGD-AT at 4x the epochs of batch 128: 128 steps, and
it collapsed). The airbench colour recipe scales the same way (from 1,000 images: 451 tinted
Fashion-MNIST images at 10 PGD-AT epochs of batch 128, 40 steps, reached 0.32 test accuracy; 30 epochs
of batch 64, 0.50); the ResNet-18 recipe is not scaled: its cost on a CPU is already the limit. The
natural model trains to (near) zero training error, as in the paper; the cross-validation models (``cv_epochs``, ``cv_lr``, ``cv_batch_size``)
stop earlier: they only need good out-of-sample probabilities, which memorization does not improve.

The augmented model (``augment``: ``shift`` for grey images, ``shift+flip`` for colour, ``none`` for
images of 16×16 or less, where the MLP and a one-pixel shift help little) is a natural model at
``aug_width`` (half the natural width) trained on shifted images for ``aug_epochs`` (25 on MNIST-like
images, else the natural epochs). On 10,000 Fashion-MNIST images with 20% noise, its late AUM ranked
the noise at AUPRC 0.969 (symmetric) and 0.908 (confusion noise) at width 0.25 for 25 epochs (about
55 s on 2 cores), better than width 0.5 for 15 epochs (0.967 / 0.885, 80 s) or width 0.25 for 15
(0.962 / 0.877, 30 s); cleanlab's workflow reached 0.945 / 0.798 on the same data.

MNIST-like defaults are sized so the whole audit costs at most 3× cleanlab's cross-validation on
the same folds (``benchmarks/detection.py``): the natural model memorizes in 15 epochs at batch 64
and peak lr 0.1 (batch 128, lr 0.05 needs 30), and PGD-AT uses 2 steps of 1.25·eps for 8 epochs at
batch 128 (10 before the augmented model took its share of the budget). On 10,000 MNIST digits with
15% noise, the robust margin of PGD-AT with 2 steps × 12 epochs detected the noise as well as 6 steps
× 16 epochs (AUPRC 0.995 against 0.995) at about 40% of the cost; 3 steps × 10 epochs reached 0.994.
(PGD-AT at batch 64 for 10 epochs did not become robust: 17% adversarial test accuracy.)
``audit reproduce`` and ``--steps`` / ``--robust-epochs`` give the paper's heavier setting.

The evaluation attack is stronger than the training one: ``eval_steps`` (default 2.5× the training
steps, at least 20) with ``eval_restarts`` random restarts (2 on the tiny digits; 1 elsewhere, where
a second restart costs as much as the first and moved MNIST's adversarial accuracy by 0.001); an
example counts as broken when any iterate of any restart misclassifies it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from audit.errors import AuditInputError

AUGMENTS = ("none", "shift", "shift+flip")  # training augmentations (audit.train.engine.augment_batch)
MODEL_METHODS = ("natural", "pgd", "trades", "fgsm")
NOISE_KINDS = ("symmetric", "pair", "confusion", "mixed")
ARCHS = ("mlp", "mnist_cnn", "resnet18", "airbench")
ENGINES = ("local", "ray")

# Named recipes (``--preset``), per architecture; options given explicitly still win.
# ``paper``: Sanyal et al. 2021 train PGD-AT as Madry et al. 2018 do. MNIST-like: the paper's CNN at full
# width, l-inf eps 0.3, 30 steps of 0.01 (the DESIGN's "eps 0.3, 30 steps"), no eps ramp, 30 robust
# epochs; a natural model trained to zero training error (40 epochs at lr 0.05, batch 128). Colour:
# ResNet-18 at full width, eps 8/255, 10 steps of 2/255, 100 epochs each. Tiny images (the MLP):
# 30 steps of 0.1/12 at eps 0.1, 100 robust epochs. These cost 10-40x the defaults (README).
PRESETS = {"paper": {
    "mnist_cnn": dict(width=1.0, epochs=40, batch_size=128, lr=0.05, robust_epochs=30, robust_batch_size=128,
                      robust_lr=0.05, eps=0.3, steps=30, step_size=0.01, eps_warmup=0.0, eval_steps=100,
                      eval_restarts=2),
    "resnet18": dict(width=1.0, epochs=100, robust_epochs=100, eps=8 / 255, steps=10, step_size=2 / 255,
                     eps_warmup=0.0, eval_steps=50, eval_restarts=2),
    "mlp": dict(robust_epochs=100, steps=30, step_size=0.1 / 12, eps=0.1, eval_steps=100, eval_restarts=2),
}}


def opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False, choices: tuple | None = None, results: bool = True) -> Any:
    """A run option: its default, its help line and its valid range, in one place. The CLI flags, the
    batch TOML checks and :func:`validate_config` are all generated from these.

    ``lo``/``hi`` bound numbers (``*_open``: the bound itself is excluded); ``choices`` lists the
    allowed strings; ``results=False`` marks options that change where or how fast a run computes,
    never what it computes (left out of every hash)."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "results": results}
    return field(default=default, metadata=meta)


_DS = "(default: per kind of image, see audit/config.py)"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results. ``None`` means "pick the dataset default"."""

    dataset: str = opt("digits", "dataset spec: digits (bundled with scikit-learn), npz:PATH, mnist:ROOT, "
                       "fashion-mnist:ROOT, cifar10:ROOT, cifar100:ROOT, folder:PATH, csv:PATH, parquet:PATH")
    pred_probs: str | None = opt(None, "your own model's out-of-sample class probabilities, FILE.npy or FILE.parquet "
                                 "(N x K in dataset order, the training rows only, or keyed by example_id): "
                                 "scored as the signal given_cleanlab beside the audit's own")
    features: str | None = opt(None, "your own embeddings, FILE.npy or FILE.parquet (N x D, every example, dataset "
                               "order or keyed by example_id): used instead of the natural model's for "
                               "neighbours, pairs, near duplicates and outliers")
    models: tuple[str, ...] = opt(("natural", "pgd"), "comma list of natural, pgd, trades, fgsm; none: train "
                                  "nothing, audit --pred-probs alone (seconds)",
                                  choices=tuple(MODEL_METHODS))
    noise: float = opt(0.0, "fraction of training labels to flip (experiments)", lo=0, hi=1, hi_open=True)
    noise_kind: str = opt("symmetric", "how injected labels are flipped", choices=NOISE_KINDS)
    seed: int = opt(0, "random seed of noise, canaries, folds and training", lo=0, hi=2**31 - 1)
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N", results=False)
    download: bool = opt(False, "allow torchvision sources to download (never by default)", results=False)
    threads: int | None = opt(None, "CPU threads for torch (default: $OMP_NUM_THREADS, else 1, which never "
                              "oversubscribes a shared machine; results are bit-identical at the same --threads)",
                              lo=1, hi=1024, results=False)
    engine: str = opt("local", "where independent trainings run: local (this process) or ray", choices=ENGINES,
                      results=False)
    ray_address: str | None = opt(None, "Ray cluster to join with --engine ray (auto, ray://host:port); "
                                  "default: start Ray on this machine", results=False)
    max_image_pixels: int | None = opt(None, "refuse image files with more pixels than this "
                                       "(default: $AUDIT_MAX_IMAGE_PIXELS or 50,000,000)", lo=1, results=False)
    image_size: int | None = opt(None, "train at SIZE x SIZE pixels, every image resized (antialiased) after loading "
                                 "(default: the files' own size; large photos audit far faster at 32 or 64)",
                                 lo=4, hi=4096)
    preset: str | None = opt(None, "a named recipe: paper = the paper's PGD-AT (MNIST-like: eps 0.3, 30 steps of "
                             "0.01, 30 epochs, full width; colour: eps 8/255, 10 steps of 2/255, 100 epochs); "
                             "explicit options still win (default: the fast per-dataset recipe)",
                             choices=("paper",))
    arch: str | None = opt(None, f"architecture {_DS}", choices=ARCHS)
    width: float | None = opt(None, f"width multiplier of the architecture {_DS}", lo=0, lo_open=True, hi=64)
    epochs: int | None = opt(None, f"natural model epochs {_DS}", lo=1, hi=100000)
    robust_epochs: int | None = opt(None, f"robust model epochs {_DS}", lo=1, hi=100000)
    cv_epochs: int | None = opt(None, f"epochs of each cross-validation model {_DS}", lo=1, hi=100000)
    batch_size: int | None = opt(None, f"batch size of the natural model {_DS}", lo=1, hi=2**20)
    robust_batch_size: int | None = opt(None, "batch size of robust models (default: --batch-size)", lo=1, hi=2**20)
    cv_batch_size: int | None = opt(None, "batch size of the cross-validation models (default: --batch-size)",
                                    lo=1, hi=2**20)
    lr: float | None = opt(None, f"peak learning rate of the natural model {_DS}", lo=0, lo_open=True, hi=100)
    robust_lr: float | None = opt(None, f"peak learning rate of robust models {_DS}", lo=0, lo_open=True, hi=100)
    cv_lr: float | None = opt(None, "peak learning rate of the cross-validation models (default: --lr)",
                              lo=0, lo_open=True, hi=100)
    augment: str | None = opt(None, "augmentation of the extra, non-memorizing natural model whose AUM is a signal "
                              "(default: shift for grey images, shift+flip for colour, none for tiny images; "
                              "none skips that model)", choices=AUGMENTS)
    aug_epochs: int | None = opt(None, f"epochs of the augmented model {_DS}", lo=1, hi=100000)
    aug_width: float | None = opt(None, "width multiplier of the augmented model (default: half of --width)",
                                  lo=0, lo_open=True, hi=64)
    weight_decay: float | None = opt(None, f"SGD weight decay {_DS}", lo=0, hi=1)
    norm: str = opt("linf", "attack norm", choices=("linf", "l2"))
    eps: float | None = opt(None, "attack radius in [0,1] pixel units (8/255 = 0.0314) " + _DS, lo=0, hi=100)
    step_size: float | None = opt(None, "PGD step size in training (default: 2.5 eps / steps)", lo=0, lo_open=True,
                                  hi=100)
    steps: int | None = opt(None, f"PGD steps in training {_DS}", lo=1, hi=10000)
    eps_warmup: float | None = opt(None, f"fraction of robust epochs over which eps ramps up {_DS}", lo=0, hi=1)
    trades_beta: float = opt(6.0, "TRADES trade-off between clean and robust loss", lo=0, hi=1000)
    eval_steps: int | None = opt(None, "PGD steps of the evaluation attack (default: 2.5x --steps, at least 20)",
                                 lo=1, hi=100000)
    eval_restarts: int | None = opt(None, "random restarts of the evaluation attack " + _DS, lo=1, hi=1000)
    eval_attack: str = opt("pgd", "evaluation attack: pgd, or apgd = that PGD then AutoAttack's APGD-CE and APGD-T "
                           "(torchattacks) on the examples PGD leaves correct; both accuracies are reported",
                           choices=("pgd", "apgd"))
    folds: int = opt(4, "cross-validation folds", lo=2, hi=100)
    repeats: int = opt(1, "cross-validation repeats with new folds", lo=1, hi=100)
    subset_models: int = opt(0, "extra natural models, each on a random half of the training rows, for "
                             "Feldman-Zhang memorization and influence with finite standard errors (each costs "
                             "about 2/3 of a cross-validation fold; 8 is a good start)", lo=0, hi=1000)
    knn_k: int = opt(50, "nearest training images (FAISS) re-ranked by influence per test error", lo=1, hi=10000)
    pairs_per_test: int = opt(5, "training images kept per test error in pairs.parquet", lo=1, hi=1000)
    canary_rate: float = opt(0.03, "share of planted mislabelled copies that judge the signals", lo=0, hi=0.5,
                             hi_open=True)
    tracin_checkpoints: int = opt(4, "checkpoints of the natural model that TracIn sums over", lo=1, hi=1000)
    compile: bool = opt(False, "torch.compile the training forward (GPU, long runs)", results=False)
    precision: str = opt("auto", "arithmetic of every training and inference: auto (bf16 autocast on CUDA, float32 "
                         "on the CPU, exact and seeded), bf16 (on the CPU too: about 2x faster where it has AMX or "
                         "AVX512-BF16, slower where it has neither; results differ from float32's), fp32 "
                         "(float32 everywhere)", choices=("auto", "bf16", "fp32"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = list(self.models)
        return d

    def hash(self) -> str:
        """A hash of the options that change results (``device``, ``threads``, ``engine``... do not)."""
        return stable_hash({k: v for k, v in self.to_dict().items() if OPTIONS[k].metadata["results"]})


OPTIONS = {f.name: f for f in fields(RunConfig)}
# Options that change results yet stay None in a resolved config: no preset, the files' own image size,
# no input of the user's own model. (With --models none nothing is resolved: no model trains.)
NONE_WHEN_RESOLVED = ("preset", "image_size", "pred_probs", "features")


def stable_hash(obj: Any) -> str:
    """16 hex characters of SHA-256 over canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(name: str) -> type:
    """The Python type an option holds (``int`` for ``int | None``; ``tuple`` for ``models``)."""
    t = str(OPTIONS[name].type).replace("| None", "").strip()
    return {"int": int, "float": float, "str": str, "bool": bool}.get(t, tuple)


def check_value(name: str, value: Any, where: str = "") -> Any:
    """Check one option's value (type, finiteness, range, choices) and return it normalised; raise
    :class:`AuditInputError` naming the option otherwise. Used by the CLI, batch files and the API."""
    f = OPTIONS.get(name)
    at = f"{where}: " if where else ""
    if f is None:
        close = difflib.get_close_matches(name.replace("-", "_"), OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AuditInputError(f"{at}unknown run option {name!r}{hint}")
    m, t, label = f.metadata, base_type(name), f"{at}{flag(name)} {value!r}"
    if value is None:
        if f.default is not None:
            raise AuditInputError(f"{label}: a value is required")
        return None
    if t is tuple:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if name == "models" and isinstance(value, (list, tuple)) and (list(value) == ["none"] or not value):
            return ()  # --models none: no training, an audit of --pred-probs alone
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            raise AuditInputError(f"{label}: must be a non-empty list of names")
        bad = [v for v in value if m["choices"] and v not in m["choices"]]
        if bad:
            raise AuditInputError(f"{label}: unknown {', '.join(bad)} (known: {', '.join(m['choices'])})")
        return tuple(value)
    if t is bool:
        if not isinstance(value, bool):
            raise AuditInputError(f"{label}: must be true or false")
        return value
    if t is str:
        if not isinstance(value, str):
            raise AuditInputError(f"{label}: must be a string")
        if m["choices"] and value not in m["choices"]:
            close = difflib.get_close_matches(value, m["choices"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AuditInputError(f"{label}: must be one of {', '.join(m['choices'])}{hint}")
        return value
    return _check_number(name, value, t, label, m)


def _check_number(name: str, value: Any, t: type, label: str, m: dict) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (t is int and not float(value).is_integer()):
        raise AuditInputError(f"{label}: must be {'an integer' if t is int else 'a number'}")
    if not math.isfinite(value):
        raise AuditInputError(f"{label}: must be a finite number")
    lo, hi = m["lo"], m["hi"]
    if lo is not None and (value < lo or (m["lo_open"] and value == lo)):
        raise AuditInputError(f"{label}: must be {'>' if m['lo_open'] else '≥'} {lo}")
    if hi is not None and (value > hi or (m["hi_open"] and value == hi)):
        raise AuditInputError(f"{label}: must be {'<' if m['hi_open'] else '≤'} {hi}")
    return int(value) if t is int else float(value)


def validate_config(cfg: RunConfig) -> RunConfig:
    """Check every option before any work: one problem, one line naming the option. Returns ``cfg``."""
    for f in fields(RunConfig):
        check_value(f.name, getattr(cfg, f.name))
    if not cfg.models:
        if not cfg.pred_probs:
            raise AuditInputError("--models none trains nothing: give your model's out-of-sample probabilities "
                                  "with --pred-probs FILE")
    elif "natural" not in cfg.models:
        raise AuditInputError("--models must include natural (the embeddings and influence come from it)")
    if len(set(cfg.models)) != len(cfg.models):
        raise AuditInputError(f"--models {','.join(cfg.models)}: a model is named twice")
    if cfg.engine != "ray" and cfg.ray_address:
        raise AuditInputError("--ray-address needs --engine ray")
    return cfg


def default_threads() -> int:
    """Torch CPU threads when ``--threads`` is not given: ``OMP_NUM_THREADS`` when set, else 1.

    One thread is never pathological: on a machine other jobs share, more threads than free cores
    make OpenMP threads spin waiting for the one that lost its core (the digits quick start took over
    10 minutes with 2 threads beside other jobs, against about a minute with 1). And it is
    reproducible: torch's CPU reductions depend on the thread count, so the same seed gives the same
    bits only at the same ``--threads`` (recorded in the manifest). On idle cores of your own,
    ``--threads N`` (or ``--engine ray``, which runs the trainings side by side) is faster."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else 1


# The colour default (airbench, see the module docstring); ``--arch resnet18`` gives the ResNet-18 recipe.
COLOUR_RECIPE = dict(arch="airbench", width=0.25, epochs=30, robust_epochs=12, cv_epochs=8, aug_epochs=16,
                     batch_size=128, robust_batch_size=64, augment="shift+flip", lr=0.1, robust_lr=0.05,
                     weight_decay=5e-4, eps=8 / 255, steps=3, eps_warmup=0.2, eval_restarts=1)
REF_ROWS = {"mlp": 1300, "mnist_cnn": 6000, "airbench": 1000}  # training images the epochs are set for
MAX_EPOCH_SCALE = 4.0
MIN_SMALL_BATCH = 32


def epoch_scale(arch: str, n_train: int) -> float:
    """How much longer a small set trains (see the module docstring); 1 at ``REF_ROWS`` images or more."""
    ref = REF_ROWS.get(arch)
    return 1.0 if ref is None or n_train <= 0 else min(MAX_EPOCH_SCALE, max(1.0, ref / n_train))


def resolve_defaults(cfg: RunConfig, shape: tuple[int, int, int], n_train: int, on_gpu: bool) -> RunConfig:
    """Fill every ``None`` from the table in this module's docstring (epochs scaled by :func:`epoch_scale`)."""
    c, h, w = shape
    if h * w <= 16 * 16:
        d = dict(arch="mlp", width=1.0, epochs=100, robust_epochs=40, cv_epochs=60, batch_size=128, lr=0.2, robust_lr=0.1,
                 augment="none", weight_decay=0.0, eps=0.1, steps=5, eps_warmup=0.0, eval_restarts=2)
    elif c == 1:
        d = dict(arch="mnist_cnn", width=1.0 if on_gpu else 0.5, epochs=15, robust_epochs=8, cv_epochs=10,
                 batch_size=64, robust_batch_size=128, cv_batch_size=128, lr=0.1, robust_lr=0.05, cv_lr=0.05,
                 augment="shift", aug_epochs=25,
                 weight_decay=0.0, eps=0.3, steps=2, eps_warmup=0.4, eval_restarts=1)
    elif cfg.arch == "resnet18" or (cfg.arch is None and cfg.preset == "paper"):
        d = dict(arch="resnet18", width=1.0 if on_gpu else 0.25, epochs=40, robust_epochs=30, cv_epochs=15,
                 batch_size=256, augment="shift+flip",
                 lr=0.1, robust_lr=0.1, weight_decay=5e-4, eps=8 / 255, steps=7, eps_warmup=0.2, eval_restarts=1)
    else:
        d = dict(COLOUR_RECIPE, width=1.0 if on_gpu else COLOUR_RECIPE["width"])
    scale = epoch_scale(cfg.arch or d["arch"], n_train)
    for k in ("epochs", "robust_epochs", "cv_epochs", "aug_epochs"):
        if k in d:
            d[k] = int(round(d[k] * scale))
    for b, lr in (("batch_size", "lr"), ("robust_batch_size", "robust_lr"), ("cv_batch_size", "cv_lr")):
        if scale > 1 and b in d and lr in d:  # and smaller batches: more steps from the same passes
            nb = max(MIN_SMALL_BATCH, 2 ** round(math.log2(d[b] / scale)))
            if nb < d[b]:
                d[b], d[lr] = nb, d[lr] * math.sqrt(nb / d[b])
    if cfg.preset:
        preset = PRESETS[cfg.preset]
        # an architecture without a preset of its own (airbench) takes the attack and epochs of the
        # preset for its kind of image, at its own width
        own = preset.get(d["arch"]) or {k: v for k, v in preset["resnet18" if c > 1 else "mnist_cnn"].items()
                                        if k != "width"}
        d.update(own)
        if cfg.steps is not None or cfg.eps is not None:  # the preset's step size belongs to its steps and eps
            d.pop("step_size", None)
    if cfg.norm == "l2" and cfg.eps is None:
        d["eps"] = {"mlp": 0.5, "mnist_cnn": 2.0, "resnet18": 0.5, "airbench": 0.5}[d["arch"]]
    upd = {k: v for k, v in d.items() if getattr(cfg, k) is None}
    cfg = replace(cfg, **upd)
    upd = {}
    if cfg.cv_lr is None:
        upd["cv_lr"] = cfg.lr
    if cfg.cv_batch_size is None:
        upd["cv_batch_size"] = cfg.batch_size
    if cfg.aug_epochs is None:
        upd["aug_epochs"] = cfg.epochs
    if cfg.aug_width is None:
        upd["aug_width"] = cfg.width / 2
    if cfg.robust_batch_size is None:
        upd["robust_batch_size"] = cfg.batch_size
    if cfg.step_size is None:
        upd["step_size"] = 2.5 * cfg.eps / cfg.steps
    if cfg.eval_steps is None:
        upd["eval_steps"] = max(20, int(2.5 * cfg.steps))
    return replace(cfg, **upd)


def config_from_dict(d: dict, where: str = "") -> RunConfig:
    """A checked :class:`RunConfig` from plain values (a manifest's ``config``, a batch table)."""
    values = {k: check_value(k, v, where) for k, v in d.items()}
    return validate_config(RunConfig(**values))
