"""The Ray engine on a real local Ray: same results as the local engine, a killed worker is retried,
a stage that keeps failing ends the run naming it while finished stages stay cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

OPTS = ["--dataset", "digits", "--noise", "0.1", "--models", "natural,pgd", "--epochs", "12", "--robust-epochs", "4",
        "--cv-epochs", "8", "--folds", "2", "--threads", "1", "--quiet"]


def _audit(args, env=None, timeout=600):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "audit.cli", *args], capture_output=True, text=True, env=e,
                          timeout=timeout)


@pytest.mark.slow
def test_ray_engine_matches_local_and_survives_a_killed_worker(tmp_path):
    local = _audit(["run", *OPTS, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    marker = tmp_path / "killed-once"
    r = _audit(["run", *OPTS, "--engine", "ray", "--out", str(tmp_path / "ray")],
               env={"AUDIT_FAULT_INJECT": f"train_pgd:{marker}"})
    assert r.returncode == 0, r.stderr
    assert marker.exists()  # the pgd worker was killed once, retried, and the run completed
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"
    cmp = subprocess.run([sys.executable, str(script), str(tmp_path / "local"), str(tmp_path / "ray")],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout  # bit-identical tables on CPU
    assert "identical" in cmp.stdout


@pytest.mark.slow
def test_a_stage_that_keeps_failing_names_itself_and_keeps_finished_stages(tmp_path):
    out = tmp_path / "run"
    r = _audit(["run", *OPTS, "--engine", "ray", "--out", str(out)], env={"AUDIT_FAULT_INJECT": "crossval:*"})
    assert r.returncode == 1
    assert "crossval" in r.stderr.strip().splitlines()[-1]
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "failed"
    done = {k for k, v in man["stages"].items() if v["status"] == "done"}
    assert {"train_natural", "train_pgd"} <= done and man["stages"]["crossval"]["status"] == "failed"
    # rerun without the fault: the finished trainings are reused
    r = _audit(["run", *OPTS, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["stages"]["train_natural"]["status"] == man["stages"]["train_pgd"]["status"] == "cached"
    assert man["stages"]["crossval"]["status"] == "done"


@pytest.mark.slow
def test_batch_on_ray_runs_audits_side_by_side(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[defaults]\ndataset = "digits"\nmodels = ["natural", "pgd"]\nepochs = 8\nrobust_epochs = 2\n'
                    'cv_epochs = 6\nfolds = 2\nthreads = 1\n\n[[run]]\nname = "a"\nnoise = 0.1\n\n'
                    '[[run]]\nname = "b"\nnoise = 0.2\nseed = 1\n')
    r = _audit(["batch", str(grid), "--out", str(tmp_path / "runs"), "--engine", "ray", "--max-concurrent", "2",
                "--quiet"])
    assert r.returncode == 0, r.stderr
    import pandas as pd

    summary = pd.read_csv(tmp_path / "runs" / "summary.csv")
    assert list(summary["status"]) == ["complete", "complete"]
    for name in ("a", "b"):
        man = json.loads((tmp_path / "runs" / name / "manifest.json").read_text())
        assert man["config"]["engine"] == "ray" and man["status"] == "complete"


def test_cleanlab_label_issues_never_fork(monkeypatch):
    """With more than one core cleanlab's find_label_issues forks a pool, and a process holding a Ray
    client's gRPC threads can deadlock in the forked child (a ray:// run hung so in its table stage).
    The audit's wrapper runs it in this process, with the same result."""
    import multiprocessing

    import numpy as np
    from cleanlab.filter import find_label_issues as cleanlab_find

    from audit.signals.util import find_label_issues

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    p = rng.dirichlet(np.ones(5), 400)
    p[np.arange(400), y] += 1.0
    p /= p.sum(1, keepdims=True)
    y[:40] = (y[:40] + 1) % 5  # 40 given labels the probabilities contradict
    expected = cleanlab_find(y, p)

    def no_pool(*a, **k):
        raise AssertionError("find_label_issues forked a multiprocessing pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    monkeypatch.setattr(multiprocessing.pool, "Pool", no_pool, raising=False)
    got = find_label_issues(y, p)
    assert got.any() and (got == expected).all()
