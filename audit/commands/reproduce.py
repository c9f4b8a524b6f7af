"""``audit reproduce EXPERIMENT --out DIR``: the paper's experiments, figures as PNG and numbers as CSV.

``toy-mnist`` is Figure 2a, ``label-noise-robustness`` Figure 2b; ``--quick`` runs a smaller version
of either (well under a minute on 2 CPU cores).
"""

from __future__ import annotations


def _floats(s: str) -> tuple[float, ...]:
    import argparse

    out = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "/" in part:  # 64/255
                a, b = part.split("/")
                out.append(float(a) / float(b))
            else:
                out.append(float(part))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{s!r}: expected comma-separated numbers (fractions like 64/255 allowed)") from None
    return tuple(out)


def _common(p) -> None:
    p.add_argument("--out", required=True, help="output folder (a rerun with the same options resumes)")
    p.add_argument("--quick", action="store_true", help="a smaller version of the experiment, well under a minute on 2 CPU cores")
    p.add_argument("--seeds", type=int, default=None, help="seeds per grid point (the 95%% bands are over seeds)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else 1; more is faster only on idle cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce the paper's experiments (figures as PNG, numbers as CSV)",
                       description=__doc__)
    exp = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")

    t = exp.add_parser("toy-mnist", help="Figure 2a: label noise makes an interpolating FC net adversarially vulnerable",
                       description="Two images (a 0 and a 1) plus Gaussian noise of variance sigma2, labels flipped at "
                                   "rate eta, a 4-layer FC net trained to zero training error, l-inf PGD eps 64/255 "
                                   "(400 steps of 0.01). Writes toy_mnist.png, toy_mnist.csv, toy_mnist_runs.csv.")
    _common(t)
    t.add_argument("--source", default=None, help="dataset spec to take the 0 and the 1 from (default digits, upscaled "
                                                  "to 28x28; e.g. npz:mnist.npz or mnist:ROOT for MNIST itself)")
    t.add_argument("--sigma2", type=_floats, default=None, help="noise variances (default 0.1,0.3,0.5)")
    t.add_argument("--etas", type=_floats, default=None, help="label noise rates (default 0,0.02,0.05,0.1,0.15,0.2)")
    t.add_argument("--n-train", type=int, default=None, help="training samples (default 4000)")
    t.add_argument("--n-test", type=int, default=None, help="test samples for the test error (default 1000)")
    t.add_argument("--n-attack", type=int, default=None, help="test samples attacked (default 250)")
    t.add_argument("--width", type=float, default=None, help="hidden width multiplier (1 = 256 units)")
    t.add_argument("--min-epochs", type=int, default=None, help="train at least this long, then until zero training error")
    t.add_argument("--max-epochs", type=int, default=None, help="stop here even above zero training error (default 400)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam")
    t.add_argument("--lr", type=float, default=None, help="default 1e-3 (adam)")
    t.add_argument("--eps", type=_floats, default=None, help="attack radii (default 64/255; --quick 0.05,0.1,64/255)")
    t.add_argument("--steps", type=int, default=None, help="PGD steps (default 400; --quick 30)")
    t.add_argument("--step-size", type=_floats, default=None, help="PGD step (default 0.01; --quick 2.5*eps/steps)")
    t.set_defaults(func=main)

    n = exp.add_parser("label-noise-robustness", help="Figure 2b: adversarial error against label noise for several eps",
                       description="Train the dataset's natural model at each label noise rate eta and measure "
                                   "adversarial error for several eps. Writes label_noise.png, label_noise.csv, "
                                   "label_noise_runs.csv.")
    _common(n)
    n.add_argument("--dataset", default="digits", help="dataset spec (default digits; see `audit run --help`)")
    n.add_argument("--etas", type=_floats, default=None, help="label noise rates (default 0,0.1,0.2,0.3,0.4)")
    n.add_argument("--eps", type=_floats, default=None,
                   help="attack radii in [0,1] pixel units (default 1/4, 1/2, 1 x the dataset's training eps)")
    n.add_argument("--arch", choices=["mlp", "mnist_cnn", "resnet18"], default=None,
                   help="architecture (default: the dataset's, as `audit run` picks it)")
    n.add_argument("--width", type=float, default=None, help="width multiplier (default: the dataset's)")
    n.add_argument("--epochs", type=int, default=None, help="training epochs (dataset default; --quick 30)")
    n.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the dataset's)")
    n.add_argument("--batch-size", type=int, default=None, help="batch size (default: the dataset's)")
    n.add_argument("--steps", type=int, default=None, help="PGD steps (default 20; --quick 10)")
    n.add_argument("--n-attack", type=int, default=None, help="test images attacked (default 1000)")
    n.set_defaults(func=main)


def _one(v):
    from audit.errors import AuditInputError

    if v is None:
        return None
    if len(v) != 1:
        raise AuditInputError(f"expected one number, got {len(v)}: {v}")
    return v[0]


def main(args) -> int:
    if args.experiment == "toy-mnist":
        from audit.reproduce import toy_mnist as exp

        cfg = exp.config_from_options(
            args.quick, source=args.source, sigma2=args.sigma2, etas=args.etas, seeds=args.seeds, n_train=args.n_train,
            n_test=args.n_test, n_attack=args.n_attack, width=args.width, min_epochs=args.min_epochs,
            max_epochs=args.max_epochs, optimizer=args.optimizer, lr=args.lr, eps=args.eps, steps=args.steps, step_size=_one(args.step_size))
        summary = exp.run(cfg, args.out, device=args.device, threads=args.threads, progress=not args.quiet)
        cols = ["sigma2", "eta", "eps", "adversarial_error_mean", "test_error_mean", "train_error_mean", "seeds"]
        names = "toy_mnist.png, toy_mnist.csv, toy_mnist_runs.csv"
    else:
        from audit.reproduce import label_noise as exp

        cfg = exp.config_from_options(
            args.quick, dataset=args.dataset, etas=args.etas, eps=args.eps, seeds=args.seeds, arch=args.arch,
            width=args.width, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, steps=args.steps,
            n_attack=args.n_attack)
        summary = exp.run(cfg, args.out, device=args.device, threads=args.threads, progress=not args.quiet)
        cols = ["eps", "eta", "adversarial_error_mean", "test_error_mean", "train_error_mean", "seeds"]
        names = "label_noise.png, label_noise.csv, label_noise_runs.csv"
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}/{names}")
    return 0
