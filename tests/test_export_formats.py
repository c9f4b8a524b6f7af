"""Exports beyond the label list (issue #23): ``--drop`` other issue types, and Label Studio tasks checked
with Label Studio's own validator (label-studio-sdk's LabelInterface)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.cli import main as cli




def _plant(run):
    """Mark a copy group of three training rows, a leak (test row -> a training row) and two outliers."""
    ex = pd.read_parquet(run / "examples.parquet")
    tr = ex.index[ex.split == "train"]
    te = ex.index[ex.split == "test"]
    group, leak_partner, outliers = tr[:3], tr[10], tr[20:22]
    ex[["is_near_duplicate_issue", "is_leak_issue", "is_outlier_issue"]] = False  # only the planted ones
    ex["duplicate_group"], ex["leak_partner"] = -1, ""
    ex.loc[group, "is_near_duplicate_issue"] = True
    ex.loc[group, "duplicate_group"] = 7
    ex.loc[group, "issue_score"] = [0.3, 0.1, 0.9]  # the least suspicious (tr[1]) is the one kept
    ex.loc[te[0], "is_leak_issue"] = True
    ex.loc[te[0], "leak_partner"] = ex.at[leak_partner, "example_id"]
    ex.loc[outliers, "is_outlier_issue"] = True
    ex.to_parquet(run / "examples.parquet")
    ids = ex["example_id"]
    return ids[group].tolist(), ids[leak_partner], ids[outliers].tolist()


def test_drop_removes_duplicates_but_one_leaked_training_copies_and_outliers(run_copy, tmp_path, capsys):
    group, partner, outliers = _plant(run_copy)
    assert cli(["export", str(run_copy), "--out", str(tmp_path / "all.csv")]) == 0
    n = len(pd.read_csv(tmp_path / "all.csv"))
    capsys.readouterr()
    assert cli(["export", str(run_copy), "--out", str(tmp_path / "l.csv"), "--drop", "duplicates,leaks,outliers"]) == 0
    out = capsys.readouterr().out
    assert "--drop removed 2 near duplicate, 1 leak, 2 outlier" in out
    kept = set(pd.read_csv(tmp_path / "l.csv")["example_id"])
    assert len(kept) == n - 5
    assert group[1] in kept and group[0] not in kept and group[2] not in kept
    assert partner not in kept and not set(outliers) & kept
    assert cli(["export", str(run_copy), "--out", str(tmp_path / "x.csv"), "--drop", "typos"]) == 2
    assert "--drop 'typos': not an issue type" in capsys.readouterr().err


def test_label_studio_tasks_validate_with_label_studios_own_library(run_copy, tmp_path, capsys):
    LabelInterface = pytest.importorskip("label_studio_sdk.label_interface",
                                         reason="label-studio-sdk (.ci/run installs it)").LabelInterface
    man = json.loads((run_copy / "manifest.json").read_text())
    man["dataset"]["class_names"] = ["zero", "one", "two", "three", "four", 'five "5"', "six", "seven", "<eight>",
                                     "nine & co"]
    (run_copy / "manifest.json").write_text(json.dumps(man))
    out = tmp_path / "tasks.json"
    assert cli(["export", str(run_copy), "--out", str(out), "--format", "label-studio"]) == 0
    assert "Label Studio tasks" in capsys.readouterr().out
    li = LabelInterface((tmp_path / "tasks.label_config.xml").read_text())
    li.validate()  # Label Studio accepts the labeling config
    assert li.get_control("label").labels == man["dataset"]["class_names"]
    tasks = json.loads(out.read_text())
    ex = pd.read_parquet(run_copy / "examples.parquet").set_index("example_id")
    flagged = ex.index[ex.is_label_issue]
    assert [t["data"]["example_id"] for t in tasks] == \
        ex.loc[flagged].sort_values("issue_score", ascending=False, kind="stable").index.tolist()
    names = np.array(man["dataset"]["class_names"])
    for t in tasks:
        assert li.validate_prediction(t["predictions"][0], return_errors=True) == []
        row = ex.loc[t["data"]["example_id"]]
        assert t["predictions"][0]["result"][0]["value"]["choices"] == [names[row.suggested_label]]
        assert t["data"]["given_class"] == names[row.given_label] and t["data"]["image"].startswith("data:image/png")
    bad = dict(tasks[0]["predictions"][0], result=[dict(tasks[0]["predictions"][0]["result"][0],
                                                        value={"choices": ["banana"]})])
    assert li.validate_prediction(bad, return_errors=True)  # the validator does refuse a wrong class
