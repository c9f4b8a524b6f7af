"""A user's own model as input: ``--pred-probs`` and ``--features`` (audit/data/given.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from audit.config import RunConfig
from audit.pipeline import prepare_dataset, run_audit

from givenhelpers import outside_model_probs

# small enough to be quick; every stage still runs
TINY = dict(dataset="digits", noise=0.1, seed=0, models=("natural", "pgd"), epochs=4, robust_epochs=1, cv_epochs=4,
            folds=2, steps=2, eval_steps=5, eval_restarts=1, eps=0.1)


def _dataset():
    return prepare_dataset(RunConfig(**TINY))


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    d = tmp_path_factory.mktemp("given")
    ds = _dataset()
    probs = outside_model_probs(ds)
    np.save(d / "probs.npy", probs)
    feats = ds.images.reshape(len(ds.labels), -1).astype(np.float32)[:, ::3] + 1.0
    np.save(d / "feats.npy", feats)
    out = d / "run"
    man = run_audit(RunConfig(**TINY, pred_probs=str(d / "probs.npy"), features=str(d / "feats.npy")), out,
                    progress=False)
    return d, ds, probs, feats, out, man


def test_pred_probs_give_cleanlabs_own_scores(outside):
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    d, ds, probs, _, out, man = outside
    df = pd.read_parquet(out / "examples.parquet")
    pos = pd.Index(ds.example_ids.astype(str)).get_indexer(df["example_id"])
    lq = get_label_quality_scores(ds.labels[pos], probs[pos])
    np.testing.assert_allclose(df["given_label_quality"].to_numpy(), lq, rtol=0, atol=1e-12)  # both splits, canaries' sources
    tr = (df["split"] == "train").to_numpy()
    np.testing.assert_allclose(df.loc[tr, "given_cleanlab_score"].to_numpy(), 1 - lq[tr], rtol=0, atol=1e-12)
    audited = tr & ~df["held_out_as_canary"].to_numpy()
    issues = find_label_issues(ds.labels[pos][audited], probs[pos][audited])
    assert (df.loc[audited, "is_given_cleanlab_issue"].to_numpy() == issues).all()
    # the canaries judged it like the other signals; the file is named in the manifest
    sel = man["signal_selection"]
    assert "given_cleanlab" in sel["canary_scores"] and "given_cleanlab" not in sel["not_eligible"]
    assert man["inputs"]["pred-probs"]["rows_covered"] == len(ds.labels)
    checks = {c["check"]: c for c in man["health"]["checks"] if c["model"] == "given"}
    assert checks["out_of_sample"]["ok"] is True and checks["beats_chance"]["ok"] is True
    # an outside model's probabilities find the injected noise
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(df.loc[audited, "is_injected_noise"], df.loc[audited, "given_cleanlab_score"]) > 0.9


def test_features_are_the_space_of_pairs_and_neighbours(outside):
    d, ds, _, feats, out, man = outside
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs)
    row = {e: i for i, e in enumerate(ds.example_ids.astype(str))}
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", f[pairs["test_id"].map(row)], f[pairs["train_id"].map(row)])
    np.testing.assert_allclose(pairs["similarity"].to_numpy(), cos, atol=1e-4)
    assert man["inputs"]["features"]["shape"] == list(feats.shape)


def test_parquet_keyed_by_example_id_in_any_order_is_the_same_input(outside, tmp_path):
    from audit.data.given import load_given

    d, ds, probs, _, _, _ = outside
    tr = np.flatnonzero(ds.split == "train")
    order = np.random.default_rng(0).permutation(tr)  # training rows only, shuffled
    pd.DataFrame({"example_id": ds.example_ids[order].astype(str),
                  **{f"p{k}": probs[order, k] for k in range(ds.num_classes)}}).to_parquet(tmp_path / "p.parquet")
    g = load_given(tmp_path / "p.parquet", ds, "--pred-probs")
    np.testing.assert_array_equal(g.values[tr], probs[tr])
    assert g.covered.sum() == len(tr) and np.isnan(g.values[~g.covered]).all()
    # one list column works too; and rows in training order without ids
    pd.DataFrame({"example_id": ds.example_ids.astype(str), "probs": list(probs)}).to_parquet(tmp_path / "l.parquet")
    np.testing.assert_array_equal(load_given(tmp_path / "l.parquet", ds, "--pred-probs").values, probs)
    np.save(tmp_path / "t.npy", probs[tr])
    np.testing.assert_array_equal(load_given(tmp_path / "t.npy", ds, "--pred-probs").values[tr], probs[tr])


def test_in_sample_probabilities_are_named_and_left_out(tmp_path):
    """Probabilities of a model that memorized the given labels (here: those labels, nearly one-hot) fail
    ``out_of_sample``; the run says so and issue_score does not use them."""
    ds = _dataset()
    k = ds.num_classes
    probs = np.full((len(ds.labels), k), 0.02 / (k - 1))
    probs[np.arange(len(ds.labels)), ds.labels] = 0.98
    np.save(tmp_path / "in.npy", probs)
    man = run_audit(RunConfig(**TINY, pred_probs=str(tmp_path / "in.npy")), tmp_path / "run", progress=False)
    checks = {c["check"]: c for c in man["health"]["checks"] if c["model"] == "given"}
    assert checks["out_of_sample"]["ok"] is False and checks["out_of_sample"]["value"] == 1.0
    assert man["health"]["failed"]["given"] == ["out_of_sample"]
    assert any(w.startswith("--pred-probs failed out_of_sample") and "in-sample" in w for w in man["warnings"])
    sel = man["signal_selection"]
    assert "given_cleanlab" in sel["excluded_unhealthy"] and "given_cleanlab" not in sel["members"]


def _bad(tmp_path, name: str, make) -> str:
    path = tmp_path / name
    make(path)
    return str(path)


def test_bad_files_exit_2_naming_the_problem(tmp_path, capsys):
    from audit.cli import main as cli

    ds = _dataset()
    n, k = len(ds.labels), ds.num_classes
    good = np.full((n, k), 1.0 / k)
    nan = good.copy()
    nan[7, 0] = np.nan
    off = good.copy()
    off[11] *= 2
    cases = [
        ("cols.npy", lambda p: np.save(p, good[:, :5]), "5 columns, but the dataset has 10 classes"),
        ("nan.npy", lambda p: np.save(p, nan), "row 7 is not finite"),
        ("sum.npy", lambda p: np.save(p, off), f"example {str(ds.example_ids[11])!r}: probabilities sum to 2"),
        ("logits.npy", lambda p: np.save(p, good * 30 - 5), "outside [0, 1]"),
        ("rows.npy", lambda p: np.save(p, good[:100]), f"100 rows, need {n}"),
        ("cube.npy", lambda p: np.save(p, good[:, :, None]), "need a 2-D numeric array"),
        ("obj.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a readable .npy"),
        ("x.txt", lambda p: p.write_text("1,2"), "unknown format .txt"),
        ("ids.parquet", lambda p: pd.DataFrame({"example_id": ["nope"], **{f"p{i}": [0.1] for i in range(k)}})
         .to_parquet(p), "row 0: example_id 'nope' is not in the dataset"),
        ("part.parquet", lambda p: pd.DataFrame({"example_id": ds.example_ids[1:].astype(str),
                                                 **{f"p{i}": good[1:, i] for i in range(k)}}).to_parquet(p),
         "no row for training example"),
    ]
    for name, make, words in cases:
        path = _bad(tmp_path, name, make)
        code = cli(["run", "--dataset", "digits", "--pred-probs", path, "--out", str(tmp_path / "out"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"audit: error: --pred-probs {path}") and words in line, (name, line)
    assert not (tmp_path / "out").exists()  # refused before any work
    np.save(tmp_path / "f.npy", np.ones((n - 1, 4)))
    r = subprocess.run([sys.executable, "-m", "audit", "run", "--dataset", "digits", "--features", str(tmp_path / "f.npy"),
                        "--out", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and f"{n - 1} rows, need {n} (every example, dataset order)" in r.stderr


def test_models_none_audits_the_given_probabilities_alone(outside, tmp_path):
    """No training: issue_score is cleanlab's label quality of the file, n flagged is cleanlab's estimate,
    pairs are nearest neighbours in --features, and the run directory keeps the contract."""
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    from audit.cli import main as cli
    from audit.rundir import RunDir

    d, ds, probs, feats, _, _ = outside
    out = tmp_path / "given"
    assert cli(["run", "--dataset", "digits", "--noise", "0.1", "--models", "none", "--pred-probs", str(d / "probs.npy"),
                "--features", str(d / "feats.npy"), "--out", str(out), "--quiet"]) == 0
    run = RunDir(out)
    df, pairs, man = run.examples(), run.pairs(), run.manifest
    assert man["status"] == "complete" and man["config"]["models"] == [] and set(man["stages"]) >= {"given", "issues"}
    tr = np.flatnonzero(ds.split == "train")
    assert len(df) == len(ds.labels) and int(df["is_label_issue"][df["split"] == "train"].sum()) == \
        int(num_label_issues(ds.labels[tr], probs[tr]))
    pos = pd.Index(ds.example_ids.astype(str)).get_indexer(df["example_id"])
    np.testing.assert_allclose(df["label_quality"], get_label_quality_scores(ds.labels[pos], probs[pos]), rtol=0, atol=1e-12)
    assert df["self_influence"].isna().all() and df["memorization"].isna().all()
    assert man["metrics"]["noise_auroc"] > 0.9
    # pairs: test rows the given model gets wrong, their nearest training rows in the given features
    wrong = set(ds.example_ids[ds.split == "test"][(probs[ds.split == "test"].argmax(1) != ds.labels[ds.split == "test"])])
    assert len(pairs) and set(pairs["test_id"]) == wrong and pairs["influence"].isna().all()
    row = {e: i for i, e in enumerate(ds.example_ids.astype(str))}
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", f[pairs["test_id"].map(row)], f[pairs["train_id"].map(row)])
    np.testing.assert_allclose(pairs["similarity"], cos, atol=1e-4)
    assert any("--models none" in w for w in man["warnings"])
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.csv")]) == 0


def test_models_none_needs_pred_probs(capsys):
    from audit.cli import main as cli

    assert cli(["run", "--dataset", "digits", "--models", "none", "--out", "/tmp/never-written", "--quiet"]) == 2
    assert "--models none trains nothing" in capsys.readouterr().err

