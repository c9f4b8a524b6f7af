"""What ``--preset paper`` costs on MNIST-like data, measured on a few batches and scaled to a run.

    python benchmarks/paper_preset_cost.py [--train 8000] [--test 2000] [--batches 8] [--threads 1]
        [--device auto]

Times training batches of the preset's natural model and PGD-AT (``audit.config.PRESETS["paper"]``:
the paper's CNN at full width, eps 0.3, 30 steps of 0.01) and a batch of its PGD evaluation on synthetic
28×28 images, then multiplies by the preset's epochs, steps and restarts for a run on ``--train`` /
``--test`` rows (``mnist10k.npz`` splits into 8,000 / 2,000). The default recipe is measured the same
way for comparison. Prints one JSON object; the first batch of each is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from audit.config import RunConfig, resolve_defaults
from audit.device import resolve_device
from audit.recipes import train_recipe
from audit.train.engine import train_model
from audit.train.models import build_model


def per_image_seconds(spec, x, y, device, batches: int) -> float:
    """Seconds per training image of ``spec`` (one epoch over ``batches`` batches, after a warm-up)."""
    one = {"epochs": 1, "constant_lr": True, "tracin_checkpoints": 1, "eps_warmup": 0.0}
    spec = type(spec)(**{**spec.__dict__, **one})
    bs = spec.batch_size
    train_model(build_model(spec.arch, tuple(x.shape[1:]), 10, spec.width), x[:bs], y[:bs], spec, device=device,
                progress=False)
    model = build_model(spec.arch, tuple(x.shape[1:]), 10, spec.width)
    n = bs * batches
    t0 = time.perf_counter()
    train_model(model, x[bs:bs + n], y[bs:bs + n], spec, device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shape = (1, 28, 28)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (128 * (args.batches + 1), *shape), dtype=torch.uint8)
    y = torch.randint(0, 10, (len(x),))
    out = {"device": device.type, "threads": args.threads, "train": args.train, "test": args.test}
    for name, preset in (("default", None), ("paper", "paper")):
        cfg = resolve_defaults(RunConfig(dataset="mnist-like", preset=preset), shape, args.train, device.type == "cuda")
        nat, pgd = train_recipe(cfg, "natural"), train_recipe(cfg, "pgd")
        s_nat = per_image_seconds(nat, x, y, device, args.batches)
        s_pgd = per_image_seconds(pgd, x, y, device, args.batches)
        # one PGD evaluation step costs about one training step of the natural model (forward + backward)
        eval_s = s_nat * cfg.eval_steps * cfg.eval_restarts * args.test * 2  # natural and PGD-AT models
        out[name] = {
            "recipe": {"width": cfg.width, "epochs": cfg.epochs, "robust_epochs": cfg.robust_epochs,
                       "steps": cfg.steps, "eps": cfg.eps, "eval_steps": cfg.eval_steps,
                       "eval_restarts": cfg.eval_restarts},
            "natural_images_per_s": round(1 / s_nat, 1), "pgd_at_images_per_s": round(1 / s_pgd, 1),
            "natural_train_s": round(s_nat * args.train * cfg.epochs),
            "pgd_at_train_s": round(s_pgd * args.train * cfg.robust_epochs),
            "test_evaluation_s_estimate": round(eval_s),
        }
        o = out[name]
        o["natural_plus_pgd_at_h"] = round((o["natural_train_s"] + o["pgd_at_train_s"] + eval_s) / 3600, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
