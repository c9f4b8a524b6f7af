"""The training engine: natural, PGD-AT, FGSM-RS and TRADES training with per-example records.

Per-example records come from the training forward pass itself (no extra passes): for each epoch and
example, the loss, the margin (given-label logit minus the largest other logit) and correctness on the
input the model was trained on (the adversarial input for PGD-AT and FGSM, the clean input for natural
and TRADES). From these: first-learned epoch, forgetting events and area under the margin (AUM,
Pleiss et al. 2020).

Data lives on the device as uint8 and is converted per batch; a checkpoint (model, optimizer, epoch and
the records so far) is written every epoch so an interrupted training resumes where it stopped.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from audit.config import AUGMENTS
from audit.device import autocast
from audit.rows import take
from audit.train.attacks import FGSM, PGD, TradesKL

METHODS = ("natural", "pgd", "trades", "fgsm")


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random augmentation of a float batch (N, C, H, W), drawn from the CPU generator ``gen``.

    ``shift``: translate each image by up to p = max(1, round(min(H, W) / 14)) pixels in each direction
    (2 on 28×28 and 32×32), filling with zeros (pad-and-crop, as in the AUM paper's training).
    ``shift+flip``: also mirror half the images left–right (natural images, clothing; not digits).
    """
    if kind == "none":
        return x
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(AUGMENTS)})")
    n, c, h, w = x.shape
    p = max(1, round(min(h, w) / 14))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
    xp = F.pad(x, (p, p, p, p))
    rows = torch.arange(h, device=x.device)[None] + dy[:, None]
    cols = torch.arange(w, device=x.device)[None] + dx[:, None]
    out = xp[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]
    if kind == "shift+flip":
        m = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out = torch.where(m[:, None, None, None], out.flip(-1), out)
    return out


@dataclass(frozen=True)
class TrainSpec:
    """How to train one model.

    eps and step_size are in [0, 1] pixel units (8/255 ≈ 0.031). ``lr`` is the peak of a one-cycle
    schedule (linear warm-up over the first 15% of steps, then linear decay to 0) unless
    ``constant_lr``. ``eps_warmup`` ramps eps linearly from 0 over that fraction of epochs, which
    robust training on MNIST-like data needs to get started. ``augment`` is one of :data:`AUGMENTS`
    (see :func:`augment_batch`); the recorded margins are those of the augmented inputs, as in AUM.
    """

    method: str = "natural"
    arch: str = "mlp"
    width: float = 1.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    constant_lr: bool = False
    norm: str = "linf"
    eps: float = 0.1
    step_size: float = 0.025
    steps: int = 7
    trades_beta: float = 6.0
    eps_warmup: float = 0.0
    seed: int = 0
    tracin_checkpoints: int = 4
    augment: str = "none"

    def attack(self, eps: float | None = None):
        eps = self.eps if eps is None else eps
        step = self.step_size * (eps / self.eps) if self.eps > 0 else self.step_size
        if self.method == "pgd":
            return PGD(eps=eps, step_size=step, steps=self.steps, norm=self.norm, random_start=True)
        if self.method == "fgsm":
            return FGSM(eps=eps, norm=self.norm)
        if self.method == "trades":
            return TradesKL(eps=eps, step_size=step, steps=self.steps, norm=self.norm)
        return None


@dataclass
class TrainResult:
    """Final model plus per-epoch, per-example records (E, N) and the TracIn checkpoints."""

    model: nn.Module
    loss: np.ndarray  # (E, N) float32
    margin: np.ndarray  # (E, N) float32
    correct: np.ndarray  # (E, N) bool
    lrs: np.ndarray  # (E,) mean learning rate of each epoch
    tracin: list[tuple[int, float, dict]]  # (epoch, summed lr of the window, state_dict)
    seconds: float

    def dynamics(self) -> dict[str, np.ndarray]:
        """Summaries per example: AUM, mean loss, forgetting events, first-learned epoch (-1 = never)."""
        return summarize_dynamics(self.margin, self.correct, self.loss)


def summarize_dynamics(margin: np.ndarray, correct: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """margin, correct, loss: (E, N). Returns per-example arrays (N,).

    ``forgetting``: learned→forgotten transitions (Toneva et al. 2019). ``first_learned``: the first
    epoch from which the example stays correct to the end (-1 if it is wrong at the end).
    """
    e = correct.shape[0]
    c = correct.astype(bool)
    forgetting = (c[:-1] & ~c[1:]).sum(0) if e > 1 else np.zeros(c.shape[1], int)
    # last epoch that was wrong; first_learned = that + 1, or -1 if wrong at the end
    wrong_any = ~c
    last_wrong = np.where(wrong_any.any(0), e - 1 - np.argmax(wrong_any[::-1], axis=0), -1)
    first_learned = np.where(c[-1], last_wrong + 1, -1)
    return {
        "aum": margin.mean(0).astype(np.float32),
        "mean_loss": loss.mean(0).astype(np.float32),
        "forgetting": forgetting.astype(np.int32),
        "first_learned": first_learned.astype(np.int32),
    }


def _to_float(xb: torch.Tensor) -> torch.Tensor:
    return xb.float().div_(255.0)


def _per_example(logits: torch.Tensor, y: torch.Tensor):
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    margin = true - other.max(1).values
    return loss, margin, logits.argmax(1) == y


def _lr_at(spec: TrainSpec, step: int, total: int) -> float:
    if spec.constant_lr:
        return spec.lr
    warm = max(1, int(0.15 * total))
    if step < warm:
        return spec.lr * (step + 1) / warm
    return spec.lr * max(0.0, (total - step) / max(1, total - warm))


@dataclass
class _Records:
    """Per-epoch, per-example records of one training."""

    loss: np.ndarray
    margin: np.ndarray
    correct: np.ndarray
    lrs: np.ndarray

    @classmethod
    def empty(cls, epochs: int, n: int) -> "_Records":
        return cls(np.zeros((epochs, n), np.float32), np.zeros((epochs, n), np.float32),
                   np.zeros((epochs, n), bool), np.zeros(epochs, np.float32))


def train_model(
    model: nn.Module,
    images,
    labels: torch.Tensor,
    spec: TrainSpec,
    *,
    device: torch.device,
    checkpoint: str | os.PathLike | None = None,
    desc: str = "",
    progress: bool = True,
    compile: bool = False,
    stop_after: Callable[[int, nn.Module], bool] | None = None,
    stop_on_accuracy: Callable[[np.ndarray], bool] | None = None,
) -> TrainResult:
    """Train ``model`` on uint8 ``images`` (N, C, H, W) with int64 ``labels`` (N,) by ``spec.method``.

    ``images`` is a torch tensor (held on the device), or a numpy array, memmap or
    :class:`audit.rows.Rows` read one batch at a time.

    Resumes from ``checkpoint`` (a ``.pt`` written every epoch, loaded with ``weights_only=True``)
    when it exists, and deletes it when training is complete. ``compile`` runs the training forward
    passes through ``torch.compile`` (worth it on a GPU for long runs); weights are shared, so the
    returned model and checkpoints are the plain module's. ``stop_after(epoch, model)``, when given, is
    called after each epoch (the model in whatever mode it leaves it; training sets its own) and ends the
    training there when it returns True: the records then hold the epochs run, the learning-rate
    schedule is the full run's, cut short, and no TracIn checkpoint is added at the epoch it stopped
    (the calibration's early decisions use it; they keep no checkpoints). After a resume, the epochs
    already run are not offered to it again. ``stop_on_accuracy(acc)`` does the same from the records
    alone: ``acc`` is the training accuracy on the given labels of every epoch so far (the augmented
    model's collapse check, :func:`audit.health.collapsed`, uses it).
    """
    if spec.method not in METHODS:
        raise ValueError(f"unknown training method {spec.method!r} (known: {', '.join(METHODS)})")
    if spec.augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {spec.augment!r} (known: {', '.join(AUGMENTS)})")
    t0 = time.perf_counter()
    n = len(labels)
    model, net, opt, images, labels = _setup(model, images, labels, spec, device, compile)
    rec = _Records.empty(spec.epochs, n)
    # TracIn checkpoints: evenly spaced epochs, each weighted by the lr summed since the previous one.
    k = max(1, min(spec.tracin_checkpoints, spec.epochs))
    tracin_epochs = sorted({int(round(spec.epochs * (i + 1) / k)) - 1 for i in range(k)})
    ckpt = Path(checkpoint) if checkpoint else None
    start_epoch, tracin = _resume(ckpt, model, opt, rec, device)
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    for _ in range(start_epoch):  # keep the batch order of an uninterrupted run
        torch.randperm(n, generator=gen)
    torch.manual_seed(spec.seed + start_epoch)
    # disable=None: tqdm draws bars only on a terminal; output to a file gets the stage lines, not bar debris
    bar = tqdm(range(start_epoch, spec.epochs), desc=desc or f"train {spec.method}", disable=None if progress else True,
               leave=False, unit="ep", mininterval=_bar_interval())
    for epoch in bar:
        _train_epoch(net, opt, images, labels, spec, epoch, gen, rec, device)
        if epoch in tracin_epochs:
            prev = tracin[-1][0] if tracin else -1
            weight = float(rec.lrs[prev + 1:epoch + 1].sum())
            tracin.append((epoch, weight, {k_: v.detach().cpu().clone() for k_, v in model.state_dict().items()}))
        bar.set_postfix(acc=f"{rec.correct[epoch].mean():.3f}", loss=f"{rec.loss[epoch].mean():.3f}",
                        refresh=_bar_interval() < 1)  # into a log file: no line per epoch
        if ckpt is not None:
            _save_resume(ckpt, model, opt, epoch, rec, tracin)
        last = epoch + 1 >= spec.epochs
        if not last and ((stop_after is not None and stop_after(epoch, model)) or (
                stop_on_accuracy is not None and stop_on_accuracy(rec.correct[:epoch + 1].mean(1)))):
            rec = _Records(rec.loss[:epoch + 1], rec.margin[:epoch + 1], rec.correct[:epoch + 1], rec.lrs[:epoch + 1])
            break
    bar.close()
    model.eval()
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return TrainResult(model=model, loss=rec.loss, margin=rec.margin, correct=rec.correct, lrs=rec.lrs,
                       tracin=tracin, seconds=time.perf_counter() - t0)


def _setup(model, images, labels, spec: TrainSpec, device, compile: bool):
    """Model (and its compiled forward), optimizer and data on ``device``."""
    model = model.to(device)
    if len(images.shape) == 4:  # as build_model does: NHWC kernels on CPU (oneDNN) and GPU (cuDNN)
        model = model.to(memory_format=torch.channels_last)
    images = _place_images(images, device)
    labels = labels.to(device)
    net = torch.compile(model) if compile else model  # same parameters; state_dicts stay un-prefixed
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                          nesterov=True)
    return model, net, opt, images, labels


# Share of the accelerator's free memory that a dataset gathered onto it once may take.
RESIDENT_SHARE = 0.25


def _place_images(images, device, free_bytes: int | None = None):
    """Where training reads its batches from. A torch tensor moves to ``device`` once. A memmap or an
    :class:`audit.rows.Rows` view stays where it lies and is read batch by batch on a CPU (memory stays
    bounded); on an accelerator it is gathered onto the device once when its uint8 pixels fit in
    ``RESIDENT_SHARE`` of the free device memory (``free_bytes``, measured when None), since a host
    gather and copy per batch would starve the GPU. Batches hold the same pixels either way."""
    if isinstance(images, torch.Tensor):
        return images.to(device)
    if device.type == "cpu":
        return images
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    size = int(np.prod(images.shape)) * np.dtype(images.dtype).itemsize
    if size > RESIDENT_SHARE * free_bytes:
        return images
    return take(images, slice(None)).to(device)


def _bar_interval() -> float:
    """Progress bars redraw often on a terminal, rarely into a log file (no flood of lines)."""
    import sys

    return 0.1 if sys.stderr.isatty() else 30.0


def _train_epoch(net, opt, images, labels, spec: TrainSpec, epoch: int, gen, rec: _Records, device) -> None:
    """One epoch of ``spec.method``; fills row ``epoch`` of the records."""
    net.train()
    n = len(labels)
    steps_per_epoch = (n + spec.batch_size - 1) // spec.batch_size
    total = spec.epochs * steps_per_epoch
    frac = (epoch + 1) / max(1.0, spec.eps_warmup * spec.epochs) if spec.eps_warmup > 0 else 1.0
    attack = spec.attack(spec.eps * min(1.0, frac)) if spec.method != "natural" else None
    perm = torch.randperm(n, generator=gen).to(device)
    aug_gen = torch.Generator(device="cpu").manual_seed(spec.seed * 7919 + epoch)  # per epoch: resumable
    lr_sum = 0.0
    for b in range(steps_per_epoch):
        lr = _lr_at(spec, epoch * steps_per_epoch + b, total)
        lr_sum += lr
        for g in opt.param_groups:
            g["lr"] = lr
        idx = perm[b * spec.batch_size:(b + 1) * spec.batch_size]
        x, y = augment_batch(_to_float(take(images, idx).to(device)), spec.augment, aug_gen), labels[idx]
        if device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, loss_vec, margin, correct = _batch_loss(net, x, y, spec, attack, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ii = idx.cpu().numpy()
        rec.loss[epoch, ii] = loss_vec.detach().float().cpu().numpy()
        rec.margin[epoch, ii] = margin.detach().float().cpu().numpy()
        rec.correct[epoch, ii] = correct.cpu().numpy()
    rec.lrs[epoch] = lr_sum / steps_per_epoch


def _batch_loss(net, x, y, spec: TrainSpec, attack, device):
    """The training loss of one batch and its per-example records (on the input the model trains on)."""
    if spec.method in ("pgd", "fgsm"):
        x_adv = attack(net, x, y)
        with autocast(device):
            logits = net(x_adv)
        loss_vec, margin, correct = _per_example(logits, y)
        return loss_vec.mean(), loss_vec, margin, correct
    if spec.method == "trades":
        x_adv = attack(net, x, y)
        with autocast(device):
            logits = net(x)
            logits_adv = net(x_adv)
        loss_vec, margin, correct = _per_example(logits, y)
        kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits.float(), 1), reduction="batchmean")
        return loss_vec.mean() + spec.trades_beta * kl, loss_vec, margin, correct
    with autocast(device):
        logits = net(x)
    loss_vec, margin, correct = _per_example(logits, y)
    return loss_vec.mean(), loss_vec, margin, correct


def _resume(ckpt: Path | None, model, opt, rec: _Records, device) -> tuple[int, list]:
    """Load a resume checkpoint into model, optimizer and records; returns (start epoch, TracIn states).
    Everything is checked before anything is loaded: a damaged or incomplete resume file (a record
    missing, a wrong shape, weights of another model) is deleted and the training starts over, never
    half-resumed and never an error on every rerun."""
    if ckpt is None or not ckpt.exists():
        return 0, []
    try:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        e = int(state["epoch"]) + 1
        arrays = {k: state[k].numpy() for k in ("loss", "margin", "correct", "lrs")}
        if not 0 < e <= len(rec.lrs):
            raise ValueError(f"epoch {e - 1} outside this training")
        for k, a in arrays.items():
            if a.shape != getattr(rec, k)[:e].shape:
                raise ValueError(f"{k} has shape {a.shape}")
        epochs, weights, states = state["tracin_epochs"].tolist(), state["tracin_weights"].tolist(), state["tracin_states"]
        if not len(epochs) == len(weights) == len(states):
            raise ValueError("TracIn records of different lengths")
        trial = copy.deepcopy(model)  # strict load into a copy first: a failure leaves the model untouched
        trial.load_state_dict(state["model"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except Exception:  # noqa: BLE001 - a damaged resume file: start this training over rather than trust it
        ckpt.unlink(missing_ok=True)
        return 0, []
    rec.loss[:e], rec.margin[:e] = arrays["loss"], arrays["margin"]
    rec.correct[:e], rec.lrs[:e] = arrays["correct"], arrays["lrs"]
    return e, [(int(ep), float(w), sd) for ep, w, sd in zip(epochs, weights, states)]


def _save_resume(ckpt: Path, model, opt, epoch: int, rec: _Records, tracin: list) -> None:
    save_atomic({
        "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
        "loss": torch.from_numpy(rec.loss[:epoch + 1]), "margin": torch.from_numpy(rec.margin[:epoch + 1]),
        "correct": torch.from_numpy(rec.correct[:epoch + 1]), "lrs": torch.from_numpy(rec.lrs[:epoch + 1]),
        "tracin_epochs": torch.tensor([t[0] for t in tracin]),
        "tracin_weights": torch.tensor([t[1] for t in tracin]),
        "tracin_states": [t[2] for t in tracin],
    }, ckpt)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary name unique to this process, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
