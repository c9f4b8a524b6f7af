"""The whole audit on the bundled digits: contract, detection quality, robustness, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

EXAMPLE_COLUMNS = [
    "example_id", "split", "index", "given_label", "suggested_label", "issue_score", "is_label_issue", "category",
    "self_influence", "memorization", "label_quality", "clean_label", "is_injected_noise",
]
PER_MODEL = ["pred_{}", "correct_{}", "loss_{}", "adv_correct_{}", "aum_{}", "forgetting_{}", "first_learned_{}"]


def test_examples_parquet_has_contract_columns(digits_run):
    out, man = digits_run
    df = pd.read_parquet(out / "examples.parquet")
    for c in EXAMPLE_COLUMNS + [p.format(m) for m in ("natural", "pgd") for p in PER_MODEL]:
        assert c in df.columns, c
    assert len(df) == 1797 and df["example_id"].is_unique
    assert set(df["split"]) == {"train", "test"}
    assert (df["split"] == "test").sum() == man["dataset"]["num_test"] == 450
    assert set(df["category"]) <= {"mislabelled", "atypical", "ambiguous", "ok"}
    assert df["issue_score"].between(0, 1).all()
    # adversarial correctness exists on test rows only
    assert df.loc[df.split == "test", "adv_correct_pgd"].notna().all()
    assert df.loc[df.split == "train", "adv_correct_pgd"].isna().all()
    # injected noise: exactly 10% of the training labels, none on test
    tr = df[df.split == "train"]
    assert tr["is_injected_noise"].sum() == round(0.1 * len(tr))
    assert not df.loc[df.split == "test", "is_injected_noise"].any()
    # no canary leaks into any output
    assert df["example_id"].str.startswith("digits-").all()
    meta = pq.read_schema(out / "examples.parquet").metadata
    assert b"benign_audit" in meta and b"class_names" in meta[b"benign_audit"]


def test_pairs_parquet_contract(digits_run):
    out, _ = digits_run
    pairs = pd.read_parquet(out / "pairs.parquet")
    df = pd.read_parquet(out / "examples.parquet")
    for c in ("test_id", "train_id", "rank", "similarity", "influence", "reason"):
        assert c in pairs.columns
    test = df[df.split == "test"].set_index("example_id")
    wrong = test.index[~test["correct_natural"] | ~test["correct_pgd"]]
    assert set(pairs["test_id"]) == set(wrong)
    assert set(pairs["train_id"]) <= set(df.loc[df.split == "train", "example_id"])
    assert pairs.groupby("test_id")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    assert pairs["similarity"].between(-1.0001, 1.0001).all()
    # natural errors list the strongest opponents first
    nat = pairs[pairs.reason == "natural_error"]
    assert (nat.groupby("test_id")["influence"].apply(lambda s: s.is_monotonic_increasing)).all()


def test_injected_noise_is_found(digits_run):
    out, man = digits_run
    df = pd.read_parquet(out / "examples.parquet")
    tr = df[df.split == "train"]
    auroc = roc_auc_score(tr["is_injected_noise"], tr["issue_score"])
    assert auroc >= 0.99, auroc
    assert man["metrics"]["noise_auroc"] == pytest.approx(auroc, abs=1e-9)
    flagged = tr[tr.is_label_issue]
    assert flagged["is_injected_noise"].mean() >= 0.85  # precision
    assert tr.loc[tr.is_injected_noise, "is_label_issue"].mean() >= 0.95  # recall
    # better than cleanlab's documented workflow on the same out-of-sample probabilities
    from sklearn.metrics import average_precision_score

    ours = average_precision_score(tr["is_injected_noise"], tr["issue_score"])
    baseline = average_precision_score(tr["is_injected_noise"], tr["cleanlab_score"])
    assert 1 - ours <= (2 / 3) * (1 - baseline), (ours, baseline)
    # the suggested label recovers the clean label for most flagged noisy rows
    noisy = flagged[flagged.is_injected_noise]
    assert (noisy["suggested_label"] == noisy["clean_label"]).mean() >= 0.9


def test_paper_claims_hold_at_small_scale(digits_run):
    """Natural fits the noise; PGD-AT refuses it and is far more accurate under the PGD attack."""
    out, man = digits_run
    m = man["metrics"]
    assert m["natural_train_accuracy"] >= 0.99
    assert m["natural_fits_noise"] >= 0.95
    assert m["pgd_test_adv_accuracy"] >= m["natural_test_adv_accuracy"] + 0.4
    df = pd.read_parquet(out / "examples.parquet")
    tr = df[df.split == "train"]
    missed = tr[~tr.correct_pgd]
    assert missed["is_injected_noise"].mean() >= 0.8


def test_load_model_reproduces_stored_predictions(digits_run):
    import audit
    from audit.data import load_dataset

    out, _ = digits_run
    model = audit.load_model(out, "pgd")
    ds = load_dataset("digits")
    df = pd.read_parquet(out / "examples.parquet")
    x = torch.from_numpy(ds.images[df["index"].to_numpy()]).float() / 255
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert (pred == df["pred_pgd"].to_numpy()).mean() == 1.0


def test_rerun_resumes_without_recomputing(digits_run):
    from audit.config import RunConfig
    from audit.pipeline import run_audit

    out, first = digits_run
    before = (out / "examples.parquet").read_bytes()
    man = run_audit(RunConfig(dataset="digits", models=("natural", "pgd"), noise=0.1, seed=0), out, progress=False)
    assert {s: v["status"] for s, v in man["stages"].items() if s != "write"} == {
        "calibrate": "cached", "train_natural": "cached", "train_pgd": "cached", "crossval": "cached",
        "influence": "cached", "issues": "cached"}
    assert man["metrics"]["noise_auroc"] == first["metrics"]["noise_auroc"]
    after = pd.read_parquet(out / "examples.parquet")
    assert after.equals(pd.read_parquet(__import__("io").BytesIO(before)))


def test_manifest_records_signal_choice(digits_run):
    _, man = digits_run
    sel = man["signal_selection"]
    assert sel["num_canaries"] >= 10
    assert set(sel["members"]) <= set(sel["canary_scores"])
    assert sel["chosen"] in sel["candidates"]
    assert all(st["status"] in ("done", "cached") for st in man["stages"].values())
    assert man["status"] == "complete" and man["device"] == "cpu"


def test_outputs_of_another_config_are_dropped_before_work(tmp_path):
    from audit.config import RunConfig
    from audit.data import load_dataset
    from audit.io import write_json
    from audit.pipeline import _drop_stale_outputs

    ds = load_dataset("digits")
    cfg = RunConfig()
    for name in ("examples.parquet", "pairs.parquet", "decisions.sqlite"):
        (tmp_path / name).write_bytes(b"x")
    write_json(tmp_path / "manifest.json", {"config_hash": cfg.hash(), "dataset": {"fingerprint": ds.fingerprint()}})
    _drop_stale_outputs(tmp_path, cfg, ds.fingerprint())
    assert (tmp_path / "examples.parquet").exists()  # same config: kept
    _drop_stale_outputs(tmp_path, RunConfig(seed=1), ds.fingerprint())
    assert not (tmp_path / "examples.parquet").exists() and not (tmp_path / "pairs.parquet").exists()
    assert (tmp_path / "decisions.sqlite").exists()  # decisions are never deleted


def test_each_role_gets_its_own_recipe():
    """Natural, robust and cross-validation models have their own epochs, batch size and lr."""
    from audit.config import RunConfig, resolve_defaults

    mn = resolve_defaults(RunConfig(dataset="npz:x.npz"), (1, 28, 28), 7500, on_gpu=False)
    assert (mn.epochs, mn.batch_size, mn.lr) == (15, 64, 0.1)
    assert (mn.robust_epochs, mn.robust_batch_size, mn.robust_lr, mn.steps, mn.eps) == (8, 128, 0.05, 2, 0.3)
    assert (mn.cv_epochs, mn.cv_batch_size, mn.cv_lr) == (10, 128, 0.05)
    # the radius never follows the name: the ladder's top, which the run's calibration may lower
    assert resolve_defaults(RunConfig(dataset="fashion-mnist:/d"), (1, 28, 28), 7500, on_gpu=False).eps == 0.3
    dg = resolve_defaults(RunConfig(), (1, 8, 8), 1000, on_gpu=False)
    assert dg.cv_lr == dg.lr and dg.cv_batch_size == dg.robust_batch_size == dg.batch_size
    mine = resolve_defaults(RunConfig(batch_size=32), (1, 8, 8), 1000, on_gpu=False)
    assert mine.robust_batch_size == mine.cv_batch_size == 32  # one flag still sets all three when alone
    # the augmented model: on where images are big enough to shift, mirrored only for colour images
    assert (mn.augment, mn.aug_epochs, mn.aug_width, dg.augment) == ("shift", 25, 0.25, "none")
    assert resolve_defaults(RunConfig(), (3, 32, 32), 1000, on_gpu=False).augment == "shift+flip"


def _stage_keys(cfg):
    """Every stage's cache key for a resolved config, as the orchestrator derives them."""
    from audit.orchestrator import Orchestrator
    from audit.pipeline import stage_configs

    orch = Orchestrator("/nonexistent", "fp")
    for name, (kind, config, upstream) in stage_configs(cfg).items():
        orch.key(name, kind, config, upstream)
    return dict(orch.keys)


def test_a_resume_checkpoint_is_named_by_its_stage_key_and_stale_ones_go(tmp_path):
    """An interrupted training resumes only into the same stage and config: the resume file carries the
    stage's key, and another key's (or the older unkeyed name) is deleted, never loaded."""
    from audit.orchestrator import Orchestrator

    orch = Orchestrator(tmp_path, "fp")
    orch.ckpt.mkdir(parents=True)
    stale = [orch.ckpt / "natural.resume.pt", orch.ckpt / "natural.0123456789abcdef.resume.pt"]
    other = orch.ckpt / "natural_try2.0123456789abcdef.resume.pt"
    for p in (*stale, other):
        p.write_bytes(b"x")
    h = orch.key("train_natural", "train", {"recipe": 1})
    path = orch.resume_path("train_natural")
    assert path.endswith(f"natural.{h}.resume.pt") and not any(p.exists() for p in stale)
    assert other.exists()  # another stage's file is not this one's to judge
    assert orch.key("train_natural", "train", {"recipe": 2}) != h and orch.resume_path("train_natural") != path


def test_a_field_a_stage_does_not_read_cannot_invalidate_it():
    """For every option and every stage: changing the option changes the stage's key exactly when it
    changes the stage's sub-config or an upstream key (the keys are derived, never listed by hand)."""
    from dataclasses import fields, replace

    from audit.config import OPTIONS, RunConfig, resolve_defaults
    from audit.pipeline import stage_configs
    from audit.recipes import as_key

    base = resolve_defaults(RunConfig(dataset="npz:x.npz", models=("natural", "pgd", "trades")), (1, 28, 28),
                            7500, on_gpu=False)
    keys0, cfgs0 = _stage_keys(base), stage_configs(base)
    changed_somewhere = set()
    for f in fields(RunConfig):
        v = getattr(base, f.name)
        new = {bool: lambda x: not x, int: lambda x: x + 1, float: lambda x: x * 0.5 + 0.01,
               str: lambda x: x}.get(type(v))
        if new is None or f.name in ("dataset", "device", "engine", "norm", "noise_kind", "arch", "augment",
                                     "ray_address", "models"):
            continue
        cfg = replace(base, **{f.name: new(v)})
        keys, cfgs = _stage_keys(cfg), stage_configs(cfg)
        for stage in keys0:
            own = as_key(cfgs[stage][1]) != as_key(cfgs0[stage][1])
            up = any(keys[u] != keys0[u] for u in cfgs0[stage][2])
            assert (keys[stage] != keys0[stage]) == (own or up), (f.name, stage)
            if keys[stage] != keys0[stage]:
                changed_somewhere.add(f.name)
        if not OPTIONS[f.name].metadata["results"]:
            assert keys == keys0, f.name  # compile, download... never invalidate anything
    # the options that change speed or placement, not results, key no stage (the loop skips some of them)
    for kw in ({"threads": 4}, {"device": "cuda"}, {"engine": "ray"}, {"ray_address": "auto"},
               {"max_image_pixels": 10}):
        assert _stage_keys(replace(base, **kw)) == keys0, kw
    # what each stage reads, spelled out for the options people change most
    def moved(**kw):
        k = _stage_keys(replace(base, **kw))
        return {s for s in keys0 if k[s] != keys0[s]}
    # pairs and neighbour evidence read the robust models' errors and embeddings
    assert moved(robust_epochs=9) == moved(steps=3) == {"train_pgd", "train_trades", "influence"}
    assert moved(trades_beta=3.0) == {"train_trades", "influence"}
    assert moved(batch_size=32) == {"train_natural", "train_aug", "influence"}
    assert moved(cv_batch_size=32) == {"crossval", "influence"}
    assert moved(aug_width=0.5) == {"train_aug"}
    assert moved(knn_k=20) == moved(pairs_per_test=3) == {"influence"}
    assert moved(tracin_checkpoints=2) == {"train_natural", "influence"}
    assert moved(eval_steps=30) == {"train_natural", "train_pgd", "train_trades", "influence"}
    assert moved(seed=1) == set(keys0)
    assert {"epochs", "cv_epochs", "aug_epochs", "lr", "width"} <= changed_somewhere


def test_augmented_model_gives_a_signal_that_finds_noise(tmp_path):
    """--augment adds a natural model trained on shifted images; its late-epoch AUM (aum_aug) is a
    signal with its own columns, canary score and dynamics, and finds injected noise."""
    import json

    from audit.config import RunConfig
    from audit.pipeline import run_audit

    cfg = RunConfig(dataset="digits", models=("natural",), noise=0.1, epochs=30, cv_epochs=20, augment="shift",
                    aug_epochs=30)
    man = run_audit(cfg, tmp_path, progress=False)
    assert man["stages"]["train_aug"]["status"] == "done"
    assert "aum_aug" in man["signal_selection"]["canary_scores"] and 0 < man["metrics"]["aug_test_accuracy"] <= 1
    df = pd.read_parquet(tmp_path / "examples.parquet")
    tr = df[df.split == "train"]
    fit = tr[~tr["held_out_as_canary"]]  # the rows the models trained on (canary sources: not)
    assert fit["aum_aug"].notna().all() and df[df.split == "test"]["aum_aug"].isna().all()
    assert {"aum_aug_score", "is_aum_aug_issue"} <= set(df.columns)
    auroc = roc_auc_score(fit["is_injected_noise"], fit["aum_aug_score"])
    assert auroc > 0.9, auroc
    with np.load(tmp_path / "dynamics.npz") as z:
        assert z["margin_aug"].shape == (30, len(fit))
        # the window behind aum_aug is recorded, and the column is the AUM over it
        win = man["signal_selection"]["aum_aug_window"]
        start, end = win["epochs"]
        assert win["of"] == 30 and 0 <= start < end <= 30 and win["reason"]
        aum = z["margin_aug"][start:end].astype(np.float32).mean(0)
        order = pd.Series(np.arange(len(fit)), index=z["example_ids"])
    np.testing.assert_allclose(fit["aum_aug"].to_numpy(), aum[order[fit["example_id"]].to_numpy()], rtol=1e-5, atol=1e-5)
    with np.load(tmp_path / ".cache" / "train_aug.npz") as z:
        assert int(z["collapsed_at"]) == -1  # it ran every epoch (health.collapsed never fired)
    # --augment none: no such model, no such column; the other stages are reused
    man2 = run_audit(RunConfig(**{**cfg.to_dict(), "models": cfg.models, "augment": "none"}), tmp_path, progress=False)
    assert "train_aug" not in man2["stages"] and man2["stages"]["crossval"]["status"] == "cached"
    assert "aum_aug" not in pd.read_parquet(tmp_path / "examples.parquet").columns
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["augment"] == "none"


def test_paper_preset_resolves_the_papers_recipe_and_explicit_options_win():
    from audit.config import RunConfig, resolve_defaults

    mn = resolve_defaults(RunConfig(dataset="npz:x.npz", preset="paper"), (1, 28, 28), 7500, on_gpu=False)
    assert (mn.eps, mn.steps, mn.step_size, mn.robust_epochs, mn.width, mn.eps_warmup) == (0.3, 30, 0.01, 30, 1.0, 0.0)
    mine = resolve_defaults(RunConfig(preset="paper", steps=10, robust_epochs=5), (1, 28, 28), 7500, on_gpu=False)
    assert (mine.steps, mine.robust_epochs, mine.step_size) == (10, 5, 2.5 * 0.3 / 10)  # step size follows the steps
    cifar = resolve_defaults(RunConfig(preset="paper"), (3, 32, 32), 50000, on_gpu=False)
    assert (cifar.eps, cifar.steps, cifar.step_size) == (8 / 255, 10, 2 / 255)


def test_compile_option_reaches_the_trainings_and_not_the_cache_key(tmp_path, monkeypatch):
    """``--compile`` torch.compiles the natural and robust trainings' forward (not the folds'); it is
    a speed option, so it keys no stage. torch.compile is replaced by a recorder that returns the
    model itself (compiling is slow on CPU and does not change results)."""
    from audit.config import RunConfig
    from audit.pipeline import run_audit

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: compiled.append(type(model).__name__) or model)
    tiny = dict(dataset="digits", noise=0.1, epochs=2, robust_epochs=1, cv_epochs=2, folds=2, steps=2, eval_steps=3,
                eval_restarts=1, tracin_checkpoints=1, knn_k=5, threads=1)
    plain = run_audit(RunConfig(**tiny), tmp_path / "plain", progress=False)
    assert compiled == []
    fast = run_audit(RunConfig(**tiny, compile=True), tmp_path / "compiled", progress=False)
    # every training of natural and pgd (a 2-epoch run fails its health checks and retrains), not the folds
    trainings = sum(len(fast["health"]["attempts"][m]) for m in ("natural", "pgd"))
    assert trainings >= 2 and len(compiled) == trainings
    keys = {k: v.get("key") for k, v in fast["stages"].items()}
    assert keys == {k: v.get("key") for k, v in plain["stages"].items()}
    assert keys["train_natural"] and keys["train_pgd"] and keys["crossval"]


def test_a_full_disk_while_writing_the_tables_leaves_a_failed_manifest(tmp_path, monkeypatch):
    """Issue #22 item 6: a disk that fills while the tables are written ends the run as ``failed`` in the
    manifest (it used to stay ``running``), with the OS's error, and nothing half-written."""
    import errno
    import json

    from audit import pipeline
    from audit.config import RunConfig
    from audit.pipeline import run_audit

    real = pipeline.write_parquet

    def full(path, df, meta):
        if path.name == "pairs.parquet":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, df, meta)

    monkeypatch.setattr(pipeline, "write_parquet", full)
    with pytest.raises(OSError, match="No space left"):
        run_audit(RunConfig(dataset="digits", noise=0.1, epochs=2, robust_epochs=1, cv_epochs=2, folds=2, steps=1,
                            eval_steps=3, eps=0.1), tmp_path / "run", progress=False)
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["status"] == "failed" and man["stages"]["write"]["status"] == "failed"
    assert not (tmp_path / "run" / "pairs.parquet").exists() and not list((tmp_path / "run").glob("*.tmp"))
