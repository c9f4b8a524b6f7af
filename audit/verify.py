"""``audit verify RUN``: did cleaning help? Retrain with the run's recipe on the given labels, the
cleaned labels and (when the tool injected the noise) the true labels, over several seeds, and compare
clean and adversarial test accuracy.

The paper's thesis (Sanyal et al. 2021): memorized label noise makes an interpolating model
adversarially vulnerable while its clean accuracy barely moves, so the natural model's adversarial
accuracy is what cleaning should raise. Each variant trains the natural model (and PGD-AT when the run
has it) exactly as the run did (its resolved config in ``manifest.json``: architecture, width, epochs,
batch size, learning rate, attack), on the training split only (the run's canaries are an audit device,
not part of the data), and is evaluated on the test split under the run's evaluation attack at the
run's eps and at the paper's small eps (eps / 4).

Variants:

``given``    the training labels as the run saw them (``examples.parquet`` ``given_label``)
``cleaned``  ``--apply suggested``: ``suggested_label`` on flagged rows, the review decisions overriding
             (keep: given label; relabel: the reviewer's class; remove: row dropped);
             ``--apply decisions``: only the review decisions
``true``     ``clean_label``, when the run injected the noise: the ceiling

Every (labels, seed, model) result is cached in ``RUN/.cache/verify/<key>.json`` (the key hashes the
training recipe, the evaluation attack and the labels), so a rerun or an interrupted run skips what is
done; an interrupted training resumes from its last epoch. ``RUN/verify.json`` and ``RUN/verify.png``
are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import stats

from audit.config import RunConfig, config_from_dict
from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, read_json, write_json
from audit.recipes import eval_config, train_recipe
from audit.stages import eval_attack

if TYPE_CHECKING:
    from audit.rundir import RunDir

VERIFY_VERSION = 1
APPLY = ("suggested", "decisions")
METRICS = ("clean_accuracy", "adv_accuracy", "adv_accuracy_small")
NEEDED_COLUMNS = ["example_id", "split", "given_label", "suggested_label", "is_label_issue"]


@dataclass
class RunData:
    """What verification reads from a run directory and its dataset."""

    run_dir: Path
    cfg: RunConfig
    manifest: dict
    train: pd.DataFrame  # training rows of examples.parquet, in dataset order
    train_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: np.ndarray


def _bad(run_dir: Path, why: str) -> AuditInputError:
    return AuditInputError(f"{run_dir}: {why}")


def read_run(run: RunDir) -> tuple[dict, RunConfig, pd.DataFrame]:
    """manifest.json, its resolved config, examples.parquet of an opened :class:`audit.rundir.RunDir`
    (the checked run-directory reader); one-line errors (exit 2) on a bad directory."""
    examples = run.examples()
    missing = [c for c in NEEDED_COLUMNS if c not in examples.columns]
    if missing:
        raise AuditInputError(f"{run.file('examples.parquet')}: missing column(s) {', '.join(missing)}")
    return run.manifest, config_from_dict(run.manifest["config"]), examples


def load_run_data(run_dir: str | Path) -> RunData:
    """The run's config, its training rows in dataset order and the images, from the dataset the run
    audited (:meth:`audit.rundir.RunDir.dataset`: its fingerprint verified; nothing else is read)."""
    from audit.data import TEST, TRAIN
    from audit.rundir import RunDir

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    manifest, cfg, examples = read_run(run)
    ds = run.dataset()
    tr, te = ds.split_indices(TRAIN), ds.split_indices(TEST)
    train = examples.set_index("example_id").loc[ds.example_ids[tr].astype(str)].reset_index()
    return RunData(run_dir, cfg, manifest, train, torch.from_numpy(np.asarray(ds.images[tr])),
                   torch.from_numpy(np.asarray(ds.images[te])), ds.labels[te].astype(np.int64))


def variant_labels(data: RunData, apply: str = "suggested") -> dict[str, dict]:
    """Per variant: ``labels`` (training labels, -1 = removed) and counts of relabelled and removed rows.
    The cleaned labels are what ``audit export --apply APPLY`` writes (:func:`audit.export.label_plan`)."""
    from audit.export import label_plan

    if apply not in APPLY:
        raise AuditInputError(f"--apply {apply!r}: must be one of {', '.join(APPLY)}")
    t = data.train
    given = t["given_label"].to_numpy(np.int64)
    plan = label_plan(data.run_dir, apply).set_index("example_id").loc[t["example_id"]]
    cleaned = np.where(plan["removed"].to_numpy(bool), -1, plan["final_label"].to_numpy(np.int64))
    decided = int((plan["label_source"] == "reviewer").sum())
    out = {"given": given, "cleaned": cleaned}
    if "clean_label" in t.columns and data.cfg.noise > 0:
        out["true"] = t["clean_label"].to_numpy(np.int64)
    return {k: {"labels": v, "relabelled": int(((v != given) & (v >= 0)).sum()), "removed": int((v < 0).sum()),
                "decisions": decided if k == "cleaned" else 0}
            for k, v in out.items()}


def train_spec(cfg: RunConfig, method: str, seed: int, epochs: int | None = None, epochs_scale: float | None = None):
    """The run's recipe for ``method`` at ``seed``, epochs overridden by ``epochs`` or scaled by
    ``epochs_scale`` (at least 1)."""
    spec = train_recipe(cfg, method)
    e = epochs if epochs is not None else spec.epochs
    if epochs_scale is not None:
        e = max(1, round(e * epochs_scale))
    return replace(spec, epochs=int(e), seed=int(seed), tracin_checkpoints=1)  # no TracIn here


def _eval_attack(cfg: RunConfig):
    """The run's evaluation attack (:func:`audit.stages.eval_attack` of its evaluation config)."""
    return eval_attack(eval_config(cfg))


def attacks(cfg: RunConfig) -> dict[str, object]:
    """The run's evaluation attack at its eps and at the paper's small eps (eps / 4)."""
    return {"adv_accuracy": _eval_attack(cfg), "adv_accuracy_small": _eval_attack(replace(cfg, eps=cfg.eps / 4))}


def result_key(data: RunData, spec, labels: np.ndarray) -> str:
    ev = {k: asdict(a) for k, a in attacks(data.cfg).items()}
    fp = data.manifest.get("dataset", {}).get("source_fingerprint") or data.manifest.get("dataset", {}).get("fingerprint")
    h = hashlib.sha256(json.dumps([VERIFY_VERSION, asdict(spec), ev, fp], sort_keys=True).encode())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()[:20]


def train_and_evaluate(data: RunData, labels: np.ndarray, spec, device: torch.device, checkpoint: Path,
                       progress: bool = False) -> dict:
    """Train on the rows with a label (≥ 0) by ``spec``; test accuracy, clean and under both attacks."""
    from audit.train.engine import train_model
    from audit.train.evaluate import adversarial_correct, infer
    from audit.train.models import build_model

    keep = labels >= 0
    cfg = data.cfg
    torch.manual_seed(spec.seed)
    model = build_model(cfg.arch, tuple(data.train_images.shape[1:]), len(data.manifest["dataset"]["class_names"]),
                        cfg.width)
    res = train_model(model, data.train_images[torch.from_numpy(keep)], torch.from_numpy(labels[keep]), spec,
                      device=device, checkpoint=checkpoint, desc=f"verify {spec.method} seed {spec.seed}",
                      progress=progress, compile=False)
    y = torch.from_numpy(data.test_labels)
    out = {"clean_accuracy": float((infer(res.model, data.test_images, device)[0].argmax(1) == data.test_labels).mean())}
    for name, attack in attacks(cfg).items():
        torch.manual_seed(spec.seed + 1)
        out[name] = float(adversarial_correct(res.model, data.test_images, y, attack, device).mean())
    out["train_seconds"] = round(res.seconds, 2)
    return out


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean with a Student-t interval over seeds (no interval from a single seed)."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "low": None, "high": None, "values": v.tolist()}
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": v.tolist()}


def verify_run(run_dir: str | Path, *, seeds: int = 3, apply: str = "suggested", epochs: int | None = None,
               epochs_scale: float | None = None, device: str = "auto", progress: bool = False,
               log: Callable[[str], None] = lambda m: None) -> dict:
    """Train every (variant, seed, model) not cached yet; write and return ``RUN/verify.json``.
    ``log`` receives one line per training (``trained`` or ``cached``). Holds the run directory's lock
    (:class:`audit.orchestrator.RunDirLock`): an audit writing it, or another verify, makes this exit 2."""
    from audit.orchestrator import RunDirLock
    from audit.rundir import RunDir

    if seeds < 1:
        raise AuditInputError(f"--seeds {seeds}: must be ≥ 1")
    if epochs is not None and epochs < 1:
        raise AuditInputError(f"--epochs {epochs}: must be ≥ 1")
    if epochs_scale is not None and epochs_scale <= 0:
        raise AuditInputError(f"--epochs-scale {epochs_scale}: must be > 0")
    RunDir(run_dir)  # a clear error for what is not a run directory, before any lock file is made
    with RunDirLock(Path(run_dir), "verify"):
        return _verify_locked(run_dir, seeds, apply, epochs, epochs_scale, device, progress, log)


def _verify_locked(run_dir, seeds, apply, epochs, epochs_scale, device, progress, log) -> dict:
    from audit.device import resolve_device

    t0 = time.perf_counter()
    data = load_run_data(run_dir)
    variants = variant_labels(data, apply)
    dev = resolve_device(device)
    models = ["natural"] + (["pgd"] if "pgd" in data.cfg.models else [])
    cache = data.run_dir / ".cache" / "verify"
    trained = 0
    out_variants, epochs_used = {}, {}
    for name, v in variants.items():
        results = {}
        for m in models:
            runs = []
            for s in range(seeds):
                spec = train_spec(data.cfg, m, data.cfg.seed + s, epochs, epochs_scale)
                epochs_used[m] = spec.epochs
                key = result_key(data, spec, v["labels"])
                path = cache / f"{key}.json"
                if path.exists():
                    runs.append(read_json(path))
                    log(f"{name} {m} seed {spec.seed}: cached")
                    continue
                r = train_and_evaluate(data, v["labels"], spec, dev, cache / f"{key}.resume.pt", progress)
                write_json(path, r)
                runs.append(r)
                trained += 1
                log(f"{name} {m} seed {spec.seed}: trained in {r['train_seconds']:.1f} s")
            results[m] = {k: mean_interval([r[k] for r in runs]) for k in METRICS}
        out_variants[name] = {"n_train": int((v["labels"] >= 0).sum()), "relabelled": v["relabelled"],
                              "removed": v["removed"], "decisions": v["decisions"], "results": results}
    report = {
        "run": str(data.run_dir), "dataset": data.cfg.dataset, "apply": apply,
        "seeds": [data.cfg.seed + s for s in range(seeds)], "models": models, "epochs": epochs_used,
        "eps": data.cfg.eps, "small_eps": data.cfg.eps / 4, "norm": data.cfg.norm,
        "attack": {"steps": data.cfg.eval_steps, "restarts": data.cfg.eval_restarts},
        "variants": out_variants, "gain_recovered": gain_recovered(out_variants),
        "trained": trained, "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(data.run_dir / "verify.json", report)
    write_plot(report, data.run_dir / "verify.png")
    return report


def gain_recovered(variants: dict) -> dict:
    """(cleaned − given) / (true − given) of the natural model's adversarial accuracy, at each eps
    (None without a true variant or when true and given agree)."""
    out = {}
    for k in ("adv_accuracy", "adv_accuracy_small"):
        out[k] = None
        if "true" in variants:
            g, c, t = (variants[v]["results"]["natural"][k]["mean"] for v in ("given", "cleaned", "true"))
            out[k] = (c - g) / (t - g) if abs(t - g) > 1e-12 else None
    return out


def _cell(s: dict) -> str:
    mean = float(s["mean"])
    if s.get("low") is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {float(s['high']) - mean:.3f}"


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """``verify.json`` as a table: the header and one row per (variant, model) with each metric as
    "mean ± 95% half-width". The one reading of that file for the CLI, the report and the app; a file
    verify did not write raises KeyError, TypeError or ValueError."""
    eps, small = float(report["eps"]), float(report["small_eps"])
    head = ["variant", "train rows", "model", "clean acc", f"adv acc @{eps:g}", f"adv acc @{small:g}"]
    rows = [[str(name), str(int(v["n_train"])), str(m)] + [_cell(r[k]) for k in METRICS]
            for name, v in report["variants"].items() for m, r in v["results"].items()]
    return head, rows


def summary_lines(report: dict) -> list[str]:
    """What was cleaned and how much of the ceiling's gain cleaning recovered, in words."""
    c = report["variants"].get("cleaned", {})
    lines = [f"cleaned ({report['apply']}): {c.get('relabelled', 0)} relabelled, {c.get('removed', 0)} removed, "
             f"{c.get('decisions', 0)} review decisions; {len(report['seeds'])} seeds, 95% t-intervals"]
    g, eps, small = report["gain_recovered"], float(report["eps"]), float(report["small_eps"])
    parts = [f"{float(x):.0%} at eps {e:g}" for x, e in ((g.get("adv_accuracy"), eps), (g.get("adv_accuracy_small"), small))
             if x is not None]
    if parts:
        lines.append("gain recovered (natural model's adversarial accuracy, (cleaned − given) / (true − given)): "
                     + ", ".join(parts))
    return lines


def format_table(report: dict) -> str:
    """The variants × models table (mean ± 95% half-width over seeds) and the gain recovered."""
    head, body = summary_rows(report)
    rows = [head] + body
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + summary_lines(report))


def write_plot(report: dict, path: Path) -> None:
    """Bars per variant (mean, 95% interval) for each model and metric; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models, names = report["models"], list(report["variants"])
    labels = ["clean", f"adv @{report['eps']:g}", f"adv @{report['small_eps']:g}"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    width = 0.8 / len(names)
    for ax, m in zip(axes[0], models):
        for i, name in enumerate(names):
            r = report["variants"][name]["results"][m]
            mean = np.array([r[k]["mean"] for k in METRICS])
            err = np.array([0.0 if r[k]["low"] is None else r[k]["high"] - r[k]["mean"] for k in METRICS])
            ax.bar(np.arange(3) + (i - (len(names) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(np.arange(3), labels)
        ax.set_ylim(0, 1)
        ax.set_title(f"{m} model")
        ax.set_ylabel("test accuracy")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
