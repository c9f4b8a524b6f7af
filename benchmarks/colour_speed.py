"""The colour recipe's speed and detection: airbench (the default) against ResNet-18 (``--arch resnet18``).

    python benchmarks/colour_speed.py throughput [--repeats 3]          # images/s and engine/bare-loop ratio
    python benchmarks/colour_speed.py layout [--repeats 3]              # channels-last against contiguous
    python benchmarks/colour_speed.py make --out /tmp/colour2000        # a 2,000-image colour 32×32 set
    python benchmarks/colour_speed.py audit --data /tmp/colour2000/data.npz --archs airbench,resnet18
    python benchmarks/colour_speed.py suite --suite benchmarks/data/suite1 --sets colour_digits,colour_fashion \
        --archs airbench,resnet18 --seeds 1

Every command appends its rows to ``benchmarks/results/colour_recipe.csv`` (``--csv``) and prints them,
with the machine's load average before and after (timings on a shared machine are inflated; ratios
measured in one process are not).

``throughput``: one CPU thread, synthetic uint8 3×32×32 images, each architecture at its CPU default
width and the batch sizes of its recipe for 1,500 training images; natural and PGD-AT (the recipe's steps) through
:func:`audit.train.engine.train_model`, and a bare PyTorch loop of the same net, batch and optimizer
(SGD, Nesterov momentum 0.9, weight decay 5e-4; the same :class:`audit.train.attacks.PGD`), interleaved
and repeated, median taken, each call ``--epochs`` epochs (3) of ``--batches`` batches, so that the
engine's per-call setup is spread as in a run. ``engine_over_bare`` is the engine's time over the bare loop's.

``layout``: the same bare loop (and whole-batch inference) with the net's weights channels-last (NHWC,
what :func:`audit.train.models.build_model` returns) against contiguous (NCHW), one CPU thread, after one untimed round of each,
interleaved and repeated, median taken; ``cl_over_contiguous`` below 1 means channels-last is faster here.

``compile``: ``train_model(..., compile=True)`` (``torch.compile``) against eager on one CPU thread:
the first epoch (compilation included), later epochs, and the images it takes to break even.

``make``: 2,000 Fashion-MNIST training images (200 a class, from Debian's ``dataset-fashion-mnist``,
``/usr/share/datasets/fashion-mnist``), each padded to 32×32 and tinted with a random foreground and
background colour (``benchmarks/devsuite.py``'s ``tint``), written as an npz with clean labels and no
split (the audit makes its stratified 75/25 split). ``audit`` runs ``audit run --noise 0.1 --threads 1``
on it per architecture and scores the injected noise: AUPRC of ``issue_score``, and precision / recall of
``is_label_issue``.

``suite``: ``benchmarks/devsuite.py``'s colour sets (misfiled PNG folders, truth beside them), scored by
its ``evaluate``. The recipe was chosen on the development draw (``benchmarks/data/suite``) and is
reported on the held-out draw (``benchmarks/data/suite1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CSV = REPO / "benchmarks" / "results" / "colour_recipe.csv"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def _recipe(arch: str):
    from audit.config import RunConfig, resolve_defaults

    return resolve_defaults(RunConfig(arch=arch), (3, 32, 32), 1500, False)


def _bare_seconds(model, x, y, batch, cfg, attack, epochs: int = 1) -> float:
    """A plain loop: resident uint8 batch -> float, (attack), forward, mean CE, backward, SGD step."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for b in range(0, len(y), batch):
            idx = perm[b:b + batch]
            xb, yb = x[idx].float().div_(255.0), y[idx]
            if attack is not None:
                xb = attack(model, xb, yb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def _cases(args):
    """(arch, recipe, method, batch, n, images, labels, one-epoch TrainSpec) for each architecture of
    ``--archs`` and each of natural / PGD-AT: ``--batches`` batches of the recipe's size of synthetic
    uint8 3×32×32 images, seeded."""
    import torch

    from audit.train.engine import TrainSpec

    for arch in args.archs.split(","):
        cfg = _recipe(arch)
        for method in ("natural", "pgd"):
            batch = cfg.batch_size if method == "natural" else cfg.robust_batch_size
            n = batch * args.batches
            torch.manual_seed(0)
            x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
            y = torch.randint(0, 10, (n,))
            spec = TrainSpec(method=method, arch=arch, width=cfg.width, epochs=getattr(args, "epochs", 1),
                             batch_size=batch, lr=0.01,
                             constant_lr=True, weight_decay=cfg.weight_decay, eps=cfg.eps, steps=cfg.steps,
                             step_size=cfg.step_size, tracin_checkpoints=1)
            yield arch, cfg, method, batch, n, x, y, spec


def throughput(args) -> list[dict]:
    import torch

    from audit.train.engine import train_model
    from audit.train.models import build_model

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    rows = []
    for arch, cfg, method, batch, n, x, y, spec in _cases(args):
        attack = spec.attack() if method == "pgd" else None
        warm = build_model(arch, (3, 32, 32), 10, cfg.width)
        train_model(warm, x[:batch], y[:batch], spec, device=dev, progress=False)  # warm-up, whitening
        eng, bare = [], []
        for _ in range(args.repeats):  # interleaved: load changes hit both alike
            torch.manual_seed(1)
            m = build_model(arch, (3, 32, 32), 10, cfg.width)
            t0 = time.perf_counter()
            train_model(m, x, y, spec, device=dev, progress=False)
            eng.append(time.perf_counter() - t0)
            torch.manual_seed(1)
            m = build_model(arch, (3, 32, 32), 10, cfg.width)
            m(x[:2].float() / 255)  # the same whitening fit the engine's first batch does
            bare.append(_bare_seconds(m, x, y, batch, cfg, attack, spec.epochs))
        e, b = statistics.median(eng), statistics.median(bare)
        rows.append({"kind": "throughput", "arch": arch, "width": cfg.width, "method": method,
                     "pgd_steps": cfg.steps if method == "pgd" else 0, "batch": batch, "threads": 1,
                     "img_per_s": round(spec.epochs * n / e, 1), "bare_img_per_s": round(spec.epochs * n / b, 1),
                     "engine_over_bare": round(e / b, 3),
                     "note": f"benchmarks/colour_speed.py throughput --repeats {args.repeats} --batches "
                             f"{args.batches} --epochs {spec.epochs}"})
        print(json.dumps(rows[-1]), flush=True)
    by = {(r["arch"], r["method"]): r["img_per_s"] for r in rows}
    for method in ("natural", "pgd"):
        if ("airbench", method) in by and ("resnet18", method) in by:
            print(f"airbench / resnet18 {method}: {by['airbench', method] / by['resnet18', method]:.2f}x images/s")
    return rows


def layout(args) -> list[dict]:
    """Channels-last against contiguous weights: training (bare loop) and inference images/s."""
    import torch

    from audit.train.models import build_model

    torch.set_num_threads(1)
    rows = []
    for arch, cfg, method, batch, n, x, y, spec in _cases(args):
        attack = spec.attack() if method == "pgd" else None
        times = {"channels_last": [], "contiguous": []}
        infer = {"channels_last": [], "contiguous": []}
        for rep in range(args.repeats + 1):  # interleaved: load changes hit both alike
            for fmt in times:
                torch.manual_seed(1)
                m = build_model(arch, (3, 32, 32), 10, cfg.width)
                if fmt == "contiguous":
                    m = m.to(memory_format=torch.contiguous_format)
                m(x[:2].float() / 255)  # the whitening fit
                sec = _bare_seconds(m, x, y, batch, cfg, attack)
                m.eval()
                with torch.no_grad():
                    t0 = time.perf_counter()
                    m(x.float() / 255)
                    inf = time.perf_counter() - t0
                if rep:  # the first round warms both layouts' kernels up and is not counted
                    times[fmt].append(sec)
                    if method == "natural":
                        infer[fmt].append(inf)
        cl, co = statistics.median(times["channels_last"]), statistics.median(times["contiguous"])
        row = {"kind": "layout", "arch": arch, "width": cfg.width, "method": method,
               "pgd_steps": cfg.steps if method == "pgd" else 0, "batch": batch, "threads": 1,
               "img_per_s": round(n / cl, 1), "contiguous_img_per_s": round(n / co, 1),
               "cl_over_contiguous": round(cl / co, 3),
               "note": f"benchmarks/colour_speed.py layout --archs {args.archs} --batches {args.batches} --repeats "
                       f"{args.repeats}; torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}"}
        if infer["channels_last"]:
            row["infer_cl_over_contiguous"] = round(statistics.median(infer["channels_last"])
                                                    / statistics.median(infer["contiguous"]), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def compile_cost(args) -> list[dict]:
    """``train_model(compile=True)`` against eager, one CPU thread, the airbench recipe's batches.

    Per method: the first epoch of a fresh model (compilation included) and the median of
    ``--repeats`` later epochs of the same compiled model, against the eager engine's median epoch,
    interleaved. ``compiled_over_eager`` below 1 means compiling pays per epoch; ``break_even_images``
    is how many training images it takes the saving to pay back the compilation."""
    import torch

    from audit.train.engine import train_model
    from audit.train.models import build_model

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    rows = []
    for arch, cfg, method, batch, n, x, y, spec in _cases(args):
        torch._dynamo.reset()
        torch.manual_seed(1)
        m = build_model(arch, (3, 32, 32), 10, cfg.width)
        t0 = time.perf_counter()
        train_model(m, x, y, spec, device=dev, progress=False, compile=True)  # compiles
        first = time.perf_counter() - t0
        eager, comp = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            train_model(m, x, y, spec, device=dev, progress=False, compile=True)
            comp.append(time.perf_counter() - t0)
            torch.manual_seed(1)
            e = build_model(arch, (3, 32, 32), 10, cfg.width)
            train_model(e, x[:batch], y[:batch], spec, device=dev, progress=False)  # whitening, warm-up
            t0 = time.perf_counter()
            train_model(e, x, y, spec, device=dev, progress=False)
            eager.append(time.perf_counter() - t0)
        c, e = statistics.median(comp), statistics.median(eager)
        saving = e - c
        rows.append({"kind": "compile", "arch": arch, "width": cfg.width, "method": method,
                     "pgd_steps": cfg.steps if method == "pgd" else 0, "batch": batch, "threads": 1,
                     "img_per_s": round(n / c, 1), "bare_img_per_s": None,
                     "engine_over_bare": None, "compiled_over_eager": round(c / e, 3),
                     "eager_img_per_s": round(n / e, 1), "first_epoch_s": round(first, 2),
                     # images trained before the per-epoch saving pays back the compilation
                     "break_even_images": int((first - c) / saving * n) if saving > 0 else None,
                     "note": f"benchmarks/colour_speed.py compile --archs {arch} --batches {args.batches} "
                             f"--repeats {args.repeats}; torch {torch.__version__}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def make(args) -> None:
    from devsuite import fashion, tint

    rng = np.random.default_rng(args.seed)
    x, y = fashion(args.n // 10, rng)
    xc = tint(x, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from devsuite import FASHION_CLASSES

    np.savez(out / "data.npz", images=xc, labels=y, class_names=np.array(FASHION_CLASSES))
    (out / "SOURCE.txt").write_text(f"{len(y)} Fashion-MNIST training images (/usr/share/datasets/fashion-mnist), "
                                    f"{args.n // 10} a class, tinted at 32x32 by benchmarks/devsuite.py tint, seed "
                                    f"{args.seed}; made by benchmarks/colour_speed.py make\n")
    print(f"wrote {out / 'data.npz'}: {xc.shape} uint8, clean labels")


def _score_injected(run: Path) -> dict:
    import pandas as pd
    from sklearn.metrics import average_precision_score

    ex = pd.read_parquet(run / "examples.parquet")
    tr = ex[ex["split"] == "train"]
    truth = tr["is_injected_noise"].to_numpy(bool)
    flags = tr["is_label_issue"].to_numpy(bool)
    tp = int((flags & truth).sum())
    return {"n_train": len(tr), "noise": round(float(truth.mean()), 4),
            "audit_auprc": average_precision_score(truth, tr["issue_score"]),
            "cleanlab_auprc": average_precision_score(truth, tr["cleanlab_score"]),
            "flagged": int(flags.sum()), "precision": tp / max(1, flags.sum()), "recall": tp / max(1, truth.sum())}


def _manifest_facts(run: Path) -> dict:
    man = json.loads((run / "manifest.json").read_text())
    m, c = man["metrics"], man["config"]
    stages = {k: round(v.get("seconds") or 0, 1) for k, v in man.get("stages", {}).items()}
    return {"arch": c["arch"], "width": c["width"], "epochs": f"{c['epochs']}/{c['robust_epochs']}/{c['cv_epochs']}/"
            f"{c['aug_epochs']}", "batch": c["batch_size"], "steps": c["steps"], "eps": c["eps"],
            "natural_test_acc": m.get("natural_test_accuracy"), "pgd_test_acc": m.get("pgd_test_accuracy"),
            "natural_train_acc": m.get("natural_train_accuracy"), "pgd_train_acc": m.get("pgd_train_accuracy"),
            "checks_failed": ";".join(f"{k}:{','.join(v)}" for k, v in man.get("health", {}).get("failed", {}).items()),
            "compute_seconds": m.get("compute_seconds"), "stage_seconds": json.dumps(stages)}


_CPU = {"cpu_seconds": None}


def _audit(dataset: str, out: Path, seed: int, arch: str, extra: list[str]) -> tuple[float, str]:
    """Runs one audit; returns (wall seconds, stderr tail on failure). Its CPU seconds (user + system,
    what one idle thread would take, near enough, on a machine that other jobs share) go to
    ``_CPU["cpu_seconds"]``."""
    import resource

    cmd = [sys.executable, "-m", "audit", "run", "--dataset", dataset, "--seed", str(seed), "--out", str(out),
           "--threads", "1", "--quiet", "--arch", arch, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _CPU["cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    return wall, (r.stderr[-2000:] if r.returncode else "")


def audit(args, extra) -> list[dict]:
    rows = []
    for arch in args.archs.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = Path(args.work) / f"{Path(args.data).parent.name}_{arch}_s{seed}"
            before = _load()
            wall, err = _audit(f"npz:{args.data}", out, seed, arch, ["--noise", str(args.noise), *extra])
            if err:
                print(err, file=sys.stderr)
                continue
            rows.append({"kind": "audit_2000", "set": f"{Path(args.data).parent.name} (tinted Fashion-MNIST)",
                         "draw": "-", "seed": seed, **_score_injected(out), **_manifest_facts(out),
                         "wall_seconds": round(wall, 1), "cpu_seconds": _CPU["cpu_seconds"],
                         "load_before": before, "load_after": _load()})
            print(json.dumps(rows[-1], default=str), flush=True)
    return rows


def suite(args, extra) -> list[dict]:
    from devsuite import evaluate, spec_of

    rows = []
    draw = "held-out" if Path(args.suite).name != "suite" else "dev"
    for name in args.sets.split(","):
        for arch in args.archs.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                out = Path(args.work) / f"{Path(args.suite).name}_{name}_{arch}_s{seed}"
                before = _load()
                wall, err = _audit(spec_of(Path(args.suite), name), out, seed, arch, extra)
                if err:
                    print(err, file=sys.stderr)
                    continue
                ev = evaluate(out, Path(args.suite), name)
                keep = {k: ev[k] for k in ("n_train", "noise", "audit_auprc", "cleanlab_auprc", "flagged",
                                           "precision", "recall")}
                rows.append({"kind": "suite", "set": name, "draw": f"{draw} ({args.suite})", "seed": seed, **keep,
                             **_manifest_facts(out), "wall_seconds": round(wall, 1),
                             "cpu_seconds": _CPU["cpu_seconds"], "load_before": before,
                             "load_after": _load()})
                print(json.dumps(rows[-1], default=str), flush=True)
    return rows


def _append(rows: list[dict], path: Path) -> None:
    import pandas as pd

    if not rows:
        return
    df = pd.DataFrame(rows)
    if path.exists():
        df = pd.concat([pd.read_csv(path), df], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)
    print(f"appended {len(rows)} rows to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--archs", default="airbench,resnet18")
    t.add_argument("--batches", type=int, default=4)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--epochs", type=int, default=3,
                   help="epochs per timed call: the engine's per-call setup (optimizer, whitening fit, records) "
                        "is spread over them as in a run")
    lay = sub.add_parser("layout")
    lay.add_argument("--archs", default="airbench,resnet18")
    lay.add_argument("--batches", type=int, default=4)
    lay.add_argument("--repeats", type=int, default=3)
    c = sub.add_parser("compile")
    c.add_argument("--archs", default="airbench")
    c.add_argument("--batches", type=int, default=8)
    c.add_argument("--repeats", type=int, default=3)
    m = sub.add_parser("make")
    m.add_argument("--out", default="/tmp/colour2000")
    m.add_argument("--n", type=int, default=2000)
    m.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("audit")
    a.add_argument("--data", default="/tmp/colour2000/data.npz")
    a.add_argument("--noise", type=float, default=0.1)
    s = sub.add_parser("suite")
    s.add_argument("--suite", default="benchmarks/data/suite1")
    s.add_argument("--sets", default="colour_digits,colour_fashion")
    for p in (a, s):
        p.add_argument("--archs", default="airbench,resnet18")
        p.add_argument("--seeds", default="0")
        p.add_argument("--work", default="/tmp/colour_speed")
    for p in (t, lay, c, a, s):
        p.add_argument("--csv", default=str(CSV))
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.cmd == "make":
        return make(args)
    print(f"load average before: {_load()} ({os.cpu_count()} cores)", flush=True)
    rows = {"throughput": lambda: throughput(args), "compile": lambda: compile_cost(args),
            "layout": lambda: layout(args), "audit": lambda: audit(args, extra),
            "suite": lambda: suite(args, extra)}[args.cmd]()
    print(f"load average after: {_load()}", flush=True)
    _append(rows, Path(args.csv))


if __name__ == "__main__":
    main()
