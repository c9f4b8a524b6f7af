"""Time and memory against dataset size: load + one epoch + inference + pairing, one process per size.

    python benchmarks/scale.py [--sizes 10000,50000,200000] [--threads 1] [--dir /tmp/audit-scale]

For each N, synthetic 28×28 grey uint8 images (10 classes, each a fixed random template plus noise;
the last N/6 rows are the test split, as in MNIST) are written once, in chunks, to an uncompressed
``DIR/synthetic-N.npz``. A fresh subprocess then runs what ``audit run`` runs on such data, each step
timed: loading through ``audit.data.sources.load_dataset("npz:...")``; one epoch of natural training
of the ``mnist_cnn`` at width 0.25 (``audit.train.engine.train_model``); inference with features
over both splits (``audit.train.evaluate.infer``); and pairing (``audit.neighbors.search``, k = 50, every
test image against every training image in the 256-dim embedding). Peak RSS is the subprocess's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after each step (so a step's figure includes those before
it; file pages of a memory-mapped dataset count once they are read).

Prints a Markdown table and one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = 8192


def write_synthetic(n: int, path: Path, seed: int = 0) -> Path:
    """Uncompressed ``.npz`` with ``images`` (n, 28, 28) uint8, ``labels`` and ``split``, built in chunks."""
    if path.exists():
        return path
    import zipfile

    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    split = np.where(np.arange(n) < n - n // 6, "train", "test")
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, 28, 28)})
            for s in range(0, n, CHUNK):
                y = labels[s:s + CHUNK]
                x = 0.6 * templates[y] + rng.normal(0, 40, size=(len(y), 28, 28))
                f.write(np.clip(x, 0, 255).astype(np.uint8).tobytes())
        for name, arr in (("labels", labels), ("split", split)):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    os.replace(tmp, path)
    return path


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(path: str, threads: int | None, k: int, width: float) -> dict:
    """The measured steps, in this (fresh) process."""
    import torch

    from audit.data.sources import load_dataset
    from audit.neighbors import resolve_threads, search
    from audit.train.engine import TrainSpec, train_model
    from audit.train.evaluate import infer
    from audit.train.models import build_model

    torch.set_num_threads(resolve_threads(threads))
    out, device, t = {"threads": torch.get_num_threads(), "rss_start_mb": _peak_mb()}, torch.device("cpu"), time.perf_counter()

    def step(name):
        nonlocal t
        now = time.perf_counter()
        out[f"{name}_s"], out[f"{name}_peak_rss_mb"], t = round(now - t, 2), _peak_mb(), now

    ds = load_dataset(f"npz:{path}")
    tr = np.flatnonzero(ds.split == "train")
    te = np.flatnonzero(ds.split == "test")
    images = torch.from_numpy(np.asarray(ds.images))
    labels = torch.from_numpy(ds.labels)
    step("load")
    spec = TrainSpec(method="natural", arch="mnist_cnn", width=width, epochs=1, tracin_checkpoints=1)
    torch.manual_seed(0)
    model = build_model("mnist_cnn", tuple(ds.images.shape[1:]), len(ds.class_names), width=width)
    result = train_model(model, images[tr], labels[tr], spec, device=device, progress=False)
    step("train_epoch")
    _, f_tr = infer(result.model, images[tr], device, features=True)
    _, f_te = infer(result.model, images[te], device, features=True)
    step("inference")
    _, _, info = search(f_tr, f_te, k)
    step("pairing")
    out.update(n=len(ds.labels), n_train=len(tr), n_test=len(te), dim=int(f_tr.shape[1]),
               train_accuracy=round(float(result.correct[-1].mean()), 3), pairing=info)
    return out


def run_size(n: int, args) -> dict:
    path = write_synthetic(n, Path(args.dir) / f"synthetic-{n}.npz")
    cmd = [sys.executable, __file__, "--child", str(path), "--k", str(args.k), "--width", str(args.width)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"N={n}: the measuring subprocess failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["total_wall_s"] = round(time.perf_counter() - t0, 2)
    res["load_avg_1min"] = round(os.getloadavg()[0], 2)
    if not args.keep:
        path.unlink()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,50000,200000", help="comma-separated N (default 10000,50000,200000)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each subprocess (default: torch's)")
    ap.add_argument("--dir", default="/tmp/audit-scale", help="where the synthetic .npz files go")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files for the next run")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.k, args.width)))
        return
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print("| N | load s | epoch s | inference s | pairing s | pairing | total s | peak RSS MB (after load / epoch / inference / pairing) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for n in sizes:
        r = run_size(n, args)
        rows.append(r)
        rss = " / ".join(str(r[f"{s}_peak_rss_mb"]) for s in ("load", "train_epoch", "inference", "pairing"))
        print(f"| {n:,} | {r['load_s']} | {r['train_epoch_s']} | {r['inference_s']} | {r['pairing_s']} "
              f"| {r['pairing']['method']} | {r['total_wall_s']} | {rss} |", flush=True)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
