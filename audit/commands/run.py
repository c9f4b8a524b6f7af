"""``audit run``: the whole audit of one dataset into a run directory."""

from __future__ import annotations

import json
from dataclasses import fields

from audit.config import AUGMENTS, RunConfig


def _models(s: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in s.split(",") if m.strip())


def add_run_options(p) -> None:
    """Options shared by ``audit run`` and ``audit batch`` (every RunConfig field)."""
    d = RunConfig()
    p.add_argument("--dataset", default=d.dataset, help="dataset spec: digits, npz:PATH, mnist:ROOT, cifar10:ROOT, "
                   "folder:PATH, csv:PATH, parquet:PATH (default: digits, bundled with scikit-learn)")
    p.add_argument("--models", type=_models, default=d.models, help="comma list of natural,pgd,trades,fgsm (default natural,pgd)")
    p.add_argument("--noise", type=float, default=d.noise, help="fraction of training labels to flip (experiments)")
    p.add_argument("--noise-kind", default=d.noise_kind, choices=["symmetric", "pair", "confusion", "mixed"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--download", action="store_true", help="allow torchvision sources to download (never by default)")
    p.add_argument("--arch", choices=["mlp", "mnist_cnn", "resnet18"], default=None)
    p.add_argument("--width", type=float, default=None, help="width multiplier of the architecture")
    p.add_argument("--epochs", type=int, default=None, help="natural model epochs (dataset default)")
    p.add_argument("--robust-epochs", type=int, default=None)
    p.add_argument("--cv-epochs", type=int, default=None, help="epochs of each cross-validation model")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of the natural model")
    p.add_argument("--robust-batch-size", type=int, default=None, help="batch size of robust models")
    p.add_argument("--cv-batch-size", type=int, default=None, help="batch size of the cross-validation models")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the natural model")
    p.add_argument("--robust-lr", type=float, default=None, help="peak learning rate of robust models")
    p.add_argument("--cv-lr", type=float, default=None, help="peak learning rate of the cross-validation models")
    p.add_argument("--augment", choices=AUGMENTS, default=None,
                   help="augmentation of the extra, non-memorizing natural model whose AUM is a signal "
                        "(default: shift for grey images, shift+flip for colour, none for tiny images; "
                        "none skips that model)")
    p.add_argument("--aug-epochs", type=int, default=None, help="epochs of the augmented model (dataset default)")
    p.add_argument("--aug-width", type=float, default=None, help="width multiplier of the augmented model (default: half of --width)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--norm", choices=["linf", "l2"], default=d.norm)
    p.add_argument("--eps", type=float, default=None, help="attack radius in [0,1] pixel units (8/255 = 0.0314)")
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="PGD steps in training")
    p.add_argument("--eps-warmup", type=float, default=None, help="fraction of epochs over which eps ramps up")
    p.add_argument("--trades-beta", type=float, default=d.trades_beta)
    p.add_argument("--eval-steps", type=int, default=None)
    p.add_argument("--eval-restarts", type=int, default=d.eval_restarts)
    p.add_argument("--folds", type=int, default=d.folds, help="cross-validation folds (default 4)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="cross-validation repeats with new folds")
    p.add_argument("--knn-k", type=int, default=d.knn_k, help="FAISS candidates per test error (default 50)")
    p.add_argument("--pairs-per-test", type=int, default=d.pairs_per_test)
    p.add_argument("--canary-rate", type=float, default=d.canary_rate)
    p.add_argument("--tracin-checkpoints", type=int, default=d.tracin_checkpoints)
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (GPU, long runs)")


def config_from_args(args) -> RunConfig:
    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="audit one dataset: train, score, pair, write Parquet")
    add_run_options(p)
    p.add_argument("--out", required=True, help="run directory (created; a rerun resumes finished stages)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.pipeline import run_audit

    man = run_audit(config_from_args(args), args.out, progress=not args.quiet)
    m = man["metrics"]
    keys = [k for k in m if k.endswith("accuracy") or k.startswith("noise_") or k in
            ("num_flagged_train", "estimated_noise_rate", "num_pairs", "wall_seconds")]
    print(json.dumps({k: round(m[k], 4) if isinstance(m[k], float) else m[k] for k in keys}, indent=1))
    print(f"wrote {args.out}/examples.parquet, pairs.parquet, manifest.json")
    return 0
