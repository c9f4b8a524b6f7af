"""A development suite that looks like users' data, and the audit measured on it against cleanlab's workflow.

    python benchmarks/devsuite.py make --out benchmarks/data/suite [--seed 0]
    python benchmarks/devsuite.py run --suite benchmarks/data/suite --sets NAME[,NAME] --seeds 0 \
        [--csv benchmarks/results/devsuite.csv] [-- extra audit run options]
    python benchmarks/devsuite.py flips --out benchmarks/data/flips

``flips`` writes two 2,500-image sets without noise (``mnist2500.npz``, ``fashion2500.npz``; 2,000 train,
500 test, drawn with seeds 7 and 8) for audits with the audit's own random flips (``--noise 0.2``), the random-flip
check beside the instance-dependent sets.

``make`` writes each data set as a user would bring it, with the truth beside it in ``truth.json``
(never read by the audit): the clean label of every noisy example, keyed by npz row or by file path.

=====================  =========================================================================================
set                    what it is
=====================  =========================================================================================
``digits_idn``         scikit-learn's digits (1,797 8×8 grey), 20% instance-dependent noise (npz)
``fashion_idn``        2,500 Fashion-MNIST images (2,000 train), 20% instance-dependent noise (npz)
``mnist_inv_idn``      2,500 MNIST digits inverted and blurred (a grey set that is not MNIST-like), 20% IDN (npz)
``colour_digits``      600 MNIST digits tinted at 32×32 RGB as PNG class folders, 10% misfiled at random
``colour_fashion``     600 Fashion-MNIST images tinted at 32×32 RGB as PNG class folders, 10% misfiled (IDN)
``small_fashion``      600 Fashion-MNIST images (500 train), 15% IDN (npz): a small set
=====================  =========================================================================================

Instance-dependent noise (IDN, :func:`instance_dependent_flips`): a weak model (logistic regression on
4×4-pooled pixels) is trained on the *other* half of the images (two-fold cross-fitting), and the labels
it doubts most are flipped to the class it finds most likely, as people mislabel: sampled without
replacement with weight (1 − p(given label))², so the flips concentrate on ambiguous images but are not
a deterministic function of the weak model. Truth comes from the sources' own labels.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``),
MNIST from ``../shared/datasets/mnist10k.npz``: this is a developer's benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist10k.npz"
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
SETS = ("digits_idn", "fashion_idn", "mnist_inv_idn", "colour_digits", "colour_fashion", "small_fashion")


def instance_dependent_flips(images: np.ndarray, labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Noisy labels: ``rate`` of the rows flipped where a weak model trained on the other images doubts
    the label, to the class it finds most likely (see the module docstring). images: (N, H, W[, C]) uint8."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = images.astype(np.float32) / 255.0
    if x.ndim == 4:
        x = x.mean(-1)
    n, h, w = x.shape
    p = 4 if min(h, w) >= 16 else 2
    x = x[:, :h // p * p, :w // p * p].reshape(n, h // p, p, w // p, p).mean((2, 4)).reshape(n, -1)
    k = int(labels.max()) + 1
    probs = np.zeros((n, k))
    half = rng.permutation(n) % 2 == 0
    for fit in (half, ~half):
        clf = LogisticRegression(max_iter=300, C=0.05).fit(x[fit], labels[fit])
        probs[np.ix_(~fit, clf.classes_)] = clf.predict_proba(x[~fit])
    p_given = probs[np.arange(n), labels]
    weight = (1.0 - p_given) ** 2 + 1e-9
    flip = rng.choice(n, size=int(round(rate * n)), replace=False, p=weight / weight.sum())
    other = probs.copy()
    other[np.arange(n), labels] = -1
    out = labels.copy()
    out[flip] = other[flip].argmax(1)
    return out


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    if data[2] == 8 and data[3] == 3:
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def _pick(labels: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                   for c in np.unique(labels)]))


def fashion(n_per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    x, y = _idx(FASHION / "train-images-idx3-ubyte.gz"), _idx(FASHION / "train-labels-idx1-ubyte.gz")
    i = _pick(y, n_per_class, rng)
    return x[i], y[i]


def mnist(n_per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(SHARED_MNIST)
    i = _pick(d["labels"], n_per_class, rng)
    return d["images"][i], d["labels"][i].astype(np.int64)


def tint(images: np.ndarray, rng, size: int = 32) -> np.ndarray:
    """Grey 28×28 -> colour size×size: padded, a random foreground and background colour per image."""
    pad = (size - images.shape[1]) // 2
    g = np.pad(images, ((0, 0), (pad, size - images.shape[1] - pad), (pad, size - images.shape[2] - pad)))
    a = g.astype(np.float32)[..., None] / 255.0
    fg = rng.uniform(0.3, 1.0, (len(g), 1, 1, 3))
    bg = rng.uniform(0.0, 0.35, (len(g), 1, 1, 3))
    return np.clip(255 * (a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)


def _split(n: int, n_test: int, rng) -> np.ndarray:
    split = np.array(["train"] * n, dtype=object)
    split[rng.choice(n, n_test, replace=False)] = "test"
    return split


def _write_npz(out: Path, images, labels, clean, split, class_names) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "data.npz", images=images, labels=labels, split=split.astype(str), class_names=class_names)
    noisy = np.flatnonzero(labels != clean)
    (out / "truth.json").write_text(json.dumps({"kind": "npz", "clean": {str(i): int(clean[i]) for i in noisy},
                                                "n": int(len(labels))}))


def _write_folder(out: Path, images, labels, clean, class_names) -> None:
    from PIL import Image

    root = out / "images"
    truth = {}
    for i, (img, lab) in enumerate(zip(images, labels)):
        d = root / class_names[lab]
        d.mkdir(parents=True, exist_ok=True)
        rel = f"{class_names[lab]}/img{i:05d}.png"
        Image.fromarray(img).save(root / rel)
        if lab != clean[i]:
            truth[rel] = int(clean[i])
    (out / "truth.json").write_text(json.dumps({"kind": "folder", "clean": truth, "n": int(len(labels))}))


def make(out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    split = _split(len(y), 360, rng)
    noisy = y.copy()
    tr = split == "train"
    noisy[tr] = instance_dependent_flips(x[tr], y[tr], 0.2, seed)
    _write_npz(out / "digits_idn", x, noisy, y, split, [str(i) for i in range(10)])

    for name, src, n_pc, n_test, rate, inv in (("fashion_idn", fashion, 250, 500, 0.2, False),
                                               ("mnist_inv_idn", mnist, 250, 500, 0.2, True),
                                               ("small_fashion", fashion, 60, 100, 0.15, False)):
        x, y = src(n_pc, rng)
        if inv:
            from scipy.ndimage import gaussian_filter

            x = (255 - np.clip(gaussian_filter(x.astype(np.float32), (0, 1.0, 1.0)) * 0.8, 0, 255)).astype(np.uint8)
        split = _split(len(y), n_test, rng)
        tr = split == "train"
        noisy = y.copy()
        noisy[tr] = instance_dependent_flips(x[tr], y[tr], rate, seed)
        names = FASHION_CLASSES if src is fashion else [str(i) for i in range(10)]
        _write_npz(out / name, x, noisy, y, split, names)

    for name, src, names, idn in (("colour_digits", mnist, [f"d{i}" for i in range(10)], False),
                                  ("colour_fashion", fashion, FASHION_CLASSES, True)):
        x, y = src(60, rng)
        xc = tint(x, rng)
        if idn:
            noisy = instance_dependent_flips(xc, y, 0.1, seed)
        else:
            noisy = y.copy()
            flip = rng.choice(len(y), int(round(0.1 * len(y))), replace=False)
            noisy[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
        _write_folder(out / name, xc, noisy, y, names)
    print(f"wrote {', '.join(SETS)} under {out}")


def make_flips(out: Path) -> None:
    """Two clean 2,500-image grey sets (2,000 train, 500 test) for ``audit run --noise``."""
    out.mkdir(parents=True, exist_ok=True)
    m = np.load(SHARED_MNIST)
    fx, fy = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    split = np.array(["train"] * 2000 + ["test"] * 500)
    for name, x, y, names, seed in (("mnist2500", m["images"], m["labels"], [str(i) for i in range(10)], 7),
                                    ("fashion2500", fx, fy, FASHION_CLASSES, 8)):
        idx = np.random.default_rng(seed).permutation(len(y))[:2500]
        np.savez(out / f"{name}.npz", images=x[idx], labels=np.asarray(y)[idx].astype(np.int64), split=split,
                 class_names=np.array(names))
    print(f"wrote mnist2500.npz, fashion2500.npz under {out}")


def spec_of(suite: Path, name: str) -> str:
    d = suite / name
    return f"npz:{d / 'data.npz'}" if (d / "data.npz").exists() else f"folder:{d / 'images'}"


def truth_of(suite: Path, name: str, train) -> np.ndarray:
    """Per training row of the examples table: is its given label wrong?"""
    t = json.loads((suite / name / "truth.json").read_text())
    if t["kind"] == "npz":
        return train["index"].astype(str).isin(set(t["clean"])).to_numpy()
    return train["path"].map(lambda p: "/".join(Path(p).parts[-2:])).isin(set(t["clean"])).to_numpy()


def evaluate(run: Path, suite: Path, name: str) -> dict:
    import pandas as pd
    from sklearn.metrics import average_precision_score

    ex = pd.read_parquet(run / "examples.parquet")
    man = json.loads((run / "manifest.json").read_text())
    tr = ex[(ex["split"] == "train")]
    truth = truth_of(suite, name, tr)
    flags = tr["is_label_issue"].to_numpy(bool)
    tp = int((flags & truth).sum())
    stages = man["stages"]
    signals = [c for c in tr.columns if c.endswith("_score") and c != "issue_score"]
    best = max(signals, key=lambda c: average_precision_score(truth, tr[c].fillna(-np.inf).clip(-1e300)))
    best_auprc = average_precision_score(truth, tr[best].fillna(-1e300))
    m = man["metrics"]
    health = man.get("health", {})
    return {"set": name, "n_train": len(tr), "noise": float(truth.mean()),
            "audit_auprc": average_precision_score(truth, tr["issue_score"]),
            "cleanlab_auprc": average_precision_score(truth, tr["cleanlab_score"]),
            "best_signal": best.removesuffix("_score"), "best_signal_auprc": best_auprc,
            "chosen": man.get("signal_selection", {}).get("chosen"),
            "flagged": int(flags.sum()), "precision": tp / max(1, flags.sum()), "recall": tp / max(1, truth.sum()),
            "flag_rule": man.get("flagging", {}).get("rule", "min(cleanlab, robust errors)"),
            "checks_failed": ";".join(f"{k}:{','.join(v)}" for k, v in health.get("failed", {}).items()),
            "eps": man["config"].get("eps"),
            **{f"{mm}_test_acc": m.get(f"{mm}_test_accuracy") for mm in man["config"]["models"]},
            **{f"{mm}_train_acc": m.get(f"{mm}_train_accuracy") for mm in man["config"]["models"]},
            "audit_seconds": m.get("compute_seconds"), "cleanlab_seconds": stages["crossval"].get("seconds")}


def run(args, extra: list[str]) -> None:
    import pandas as pd

    rows = []
    for name in args.sets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = Path(args.work) / f"{name}_s{seed}"
            cmd = [sys.executable, "-m", "audit", "run", "--dataset", spec_of(Path(args.suite), name),
                   "--seed", str(seed), "--out", str(out), "--quiet", *extra]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-2000:], file=sys.stderr)
                continue
            row = {**evaluate(out, Path(args.suite), name), "seed": seed, "wall": time.perf_counter() - t0}
            row["missed_removed"] = 1 - (1 - row["audit_auprc"]) / max(1e-9, 1 - row["cleanlab_auprc"])
            row["compute_ratio"] = row["audit_seconds"] / max(1e-9, row["cleanlab_seconds"])
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if args.csv and rows:
        df = pd.DataFrame(rows)
        path = Path(args.csv)
        if path.exists():
            df = pd.concat([pd.read_csv(path), df], ignore_index=True)
        df.to_csv(path, index=False, float_format="%.4f")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", default="benchmarks/data/suite")
    m.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("flips")
    f.add_argument("--out", default="benchmarks/data/flips")
    r = sub.add_parser("run")
    r.add_argument("--suite", default="benchmarks/data/suite")
    r.add_argument("--sets", default=",".join(SETS))
    r.add_argument("--seeds", default="0")
    r.add_argument("--work", default="/tmp/devsuite")
    r.add_argument("--csv", default="")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = ap.parse_args(argv)
    if args.cmd == "make":
        make(Path(args.out), args.seed)
    elif args.cmd == "flips":
        make_flips(Path(args.out))
    else:
        run(args, extra)


if __name__ == "__main__":
    main()
