"""``run_audit``: load the data, plan the stages, run them through an engine, assemble the tables.

The stages (:mod:`audit.stages`) are pure functions of their sub-configs (:mod:`audit.recipes`);
the :class:`~audit.orchestrator.Orchestrator` owns the run directory (cache, manifest, lock,
checkpoints); an engine (:mod:`audit.engines`) runs the independent trainings here or on Ray; the
tables are assembled without I/O (:mod:`audit.signals.table`) and written here.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from audit import __version__
from audit.config import RunConfig, default_threads, resolve_defaults, validate_config
from audit.data import TEST, TRAIN, AuditDataset, inject_noise, load_dataset
from audit.device import autocast, cpu_has_bf16, precision, resolve_device
from audit.engines import Task, make_engine
from audit.errors import AuditInputError
from audit.io import read_json, save_arrays, write_parquet
from audit.orchestrator import STAGE_VERSIONS, Orchestrator, numpy_seed
from audit.recipes import (
    apgd_config,
    as_key,
    crossval_config,
    data_config,
    eval_config,
    pair_config,
    train_recipe,
)
from audit.rows import Rows, subset
from audit.signals.canaries import CanarySet, plant_canaries
from audit.signals.table import TableContext, build_tables
from audit.stages import (
    BN_ARCHS,
    TrainData,
    apgd_stage,
    aug_stage,
    crossval_stage,
    influence_stage,
    issues_stage,
    train_arrays,
    train_stage,
)



def absolute_spec(spec: str) -> str:
    """``npz:data/x.npz`` -> ``npz:/abs/data/x.npz``, so the app and reports find the data from any
    working directory; specs without a path (``digits``) are returned as they are."""
    prefix, sep, arg = spec.partition(":")
    if not sep or not arg:
        return spec
    return f"{prefix}:{Path(arg).expanduser().resolve()}"


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("torch", "torchvision", "cleanlab", "faiss-cpu", "numpy", "pandas", "pyarrow", "scikit-learn"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def prepare_dataset(cfg: RunConfig) -> AuditDataset:
    """Load ``cfg.dataset`` and inject ``cfg.noise`` into its training labels."""
    ds = load_dataset(cfg.dataset, download=cfg.download, max_image_pixels=cfg.max_image_pixels)
    # the fingerprint of the data as it lies on disk, before any injected noise: what a reader of the
    # run directory checks before it reads images (the run's ``fingerprint`` covers the noisy labels)
    ds.extra["source_fingerprint"] = ds.fingerprint()
    if cfg.image_size:
        ds = ds.resized(cfg.image_size)
    if cfg.noise > 0:
        confusion = None
        if cfg.noise_kind == "confusion":
            from audit.data.noise import model_confusion

            confusion = model_confusion(ds, seed=cfg.seed)
        ds = inject_noise(ds, cfg.noise, kind=cfg.noise_kind, seed=cfg.seed, confusion=confusion)
    return ds


def load_inputs(cfg: RunConfig, ds: AuditDataset) -> dict:
    """``--pred-probs`` / ``--features``, checked against the dataset (:mod:`audit.data.given`)."""
    from audit.data.given import load_given

    out = {}
    for name in ("pred_probs", "features"):
        path = getattr(cfg, name)
        if path:
            out[name] = load_given(path, ds, "--" + name.replace("_", "-"))
    return out


def _with_given_checks(health: dict, probs, ds: AuditDataset, canaries: CanarySet, data: TrainData, cv: dict) -> dict:
    """The health record with the checks of ``--pred-probs`` (:func:`audit.health.check_given`): a file
    that fails is named, and its signal leaves the choice like a failed model's."""
    from audit import health as h
    from audit.data.given import train_order

    te = ds.split_indices(TEST)
    test = probs.values[te] if probs.covered[te].all() and len(te) else None
    real = ~data.is_canary  # a canary's label is not the one its source's probabilities were made for
    checks = h.check_given(train_order(probs.values, ds, canaries)[real], test, cv["oos_probs"][real],
                           data.train_labels[real], data.test_labels)
    failed = h.failures(checks)
    out = {**health, "checks": health["checks"] + [c.as_dict() for c in checks],
           "failed": {**health["failed"], **failed}, "warnings": list(health["warnings"])}
    if failed:
        texts = "; ".join(c.text for c in checks if c.ok is False)
        out["ok"] = False
        out["warnings"].append(f"--pred-probs failed {', '.join(failed['given'])} ({texts}); "
                               f"given_cleanlab was left out of issue_score")
    return out


def build_train_data(ds: AuditDataset, cfg: RunConfig) -> tuple[TrainData, CanarySet]:
    """The training set every model sees: the real training rows except the canaries' sources, then
    the canaries (their images with a flipped label); and the test rows. Images stay where the dataset
    holds them (:class:`audit.rows.Rows` views; a memmap is read batch by batch); only the canaries'
    images are copied."""
    tr, te = ds.split_indices(TRAIN), ds.split_indices(TEST)
    dc = data_config(cfg)
    cs = plant_canaries(Rows.of(ds.images, tr), ds.labels[tr], ds.num_classes, dc.canary_rate, dc.seed)
    data = TrainData(
        train_images=cs.images, train_labels=cs.labels,
        test_images=Rows.of(ds.images, te), test_labels=ds.labels[te].astype(np.int64),
        is_canary=cs.is_canary,  # no canary has a twin in training, so the folds need no grouping
        num_classes=ds.num_classes)
    return data, cs


def run_audit(cfg: RunConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Run the whole audit into ``out`` and return the manifest.

    Writes ``manifest.json``, ``examples.parquet``, ``pairs.parquet``, ``dynamics.npz`` and
    ``checkpoints/<model>.pt``. Raises :class:`audit.errors.AuditInputError` on bad input before any
    heavy work, and when another process is writing ``out``.
    """
    t_start = time.perf_counter()
    validate_config(cfg)
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AuditInputError(f"--out {out}: exists and is not a directory")
    ds = prepare_dataset(cfg)
    if not cfg.models:  # --models none: no training, the user's probabilities alone
        from audit.given_run import run_given

        return run_given(cfg, ds, load_inputs(cfg, ds), out, progress=progress, t_start=t_start)
    n_train = int((ds.split == TRAIN).sum())
    if n_train < 2 * cfg.folds:
        raise AuditInputError(f"--dataset {cfg.dataset}: {n_train} training examples, need at least {2 * cfg.folds}")
    inputs = load_inputs(cfg, ds)
    given = cfg
    cfg = validate_config(resolve_defaults(cfg, ds.shape, n_train, device.type == "cuda"))
    data, canaries = build_train_data(ds, cfg)
    fingerprint = ds.fingerprint()
    with Orchestrator(out, fingerprint, progress=progress) as orch:
        cfg, recipe, pending = _calibrated(orch, given, cfg, data, device)
        recipe = {**recipe, "precision": _precision_record(cfg, device)}
        _drop_stale_outputs(out, cfg, fingerprint)
        base = {**_manifest_base(cfg, ds, data, device, fingerprint), "recipe": recipe}
        if inputs:
            base["inputs"] = {k.replace("_", "-"): v.record() for k, v in inputs.items()}
        if progress:
            orch.log(plan_line(cfg, data, recipe, estimate_seconds(cfg, data, device)))
        orch.write_manifest(base, "running")
        numpy_seed(cfg.seed)
        try:
            features = None
            if "features" in inputs:
                from audit.data.given import train_order

                fv = inputs["features"].values
                features = {"train_features": train_order(fv, ds, canaries), "test_features": fv[ds.split_indices(TEST)],
                            "fingerprint": inputs["features"].fingerprint}
            trained, cv, infl, health, cfg = _run_stages(orch, cfg, data, device, threads, base, features, pending)
            recipe = base["recipe"]
            if "pred_probs" in inputs:
                health = _with_given_checks(health, inputs["pred_probs"], ds, canaries, data, cv)
        except BaseException:
            orch.write_manifest(base, "failed")
            raise
        try:
            issues = _run_issues(orch, ds, canaries, trained["natural"], health["final_stages"]["natural"], device,
                                 inputs.get("features"))
        except BaseException:
            if orch.stages.get("issues", {}).get("status") == "running":
                orch.stages["issues"]["status"] = "failed"
            orch.write_manifest(base, "failed")
            raise
        ctx = TableContext(models=tuple(cfg.models), ds=ds, data=data, canaries=canaries,
                           fingerprint=fingerprint, config_hash=cfg.hash(), unhealthy=health["failed"],
                           given_probs=inputs.get("pred_probs"))
        try:
            return _write_tables(orch, base, ctx, (trained, cv, infl, health, issues), recipe, t_start)
        except BaseException:  # a full disk, a kill: the manifest says the run failed, not "running"
            orch.stages["write"] = {"status": "failed"}
            try:
                orch.write_manifest(base, "failed")
            except OSError:  # the disk that failed the tables may fail the manifest too: the first error counts
                pass
            raise


def _write_tables(orch: Orchestrator, base: dict, ctx: TableContext, stages: tuple, recipe: dict,
                  t_start: float) -> dict:
    """Assemble the tables from the stages' arrays (``stages``: trained, cv, infl, health, issues), write
    them and the complete manifest."""
    trained, cv, infl, health, issues = stages
    t0 = time.perf_counter()
    tables = build_tables(ctx, trained, cv, infl, issues=issues)
    if tables.extra.get("issue_types", {}).get("summary"):
        orch.log(tables.extra["issue_types"]["summary"])
    write_parquet(orch.out / "examples.parquet", tables.examples, tables.meta)
    write_parquet(orch.out / "pairs.parquet", tables.pairs, tables.meta)
    save_arrays(orch.out / "dynamics.npz", tables.dynamics)
    orch.stages["write"] = {"status": "done", "seconds": round(time.perf_counter() - t0, 3)}
    metrics = {**tables.metrics, "wall_seconds": round(time.perf_counter() - t_start, 2),
               "compute_seconds": orch.compute_seconds()}
    extra = {**tables.extra, "neighbors": json.loads(str(infl.get("neighbors_info", "{}"))),
             "health": health, "warnings": _recipe_warnings(recipe) + health["warnings"]
             + tables.extra.get("flagging", {}).get("warnings", [])}
    return orch.write_manifest(base, "complete", metrics, extra)


def _calibrated(orch: Orchestrator, given: RunConfig, cfg: RunConfig, data: TrainData,
                device: torch.device) -> tuple[RunConfig, dict, dict | None]:
    """The attack radius from the data (:mod:`audit.train.calibrate`) unless ``--eps`` or ``--preset``
    sets it or no robust model trains; a cached stage like the others. Returns the config with its eps
    (and a step size that follows it unless ``--step-size`` was given), the manifest's ``recipe`` and,
    where the ladder's top is judged on the run's own robust model (``top_first_applies``) and no cached
    verdict exists, what :func:`_judge_radius` needs after the first trainings (else ``None``): the config
    then holds the top radius."""
    from audit.train.calibrate import LADDERS, rule_for, top_first_applies

    robust = [m for m in cfg.models if m != "natural"]
    if given.eps is not None or given.preset or not robust:
        source = "option" if given.eps is not None else "preset" if given.preset else "default (no robust model)"
        return cfg, {"eps": {"value": cfg.eps, "source": source}}, None
    nat, rob = train_recipe(cfg, "natural"), train_recipe(cfg, robust[0])
    config = {"natural": nat, "robust": replace(rob, eps=1.0, step_size=rob.step_size / rob.eps), "data": data_config(cfg),
              "rule": rule_for(rob.norm, rob.arch)}
    if cfg.precision != "auto":
        config["precision"] = cfg.precision
    top_first = top_first_applies(rob.arch, len(data.test_labels), len(data.train_labels))
    if top_first:  # only these runs' keys say so: every other run's key is as it was
        config["top_first"] = True
    orch.key("calibrate", "calibrate", config)  # the budget follows from the robust recipe and the data
    arrays = orch.cached("calibrate")
    if arrays is None:
        orch.start("calibrate")
        t0 = time.perf_counter()
        res = _subset_calibration(cfg, data, device, nat, rob, orch.progress, () if top_first else None)
        arrays = orch.store("calibrate", {"result": np.array(json.dumps(res))}, time.perf_counter() - t0)
    res = json.loads(str(arrays["result"]))
    if not top_first:
        return _at_eps(given, cfg, res), {"eps": {"value": res["eps"], "source": "calibrated", **res}}, None
    # the top radius, judged on the run's own models after their training (:func:`_judge_radius`); a
    # verdict cached for these trainings (their keys at the top radius) decides now
    top = LADDERS[rob.norm][rob.arch][0]
    cfg_top = _at_eps(given, cfg, {**res, "eps": top})
    _key_verdict(orch, cfg_top)
    cached = orch.cached("calibrate_top")
    if cached is not None:
        verdict = json.loads(str(cached["result"]))
        return (_at_eps(given, cfg, {**res, **verdict}),
                {"eps": {"value": verdict["eps"], "source": "calibrated", **verdict}}, None)
    reason = (f"the ladder's top, judged on the {robust[0]} model's test accuracy after training; "
              "smaller radii on a subset only if it fails")
    return cfg_top, {"eps": {"value": top, "source": "calibrated", "method": "top_first", "pending": True,
                             "reason": reason}}, {"given": given, "cfg": cfg, "natural": nat, "robust": rob,
                                                  "reference": res}


def _key_verdict(orch: Orchestrator, cfg_top: RunConfig) -> None:
    """Key the ``calibrate_top`` stage (the verdict on the top radius): the trainings it judges, keyed at
    the top radius, and the natural reference are its upstream."""
    from audit.health import CHANCE_MARGIN
    from audit.train.calibrate import KEEP

    graph = stage_configs(cfg_top)
    judged = ("train_natural", f"train_{next(m for m in cfg_top.models if m != 'natural')}")
    for name in judged:
        kind, config, upstream = graph[name]
        orch.key(name, kind, config, upstream)
    orch.key("calibrate_top", "calibrate", {"keep": KEEP, "chance_margin": CHANCE_MARGIN},
             ("calibrate",) + judged)


def _subset_calibration(cfg: RunConfig, data: TrainData, device: torch.device, nat, rob, progress: bool,
                        ladder: tuple | None = None) -> dict:
    """:func:`audit.train.calibrate.calibrate_eps` on the real training rows (no canaries), in the run's
    precision."""
    from audit.train.calibrate import calibrate_eps

    real = np.flatnonzero(~data.is_canary)
    with precision(cfg.precision):
        return calibrate_eps(subset(data.train_images, real), data.train_labels[real], data.num_classes, nat, rob,
                             device=device, progress=progress, budget_rows=rob.epochs * len(data.train_labels),
                             ladder=ladder)


def _at_eps(given: RunConfig, cfg: RunConfig, res: dict) -> RunConfig:
    """``cfg`` (resolved, before calibration) at the calibration's radius: the step size follows it unless
    ``--step-size`` was given; a natural reference that needed a lower learning rate lowers the run's."""
    upd = {"eps": res["eps"]}
    if given.lr is None and res.get("natural_lr", cfg.lr) < cfg.lr:
        upd["lr"] = res["natural_lr"]
    if given.step_size is None:
        upd["step_size"] = cfg.step_size * res["eps"] / cfg.eps
    return validate_config(replace(cfg, **upd))


def _judge_radius(orch: Orchestrator, pending: dict, cfg: RunConfig, data: TrainData, device: torch.device,
                  results: dict, final: dict) -> dict:
    """The ladder's top judged on the run's first trainings (``results``, at the top radius): the
    ``calibrate_top`` stage's result (as :func:`audit.train.calibrate.calibrate_eps` returns it, with
    ``method: top_first``), stored and cached like the other stages. When the top fails, the subset
    ladder runs from the next radius down, and the failed robust trainings' seconds count in the stage's."""
    from audit.train.calibrate import LADDERS, judge_top

    role = next(m for m in cfg.models if m != "natural")
    labels = data.test_labels

    def acc(arrays: dict) -> float:
        return float((arrays["test_logits"].argmax(1) == labels).mean())

    rob = pending["robust"]
    verdict = judge_top(cfg.eps, acc(results[final["natural"]]), acc(results[final[role]]), labels,
                        rob.epochs, role)
    ref = pending["reference"]
    orch.start("calibrate_top")
    if verdict["passed"]:
        res, seconds = {"eps": float(cfg.eps), "fallback": False, "tried": [verdict["tried"]],
                        "method": "top_first", "natural_accuracy": verdict["natural_accuracy"],
                        "natural_lr": ref["natural_lr"], "chance": verdict["chance"], "need": verdict["need"],
                        "rows": int(len(data.train_labels)), "held_out": verdict["held_out"],
                        "reason": verdict["reason"]}, 0.0
    else:
        orch.log(f"calibrate: {verdict['reason']}; trying smaller radii on a subset")
        t0 = time.perf_counter()
        ladder = LADDERS[rob.norm][rob.arch][1:]
        sub = _subset_calibration(pending["cfg"], data, device, pending["natural"], rob, orch.progress, ladder)
        failed_training = sum(orch.stages.get(final[m], {}).get("seconds") or 0.0 for m in cfg.models if m != "natural")
        seconds = time.perf_counter() - t0 + failed_training
        res = {**sub, "method": "top_first", "tried": [verdict["tried"]] + sub["tried"],
               "top": {**{k: verdict[k] for k in ("natural_accuracy", "need", "chance", "held_out")},
                       "training_seconds": round(failed_training, 3)},
               "reason": f"{verdict['reason']}; on a subset, {sub['reason']}"}
    orch.store("calibrate_top", {"result": np.array(json.dumps(res))}, seconds)
    return res


def in_dataset_order(ds: AuditDataset, canaries: CanarySet, train_values: np.ndarray,
                     test_values: np.ndarray) -> np.ndarray:
    """Per-row values of the training set the models saw (real rows, then canaries: (N_aug, ...)) and of
    the test rows, put back in dataset order (N, ...): a canary's value goes to its source row (the
    canary is an exact copy of that image)."""
    tr = ds.split_indices(TRAIN)
    out = np.empty((len(ds.labels), *train_values.shape[1:]), train_values.dtype)
    n_real = len(canaries.real_rows)
    out[tr[canaries.real_rows]] = train_values[:n_real]
    out[tr[canaries.source]] = train_values[n_real:]
    out[ds.split_indices(TEST)] = test_values
    return out


def _run_issues(orch: Orchestrator, ds: AuditDataset, canaries: CanarySet, natural: dict, natural_stage: str,
                device: torch.device, features=None) -> dict:
    """The ``issues`` stage (:func:`audit.stages.issues_stage`), cached like the others: its key is the
    issue thresholds, the natural model's stage (its embeddings and predictions) and the data."""
    from audit.issues import IssueConfig

    ic = IssueConfig()
    orch.key("issues", "issues", {"issues": ic, **({"features": features.fingerprint} if features else {})},
             (natural_stage,))
    arrays = orch.cached("issues")
    if arrays is not None:
        return arrays
    orch.start("issues")
    t0 = time.perf_counter()
    emb = (features.values if features is not None else
           in_dataset_order(ds, canaries, natural["train_features"], natural["test_features"])).astype(np.float32)
    pred = in_dataset_order(ds, canaries, natural["train_logits"].argmax(1), natural["test_logits"].argmax(1))
    sizes = ds.extra.get("source_wh")
    sizes = np.asarray(sizes, np.int64) if sizes is not None and len(sizes) == len(ds.labels) else None
    arrays = issues_stage(ds.images, ds.labels, ds.split, ic, num_classes=ds.num_classes, embeddings=emb,
                          predictions=pred, sizes=sizes, device=str(device))
    return orch.store("issues", arrays, time.perf_counter() - t0)


def _recipe_warnings(recipe: dict) -> list[str]:
    """A calibration that found no radius at which PGD-AT learns is named, not only recorded; so is
    ``--precision bf16`` on a CPU without bf16 instructions (it runs slower than float32 there)."""
    eps, prec = recipe.get("eps", {}), recipe.get("precision", {})
    out = [f"attack radius: {eps['reason']}"] if eps.get("fallback") else []
    if prec.get("slow"):
        out.append("precision: --precision bf16 on a CPU without AMX-BF16 or AVX512-BF16 instructions runs slower "
                   "than float32; drop the option here")
    return out


def _precision_record(cfg: RunConfig, device: torch.device) -> dict:
    """The manifest's ``recipe.precision``: the arithmetic the stages ran in, and whether that is slow here."""
    value = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return {"value": value, "option": cfg.precision,
            "slow": bool(cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16())}


def estimate_seconds(cfg: RunConfig, data: TrainData, device: torch.device) -> float:
    """A rough forecast of the trainings' time: three timed training steps of the natural model on this
    machine (after one untimed), times the forward-backward passes every training of the plan makes
    (a PGD step costs about one; the folds train on (K-1)/K of the rows). Retries are not foreseen."""
    from audit.train.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.arch, data.shape, data.num_classes, cfg.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    b = min(cfg.batch_size, len(data.train_labels))
    x = torch.from_numpy(np.ascontiguousarray(data.train_images[np.arange(b)])).to(device).float() / 255
    y = torch.as_tensor(data.train_labels[:b]).to(device)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        opt.zero_grad()
        with precision(cfg.precision), autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    per_image = float(np.median(times[1:])) / b
    n = len(data.train_labels)
    robust = [m for m in cfg.models if m != "natural"]
    passes = n * cfg.epochs + sum(n * cfg.robust_epochs * (cfg.steps + 1) for _ in robust)
    passes += cfg.folds * cfg.repeats * n * (cfg.folds - 1) / cfg.folds * cfg.cv_epochs
    if cfg.augment != "none":
        passes += n * cfg.aug_epochs * (cfg.aug_width / cfg.width)
    return passes * per_image


def plan_line(cfg: RunConfig, data: TrainData, recipe: dict, seconds: float | None = None) -> str:
    """One line before training: the models, their epochs, the radius and why, and the forecast time."""
    eps = recipe["eps"]
    why = eps.get("reason") or eps["source"]
    robust = [m for m in cfg.models if m != "natural"]
    arith = f", {recipe['precision']['value']}" if recipe.get("precision", {}).get("option", "auto") != "auto" else ""
    parts = [f"{cfg.arch} x{cfg.width:g} on {len(data.train_labels):,} training images{arith}",
             f"natural {cfg.epochs} epochs"]
    if robust:
        parts.append(f"{'/'.join(robust)} {cfg.robust_epochs} epochs at eps {cfg.eps:.4g} ({why})")
    if cfg.augment != "none":
        parts.append(f"augmented {cfg.aug_epochs} epochs")
    parts.append(f"cross-validation {cfg.folds}x{cfg.repeats} folds of {cfg.cv_epochs} epochs")
    if seconds is not None:
        parts.append(f"about {seconds / 60:.0f} min of training" if seconds >= 90 else
                     f"about {seconds:.0f} s of training")
    return "plan: " + "; ".join(parts)


def stage_configs(cfg: RunConfig) -> dict[str, tuple[str, dict, tuple[str, ...]]]:
    """The stage graph of a resolved config: name -> (algorithm, sub-configs it reads, upstream stages)."""
    ev, dc = eval_config(cfg), data_config(cfg)
    out = {f"train_{m}": ("train", {"recipe": train_recipe(cfg, m), "eval": ev, "data": dc,
                                    # the natural model's batch-norm statistics (stages.recompute_bn); only
                                    # nets with batch norm change, so only their keys say so
                                    **({"bn_stats": "recomputed"} if m == "natural" and cfg.arch in BN_ARCHS
                                       else {})}, ())
           for m in cfg.models}
    if cfg.augment != "none":
        out["train_aug"] = ("train_aug", {"recipe": train_recipe(cfg, "aug"), "data": dc}, ())
    out["crossval"] = ("crossval", {"cv": crossval_config(cfg), "data": dc}, ())
    if cfg.eval_attack == "apgd":
        out.update({f"apgd_{m}": ("apgd", {"apgd": apgd_config(cfg), "data": dc}, (f"train_{m}",)) for m in cfg.models})
    out["influence"] = ("influence", {"pairs": pair_config(cfg), "data": dc},
                        tuple(f"train_{m}" for m in cfg.models) + ("crossval",))
    if cfg.precision != "auto":  # part of every key; the default adds nothing, so earlier caches stay valid
        out = {name: (kind, {**config, "precision": cfg.precision}, up) for name, (kind, config, up) in out.items()}
    return out


def _train_task(orch: Orchestrator, name: str, kind: str, config: dict, data: TrainData, cfg: RunConfig,
                dev: str, gpus: float, results: dict | None = None, evaluate_from: dict | None = None) -> Task:
    """The engine task of one training stage (a model, the augmented model or the cross-validation); a
    stage whose config names ``continue_from`` starts from that stage's arrays (in ``results``); with
    ``evaluate_from`` (the same training's arrays, evaluated at another radius) it only evaluates."""
    prog = orch.progress
    if kind in ("train", "train_aug"):  # --compile changes speed, not results: no part of the cache key
        args = (data, config["recipe"], config["eval"]) if kind == "train" else (data, config["recipe"])
        kw = {"resume": orch.resume_path(name), "progress": prog, "compile": cfg.compile}
        if config.get("continue_from"):
            kw["init"] = results[config["continue_from"]]
        if evaluate_from is not None:
            kw["evaluate_from"] = evaluate_from
    else:
        args, kw = (data, config["cv"]), {"progress": prog}
    return Task(name, STAGE_FUNCTIONS[kind], args, {"device": dev, **kw}, gpus, precision=cfg.precision)


def _role(name: str) -> str:
    """``train_pgd`` / ``train_pgd_try2`` -> ``pgd``; ``crossval`` / ``crossval_try2`` -> ``crossval``."""
    return name.removeprefix("train_").split("_try")[0]


def _run_stages(orch: Orchestrator, cfg: RunConfig, data: TrainData, device: torch.device, threads: int,
                base: dict, features: dict | None = None,
                pending: dict | None = None) -> tuple[dict, dict, dict, dict, RunConfig]:
    """Key every stage, load the cached ones, run the rest (trainings through the engine), check each
    trained model (:mod:`audit.health`) and retrain the ones that fail, at most ``MAX_RETRIES`` times.
    ``pending`` (from :func:`_calibrated`): the radius is the ladder's top, to be judged on the first
    trainings (:func:`_judge_radius`); when it fails, the robust models train again at the radius the
    subset ladder finds, the natural model is evaluated again there, and ``base`` is updated.
    Returns (trained arrays per role, cross-validation arrays, influence arrays, the health record, the
    config with its final radius)."""
    from audit import health

    graph = stage_configs(cfg)
    dev, gpus = str(device), (1.0 if device.type == "cuda" else 0.0)
    final = {}  # role -> the stage name of its current attempt
    for name, (kind, config, upstream) in graph.items():
        if kind in ("train", "train_aug", "crossval"):
            orch.key(name, kind, config, upstream)
            final[_role(name)] = name
    configs = {name: graph[name] for name in final.values()}
    results: dict[str, dict | None] = {}

    def started(t: Task) -> None:
        orch.start(t.name)
        orch.write_manifest(base, "running")

    def done(t: Task, arrays: dict, seconds: float) -> None:
        orch.store(t.name, arrays, seconds)
        results[t.name] = arrays
        orch.write_manifest(base, "running")

    def run_round(names: list[str], again: dict | None = None) -> None:
        tasks = [_train_task(orch, n, configs[n][0], configs[n][1], data, cfg, dev, gpus, results,
                             (again or {}).get(n)) for n in names]
        for t in tasks:
            results[t.name] = _cached(orch, t.name)
        make_engine(cfg.engine, threads, cfg.ray_address).run_all(
            [t for t in tasks if results[t.name] is None], done, started)

    attempts: dict[str, list[dict]] = {role: [] for role in final}
    try:
        run_round(list(final.values()))
        if pending is not None:
            res = _judge_radius(orch, pending, cfg, data, device, results, final)
            base["recipe"] = {**base["recipe"], "eps": {"value": res["eps"], "source": "calibrated", **res}}
            if res["eps"] != cfg.eps:  # the top failed: the robust models again, the natural model's evaluation
                cfg = _at_eps(pending["given"], pending["cfg"], {**pending["reference"], **res})
                base.update(config=cfg.to_dict(), config_hash=cfg.hash())
                graph = stage_configs(cfg)
                redo, again, before = [], {}, {}
                for name in list(final.values()):
                    kind, config, upstream = graph[name]
                    if as_key(config) == as_key(configs[name][1]):
                        continue  # the augmented model and the folds do not depend on the radius
                    if _role(name) == "natural" and config["recipe"] == configs[name][1]["recipe"]:
                        again[name] = results[name]  # the same training, evaluated at the new radius
                        before[name] = orch.stages.get(name, {}).get("seconds") or 0.0
                    orch.key(name, kind, config, upstream)
                    configs[name] = (kind, config, upstream)
                    redo.append(name)
                run_round(redo, again)
                for name, seconds in before.items():  # its stage's time includes the training it reuses
                    st = orch.stages.get(name, {})
                    if st.get("status") == "done":
                        st["seconds"] = round((st.get("seconds") or 0.0) + seconds, 3)
                        orch.log(f"{name}: its training reused, evaluated again at eps {cfg.eps:.4g}")
        for attempt in range(1, health.MAX_RETRIES + 2):
            trained = {r: results[n] for r, n in final.items() if r != "crossval"}
            checks = health.check_models(trained, results[final["crossval"]], data.train_labels, data.test_labels)
            failed = health.failures(checks)
            retry = []
            for role, names in failed.items():
                name = final[role]
                kind, config, upstream = configs[name]
                recipe = config["cv"].recipe if kind == "crossval" else config["recipe"]
                new, why = health.retry_recipe(recipe, names, attempt)
                attempts[role].append({"stage": name, "failed": names, "retry": why or None})
                stopped = int(np.asarray(results[name].get("collapsed_at", -1)))
                if stopped > 0:
                    attempts[role][-1]["stopped"] = (f"its training accuracy fell back to chance: stopped after "
                                                     f"epoch {stopped} of {recipe.epochs}")
                if new is None:
                    continue
                retry_name = f"{'crossval' if kind == 'crossval' else 'train_' + role}_try{attempt + 1}"
                new_config = ({**config, "cv": replace(config["cv"], recipe=new)} if kind == "crossval"
                              else {**config, "recipe": new})
                if kind == "train" and names == ["fits"]:
                    # more epochs for a natural model that did not fit: go on from this attempt's weights
                    # (train_stage's ``init``), not from the start; its key follows this attempt's
                    new_config = {**new_config, "continue_from": name}
                    upstream = upstream + (name,)
                    why += f", the {new.epochs - recipe.epochs} more from this attempt's weights"
                    attempts[role][-1]["retry"] = why
                configs[retry_name] = (kind, new_config, upstream)
                orch.key(retry_name, kind, new_config, upstream)
                orch.log(f"{role}: failed {', '.join(names)}; retrying ({why})")
                final[role] = retry_name
                retry.append(retry_name)
            if not retry:
                break
            run_round(retry)
        for role, name in final.items():
            if not attempts[role] or attempts[role][-1]["stage"] != name:
                attempts[role].append({"stage": name, "failed": [], "retry": None})
        _promote_checkpoints(orch, final)
        trained = {r: results[n] for r, n in final.items() if r != "crossval"}
        cv = results[final["crossval"]]
        checks = health.check_models(trained, cv, data.train_labels, data.test_labels)
        record = _health_record(checks, attempts, final)
        pc_name = "influence"
        _, pconf, _ = graph[pc_name]
        if features is not None:  # --features: its neighbours, so its content is part of the key
            pconf = {**pconf, "features": features["fingerprint"]}
        orch.key(pc_name, "influence", pconf, tuple(final[m] for m in cfg.models) + (final["crossval"],))
        infl = _cached(orch, pc_name)
        if infl is None:
            pc = pconf["pairs"]
            robust = {m: trained[m] for m in pc.robust_models}
            feats = {k: v for k, v in features.items() if k != "fingerprint"} if features is not None else None
            task = Task(pc_name, influence_stage, (data, pc, trained["natural"], robust, cv),
                        {"device": dev, "features": feats}, precision=cfg.precision)
            make_engine("local", threads, None).run_all([task], done, started)
            infl = results[pc_name]
        _run_apgd(orch, graph, data, trained, final, dev, threads, done, started)
    except BaseException:
        for st in orch.stages.values():
            if st.get("status") == "running":
                st["status"] = "failed"
        raise
    return {k: train_arrays(v) for k, v in trained.items()}, cv, infl, record, cfg


def _promote_checkpoints(orch: Orchestrator, final: dict[str, str]) -> None:
    """A retried model's final weights become ``checkpoints/<model>.pt`` (what :func:`audit.load_model`
    and the APGD stage read); the failed attempts keep theirs under their own stage names."""
    import shutil

    for role, name in final.items():
        src = orch.ckpt / f"{name.removeprefix('train_')}.pt"
        if name.startswith("train_") and "_try" in name and src.exists():
            dst = orch.ckpt / f"{role}.pt"
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def _health_record(checks: list, attempts: dict, final: dict) -> dict:
    """The manifest's ``health``: every check of the final models, each model's attempts, the models that
    still fail, and one warning line per failure."""
    from audit import health

    failed = health.failures(checks)
    warnings = []
    for role, names in failed.items():
        texts = "; ".join(c.text for c in checks if c.model == role and c.ok is False)
        tries = len(attempts.get(role, []))
        warnings.append(f"{role} model failed {', '.join(names)} after {tries} "
                        f"training{'s' if tries != 1 else ''} ({texts}); its signals were left out of issue_score")
    return {"ok": not failed, "checks": [c.as_dict() for c in checks], "attempts": attempts,
            "final_stages": dict(final), "failed": failed, "warnings": warnings}


def _run_apgd(orch: Orchestrator, graph: dict, data: TrainData, trained: dict, final: dict, dev: str,
              threads: int, done, started) -> None:
    """``--eval-attack apgd``: one evaluation per model, reading its checkpoint; results join ``trained``."""
    tasks = []
    for name, (kind, config, upstream) in graph.items():
        if kind != "apgd":
            continue
        model = name.removeprefix("apgd_")
        orch.key(name, kind, config, (final[model],))
        cached = orch.cached(name)
        if cached is not None:
            trained[model]["apgd_correct_test"] = cached["apgd_correct_test"]
            continue
        state = torch.load(orch.ckpt / f"{model}.pt", map_location="cpu", weights_only=True)
        arrays = {**trained[model], **{f"state.{k}": v.numpy() for k, v in state.items()}}
        tasks.append(Task(name, apgd_stage, (data, config["apgd"], arrays), {"device": dev}, precision=cfg.precision))

    def finished(t: Task, arrays: dict, seconds: float) -> None:
        done(t, arrays, seconds)
        trained[t.name.removeprefix("apgd_")]["apgd_correct_test"] = arrays["apgd_correct_test"]

    make_engine("local", threads, None).run_all(tasks, finished, started)


STAGE_FUNCTIONS = {"train": train_stage, "train_aug": aug_stage, "crossval": crossval_stage}


def _cached(orch: Orchestrator, name: str) -> dict | None:
    arrays = orch.cached(name)
    if arrays is not None and _role(name) == "natural":
        try:
            arrays = orch.with_weights(name, arrays)
        except (OSError, KeyError, RuntimeError):  # its TracIn checkpoints are gone: train again
            orch.stages.pop(name, None)
            return None
    return arrays


def _manifest_base(cfg: RunConfig, ds: AuditDataset, data: TrainData, device: torch.device, fingerprint: str) -> dict:
    return {
        "tool": "benign-audit",
        "version": __version__,
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "dataset": {
            "spec": absolute_spec(ds.spec), "name": ds.name, "fingerprint": fingerprint,
            "source_fingerprint": ds.extra.get("source_fingerprint"),
            "num_train": int(data.num_real + data.is_canary.sum()), "num_test": int(len(data.test_labels)),
            "num_canaries": int(data.is_canary.sum()), "shape": list(ds.shape),
            "class_names": list(ds.class_names),
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "packages": _package_versions(),
        "stage_versions": dict(STAGE_VERSIONS),
    }


FINAL_OUTPUTS = ("examples.parquet", "pairs.parquet", "dynamics.npz", "report.html")


def _drop_stale_outputs(out: Path, cfg: RunConfig, fingerprint: str) -> None:
    """A run directory holds the outputs of one config and dataset: when the previous manifest says
    otherwise, its final tables go before any work starts (cached stages stay; their keys decide).
    Review decisions are never deleted."""
    man_path = out / "manifest.json"
    if not man_path.exists():
        return
    try:
        old = read_json(man_path)
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    ds_old = old.get("dataset") if isinstance(old.get("dataset"), dict) else {}
    same = old.get("config_hash") == cfg.hash() and ds_old.get("fingerprint") == fingerprint
    if not same:
        for name in FINAL_OUTPUTS:
            (out / name).unlink(missing_ok=True)
