"""Load time and peak memory of the dataset sources on generated MNIST-sized data.

    python benchmarks/load_datasets.py [--folder-images 10000] [--workers N] [--keep DIR]

Writes, in a temporary folder: an ``.npz`` of 60,000 28×28 uint8 images; the same images as
torchvision's MNIST layout (``MNIST/raw`` idx files, 60,000 train + 10,000 test, as the real one); and a
PNG class folder of ``--folder-images`` of them. Each load runs in a fresh Python process, so its peak
resident memory (VmHWM: interpreter, numpy and the loaded arrays) is its own. The targets of the
datasets issue: 60,000 28×28 images in under 10 s and 500 MB. The folder is loaded three ways: in RAM,
in one and in several decode processes, over a 1 MiB memory budget (decoded once into a memmap cache
file), and again from that cache.
``/work/shared/datasets/mnist10k.npz`` (real MNIST digits) is loaded too when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist10k.npz"


def peak_rss_kb() -> int:
    """This process's peak resident memory: VmHWM (``ru_maxrss`` survives exec, so it would include the
    parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(spec: str, budget: float | None, cache_dir: str | None, validate: bool, workers: int | None) -> None:
    """Runs in the child: load ``spec`` once and print timing and memory as JSON."""
    base_kb = peak_rss_kb()
    t0 = time.perf_counter()
    from audit.data import load_dataset

    ds = load_dataset(spec, memory_budget_mb=budget, cache_dir=cache_dir, decode_workers=workers)
    seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 3), "n": int(len(ds.labels)), "shape": list(ds.shape),
           "storage": "memmap" if isinstance(ds.images, np.memmap) else "memory"}
    if validate:
        from audit.data.validate import summarize

        t1 = time.perf_counter()
        s = summarize(ds)
        out["validate_seconds"] = round(time.perf_counter() - t1, 3)
        out["duplicate_groups"] = s["duplicates"]["groups"]
    peak_kb = peak_rss_kb()
    out.update(peak_rss_mb=round(peak_kb / 1024, 1), interpreter_rss_mb=round(base_kb / 1024, 1))
    print(json.dumps(out))


def measure(spec: str, *, budget: float | None = None, cache_dir: Path | None = None, validate: bool = False,
            workers: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", spec]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    if validate:
        cmd += ["--validate"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        raise SystemExit(f"{spec}: load failed\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def digits_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28×28 uint8 images with stroke-like structure (so PNGs compress like real digits), labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), np.uint8)
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        ring = np.abs(np.hypot(yy - 14, xx - 14) - (4 + c)) < 2.0
        base = np.where(ring, 220, 0).astype(np.int16)
        noise = rng.integers(-30, 30, (len(rows), 28, 28), dtype=np.int16)
        images[rows] = np.clip(base + noise * ring, 0, 255).astype(np.uint8)
    return images, labels


def write_idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def generate(root: Path, folder_images: int) -> dict[str, str]:
    from PIL import Image

    images, labels = digits_like(70_000)
    np.savez(root / "mnist60k.npz", images=images[:60_000], labels=labels[:60_000])
    raw = root / "tv" / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", images[:60_000])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:60_000])
    write_idx(raw / "t10k-images-idx3-ubyte", images[60_000:])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[60_000:])
    folder = root / "pngs"
    for i in range(folder_images):
        p = folder / str(labels[i]) / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(p)
    return {"npz": f"npz:{root / 'mnist60k.npz'}", "mnist": f"mnist:{root / 'tv'}", "folder": f"folder:{folder}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder-images", type=int, default=10_000, help="PNG files in the folder benchmark (0: skip)")
    ap.add_argument("--keep", default=None, help="write the generated data here and keep it")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--validate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=None,
                    help="decode processes for the folder (default: one per CPU up to 8, as the loader picks)")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.budget, args.cache_dir, args.validate, args.workers)
        return
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        specs = generate(root, args.folder_images)
        print(f"generated data in {root} ({time.perf_counter() - t0:.1f} s)\n")
        rows = [("npz, 60,000 28×28 (+ validate)", measure(specs["npz"], validate=True)),
                ("mnist: torchvision idx, 60,000 + 10,000 (+ validate)", measure(specs["mnist"], validate=True))]
        if args.folder_images:
            n = args.folder_images
            cache = root / "cache"
            from audit.data.images import decode_workers

            w = max(2, decode_workers(n, args.workers))  # always compare against parallel decoding
            rows += [(f"folder, {n:,} PNGs, in RAM, 1 process", measure(specs["folder"], workers=1)),
                     (f"folder, {n:,} PNGs, in RAM, {w} processes", measure(specs["folder"], workers=w)),
                     (f"folder, {n:,} PNGs, 1 MiB budget: decode to memmap", measure(specs["folder"], budget=1, cache_dir=cache)),
                     (f"folder, {n:,} PNGs, 1 MiB budget: memmap cache hit", measure(specs["folder"], budget=1, cache_dir=cache))]
        if SHARED_MNIST.is_file():
            rows.append(("npz: mnist10k.npz (10,000 real digits)", measure(f"npz:{SHARED_MNIST}", validate=True)))
    print(f"{'source':<56} {'images':>7} {'storage':>7} {'load s':>7} {'validate s':>10} {'peak RSS MB':>11}")
    for name, r in rows:
        v = f"{r['validate_seconds']:.2f}" if "validate_seconds" in r else "-"
        print(f"{name:<56} {r['n']:>7,} {r['storage']:>7} {r['seconds']:>7.2f} {v:>10} {r['peak_rss_mb']:>11.1f}")
    print(f"\npeak RSS: the loading process's VmHWM, interpreter and numpy included (about "
          f"{rows[0][1]['interpreter_rss_mb']:.0f} MB before anything loads); decode worker processes not counted")


if __name__ == "__main__":
    main()
