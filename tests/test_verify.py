"""``audit verify``: retraining on the given, cleaned and true labels of the digits run with tiny epochs;
the cleaned labels follow the review decisions, verify.json's structure, resumption, bad run directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from audit.cli import main as cli
from audit.decisions import DecisionStore
from audit.verify import gain_recovered, load_run_data, mean_interval, variant_labels


@pytest.fixture()
def run_copy(digits_run, tmp_path):
    """A copy of the digits run (verify writes into it)."""
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run, ignore=shutil.ignore_patterns(".cache", "decisions.sqlite*"))
    return run


def _decide(run):
    """Relabel two flagged rows to their true class, remove one, keep one."""
    ex = pd.read_parquet(run / "examples.parquet")
    flagged = ex[(ex["split"] == "train") & ex["is_label_issue"]].sort_values("issue_score", ascending=False)
    ids = flagged["example_id"].tolist()
    store = DecisionStore(run)
    for i in ids[:2]:
        store.record(i, "relabel", new_label=int(flagged.set_index("example_id").loc[i, "clean_label"]))
    store.record(ids[2], "remove")
    store.record(ids[3], "keep")
    return ids[:4], flagged.set_index("example_id")


def test_cleaned_labels_follow_the_decisions(run_copy):
    ids, flagged = _decide(run_copy)
    data = load_run_data(run_copy)
    assert len(data.train) == 1347 and len(data.test_labels) == 450
    given = data.train["given_label"].to_numpy()
    pos = {e: i for i, e in enumerate(data.train["example_id"])}
    v = variant_labels(data, "decisions")
    changed = np.flatnonzero(v["cleaned"]["labels"] != given)
    assert sorted(changed) == sorted(pos[i] for i in ids[:3])
    assert [v["cleaned"]["labels"][pos[i]] for i in ids[:3]] == [*flagged.loc[ids[:2], "clean_label"], -1]
    assert (v["cleaned"]["relabelled"], v["cleaned"]["removed"], v["cleaned"]["decisions"]) == (2, 1, 4)
    assert (v["true"]["labels"] != given).sum() == data.train["is_injected_noise"].sum() == 135
    s = variant_labels(data, "suggested")["cleaned"]
    flagged_rows = data.train["is_label_issue"].to_numpy()
    # suggested labels on the flagged rows, except where the reviewer decided (the kept row keeps its label)
    assert s["labels"][pos[ids[3]]] == given[pos[ids[3]]] != data.train["suggested_label"].iloc[pos[ids[3]]]
    assert s["removed"] == 1 and s["relabelled"] == int(
        (data.train["suggested_label"].to_numpy() != given)[flagged_rows].sum()) - 2


def test_verify_writes_json_and_plot_and_resumes(run_copy, capsys):
    _decide(run_copy)
    args = ["verify", str(run_copy), "--seeds", "2", "--epochs", "1", "--apply", "decisions", "--quiet"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "variant" in out.splitlines()[0] and "gain recovered" in out and "(12 trainings" in out
    rep = json.loads((run_copy / "verify.json").read_text())
    assert set(rep) >= {"variants", "gain_recovered", "eps", "small_eps", "seeds", "models", "epochs", "apply"}
    assert rep["models"] == ["natural", "pgd"] and rep["seeds"] == [0, 1] and rep["epochs"] == {"natural": 1, "pgd": 1}
    assert (rep["eps"], rep["small_eps"]) == (0.1, 0.025)
    assert list(rep["variants"]) == ["given", "cleaned", "true"]
    assert [rep["variants"][v]["n_train"] for v in ("given", "cleaned", "true")] == [1347, 1346, 1347]
    for v in rep["variants"].values():
        for m in ("natural", "pgd"):
            for k in ("clean_accuracy", "adv_accuracy", "adv_accuracy_small"):
                s = v["results"][m][k]
                assert len(s["values"]) == 2 and s["low"] <= s["mean"] <= s["high"]
    assert set(rep["gain_recovered"]) == {"adv_accuracy", "adv_accuracy_small"}
    assert (run_copy / "verify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one cached result per (labels, seed, model): the cleaned labels trained models of their own
    assert len(list((run_copy / ".cache" / "verify").glob("*.json"))) == 12
    # a second call trains nothing and gives the same numbers
    assert cli(args) == 0
    again = json.loads((run_copy / "verify.json").read_text())
    assert again["trained"] == 0 and again["variants"] == rep["variants"]
    assert "(0 trainings" in capsys.readouterr().out


def test_bad_run_directories_exit_2(tmp_path, run_copy, capsys):
    assert cli(["verify", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli(["verify", str(tmp_path / "empty")]) == 2
    man = json.loads((run_copy / "manifest.json").read_text())
    (run_copy / "manifest.json").write_text(json.dumps({**man, "status": "running"}))
    assert cli(["verify", str(run_copy)]) == 2
    (run_copy / "manifest.json").write_text("{not json")
    assert cli(["verify", str(run_copy)]) == 2
    other = {**man, "dataset": {**man["dataset"], "source_fingerprint": "0" * 16}}  # images must match the run's
    (run_copy / "manifest.json").write_text(json.dumps(other))
    assert cli(["verify", str(run_copy)]) == 2
    (run_copy / "manifest.json").write_text(json.dumps(man))
    assert cli(["verify", str(run_copy), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("audit: error: ") for line in err)
    assert "missing: no manifest.json" in err[0] and "empty: no manifest.json" in err[1]
    assert "'running', not 'complete'" in err[2] and "manifest.json: not valid JSON" in err[3]
    assert "recorded 0000000000000000" in err[4] and "--seeds 0" in err[5]
    assert not (run_copy / "verify.json").exists()


def test_interval_and_gain_arithmetic():
    s = mean_interval([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["high"] - s["mean"] == pytest.approx(12.7062047 * 0.1)
    assert mean_interval([0.4])["low"] is None

    def res(adv, small):
        return {"results": {"natural": {"adv_accuracy": {"mean": adv}, "adv_accuracy_small": {"mean": small}}}}

    g = gain_recovered({"given": res(0.1, 0.5), "cleaned": res(0.4, 0.6), "true": res(0.5, 0.5)})
    assert g["adv_accuracy"] == pytest.approx(0.75) and g["adv_accuracy_small"] is None
    assert gain_recovered({"given": res(0.1, 0.5), "cleaned": res(0.4, 0.6)}) == {"adv_accuracy": None,
                                                                                 "adv_accuracy_small": None}


def test_verify_and_an_audit_never_write_one_run_directory_at_once(run_copy, capsys):
    from filelock import FileLock

    from audit.orchestrator import RunDirLock

    (run_copy / ".audit.lock.owner").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "since": "now"}))
    with FileLock(str(run_copy / ".audit.lock")):  # an audit (re)writing the run
        assert cli(["verify", str(run_copy), "--seeds", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "another audit is writing" in err and "4242" in err and str(run_copy) in err
    assert not (run_copy / "verify.json").exists()
    with RunDirLock(run_copy, "verify", "wait"):  # a verify in progress: `audit run --out` on it is refused
        assert cli(["run", "--dataset", "digits", "--epochs", "1", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "audit verify, process" in err and "choose another --out" in err
    assert not (run_copy / ".audit.lock.owner").exists()  # released
