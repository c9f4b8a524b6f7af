"""Shared fixtures: one seeded audit of the bundled digits with 10% injected noise, run once per session;
a private copy of it to edit, and that copy as the review app's run (helpers for the app's tests: apphelpers.py)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one torch thread each (and in every process they start), or their OpenMP
    # threads fight over the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A complete run directory: digits, natural + PGD, 10% symmetric noise, seed 0."""
    from audit.config import RunConfig
    from audit.pipeline import run_audit

    out = tmp_path_factory.mktemp("runs") / "digits-noise10"
    manifest = run_audit(RunConfig(dataset="digits", models=("natural", "pgd"), noise=0.1, seed=0), out,
                         progress=False)
    return out, manifest


ARTIFACTS = ("manifest.json", "examples.parquet", "pairs.parquet", "dynamics.npz")


@pytest.fixture
def run_copy(digits_run, tmp_path):
    """A copy of the session's digits run (its tables and manifest, no checkpoints) to edit or review."""
    import shutil

    src, _ = digits_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ARTIFACTS:
        shutil.copy2(src / name, run / name)
    return run


@pytest.fixture
def review_run(run_copy, digits_run, monkeypatch):
    """``run_copy`` as the review app's run directory, reviewed by "tester": what a test decides or changes
    stays in that copy. Returns (run, the session run's manifest)."""
    monkeypatch.setenv("AUDIT_RUN_DIR", str(run_copy))
    monkeypatch.setenv("AUDIT_REVIEWER", "tester")
    return run_copy, digits_run[1]


# `pytest -n 2` (pytest-xdist, the README's command) with `--dist loadgroup`: each test file is one group,
# so a file's module fixtures are built once, on one worker; the files that start Ray share one group, so
# two Ray clusters never start side by side.
SERIAL_GROUPS = {"test_ray_engine.py": "ray", "test_ray_cluster.py": "ray", "test_batch.py": "ray"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group(SERIAL_GROUPS.get(name, name)))
