"""`audit export`: the cleaned label list round-trips through CSV and Parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.cli import main as cli


def test_export_csv_and_parquet_round_trip(digits_run, tmp_path):
    out, _ = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.csv")]) == 0
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.parquet")]) == 0
    a = pd.read_csv(tmp_path / "labels.csv")
    b = pd.read_parquet(tmp_path / "labels.parquet")
    assert list(a.columns[:7]) == ["example_id", "index", "given_label", "suggested_label", "issue_score",
                                   "is_label_issue", "final_label"]
    pd.testing.assert_frame_equal(a[b.columns[:7]], b[b.columns[:7]], check_dtype=False)
    ex = pd.read_parquet(out / "examples.parquet")
    tr = ex[ex.split == "train"].reset_index(drop=True)
    assert len(a) == len(tr) and (a["example_id"] == tr["example_id"]).all()
    expect = np.where(tr.is_label_issue, tr.suggested_label, tr.given_label)
    assert (a["final_label"].to_numpy() == expect).all()
    # relabelling by the flags fixes more injected noise than it breaks
    fixed = ((a.final_label == a.clean_label) & a.is_injected_noise).sum()
    broken = ((a.final_label != a.clean_label) & ~a.is_injected_noise).sum()
    assert fixed >= 0.8 * a.is_injected_noise.sum() and broken <= 0.15 * a.is_injected_noise.sum(), (fixed, broken)


def test_export_drop_flagged(digits_run, tmp_path):
    out, _ = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "d.csv"), "--drop-flagged"]) == 0
    d = pd.read_csv(tmp_path / "d.csv")
    ex = pd.read_parquet(out / "examples.parquet")
    n_train = (ex.split == "train").sum()
    assert len(d) == n_train - ex.loc[ex.split == "train", "is_label_issue"].sum()
    assert not d["is_label_issue"].any() and (d.final_label == d.given_label).all()


def test_export_bad_suffix_is_usage_error(digits_run, tmp_path, capsys):
    out, _ = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "x.txt")]) == 2
    assert "x.txt" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()
