"""Training throughput (images/s) of natural, PGD-AT, FGSM-RS and TRADES per architecture.

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--batches 5]

PGD-AT with s steps should cost close to (s + 1)× natural; TRADES a little more (an extra forward).
Numbers are from synthetic uint8 images of each architecture's usual size; the first batch is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from audit.device import resolve_device
from audit.train.engine import TrainSpec, train_model
from audit.train.models import build_model

CASES = [  # (arch, width, shape, batch, eps, steps) — widths as the CPU defaults of audit.config
    ("mlp", 1.0, (1, 8, 8), 128, 0.1, 5),
    ("mnist_cnn", 0.5, (1, 28, 28), 128, 0.3, 8),
    ("resnet18", 0.25, (3, 32, 32), 256, 8 / 255, 7),
]


def measure(arch, width, shape, batch, eps, steps, method, device, batches):
    torch.manual_seed(0)
    n = batch * (batches + 1)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    model = build_model(arch, shape, 10, width)
    spec = TrainSpec(method=method, arch=arch, width=width, epochs=1, batch_size=batch, eps=eps,
                     step_size=2.5 * eps / steps, steps=steps, constant_lr=True, lr=0.01, tracin_checkpoints=1)
    # warm-up on one batch, then time the rest
    train_model(build_model(arch, shape, 10, width), x[:batch], y[:batch], spec, device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_model(model, x[batch:], y[batch:], spec, device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (n - batch) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--archs", default="mlp,mnist_cnn,resnet18")
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = []
    for arch, width, shape, batch, eps, steps in CASES:
        if arch not in args.archs.split(","):
            continue
        ips = {m: measure(arch, width, shape, batch, eps, steps, m, device, args.batches)
               for m in ("natural", "pgd", "fgsm", "trades")}
        row = {"device": str(device), "arch": arch, "width": width, "pgd_steps": steps,
               **{f"{m}_img_per_s": round(v, 1) for m, v in ips.items()},
               "pgd_cost_x_natural": round(ips["natural"] / ips["pgd"], 2),
               "trades_cost_x_natural": round(ips["natural"] / ips["trades"], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
