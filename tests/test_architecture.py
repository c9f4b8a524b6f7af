"""The architecture guide's promise: a new signal takes a few lines, and the run picks it up."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_a_toy_signal_added_as_docs_architecture_says(tmp_path):
    from audit.config import RunConfig
    from audit.pipeline import run_audit
    from audit.signals.registry import SIGNALS, register_signal

    @register_signal("last_margin")
    def last_margin(x):
        """−margin of the natural model at its last epoch."""
        return -x.natural["margin"][-1].astype(np.float32)

    try:
        cfg = RunConfig(dataset="digits", models=("natural",), noise=0.1, epochs=8, cv_epochs=6, folds=2,
                        threads=1)
        man = run_audit(cfg, tmp_path, progress=False)
    finally:
        SIGNALS.pop("last_margin")
    df = pd.read_parquet(tmp_path / "examples.parquet")
    tr = df[df.split == "train"]
    assert {"last_margin_score", "is_last_margin_issue"} <= set(df.columns)
    # scored on every training row the models trained on; canary sources and test rows have none
    held = tr["held_out_as_canary"].to_numpy(bool)
    assert 0 < held.sum() == man["dataset"]["num_canaries"]
    assert tr["last_margin_score"][~held].notna().all() and tr["last_margin_score"][held].isna().all()
    assert df[df.split == "test"]["last_margin_score"].isna().all()
    assert "last_margin" in man["signal_selection"]["canary_scores"]
    # the flags of a signal are its top n, n = the run's number of label issues
    assert tr["is_last_margin_issue"].sum() == man["signal_selection"]["num_label_issues"]
