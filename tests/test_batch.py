"""audit batch: checks every run before training, skips complete runs, goes on past a failed one."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from audit.batch import load_batch
from audit.cli import main as cli
from audit.io import read_json, read_parquet_metadata

# A seconds-long audit: few epochs, 2 folds, a weak evaluation attack.
TINY = ('epochs = 3\nrobust_epochs = 1\ncv_epochs = 3\nfolds = 2\nsteps = 2\neval_steps = 5\neval_restarts = 1\n'
        'tracin_checkpoints = 1\nknn_k = 10\n')


@pytest.mark.parametrize("text, words", [
    ('[[run]]\nname = "a"\nnoise = 0.1\n[[run', ["invalid TOML"]),
    ('[[run]]\nname = "a"\nnoize = 0.1\n', ["[[run]] #1", "noize"]),
    ('[[run]]\nname = "a"\n[[run]]\nname = "b"\nrobust-epochs = 3\n', ["[[run]] #2", "robust-epochs", "robust_epochs"]),
    ('[[run]]\nname = "a"\nnoise = "0.1"\n', ["noise", "must be a number"]),
    ('[[run]]\nname = "a"\nnoise = 1.5\n', ["('a')", "noise 1.5"]),
    ('[[run]]\nname = "a"\nmodels = ["natural", "magic"]\n', ["models", "magic"]),
    ('[[run]]\nnoise = 0.1\n', ["[[run]] #1", "missing key 'name'"]),
    ('[[run]]\nname = "a"\n[[run]]\nname = "a"\n', ["[[run]] #2", "already used"]),
    ('[[run]]\nname = "a/b"\n', ["name = 'a/b'"]),
    ('[[run]]\nname = "a"\ndataset = "npz:missing.npz"\n', ["missing.npz", "does not exist"]),
    ('[[run]]\nname = "a"\ndataset = "nosuch:x"\n', ["unknown source 'nosuch'"]),
    ('[defaults]\nepochz = 3\n[[run]]\nname = "a"\n', ["[defaults]", "epochz"]),
    ('[run]\nname = "a"\n', ["[[run]]"]),
    ('[[runs]]\nname = "a"\n', ["'runs'"]),
    ('[[run]]\nname = "summary.csv"\n', ["summary.csv", "the batch's own summary file"]),
])
def test_bad_batch_file_exits_2_before_any_training(tmp_path, capsys, text, words):
    f = tmp_path / "grid.toml"
    f.write_text(text)
    assert cli(["batch", str(f), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err
    for w in words:
        assert w in err
    assert not (tmp_path / "out").exists()


def test_precedence_defaults_run_flags_and_relative_paths(tmp_path):
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "x.npz", images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 2)
    f = tmp_path / "grid.toml"
    f.write_text('[defaults]\nepochs = 7\nseed = 1\nmodels = "natural,trades"\n'
                 '[[run]]\nname = "a"\n'
                 '[[run]]\nname = "b"\nepochs = 9\ndataset = "npz:data/x.npz"\nmodels = ["natural"]\n')
    a, b = load_batch(f, {"seed": 5})
    assert (a.config.epochs, a.config.seed, a.config.models) == (7, 5, ("natural", "trades"))
    assert (b.config.epochs, b.config.seed, b.config.models) == (9, 5, ("natural",))
    assert b.config.dataset == f"npz:{tmp_path / 'data' / 'x.npz'}"


def test_batch_skips_complete_goes_on_past_failure_and_summarizes(tmp_path, digits_run, capsys):
    done_dir, done_man = digits_run
    out = tmp_path / "out"
    shutil.copytree(done_dir, out / "digits-noise10")  # complete, same options: must be skipped
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")  # exists, so it passes the checks, then fails
    f = tmp_path / "grid.toml"
    f.write_text(
        '[[run]]\nname = "digits-noise10"\ndataset = "digits"\nmodels = ["natural", "pgd"]\nnoise = 0.1\nseed = 0\n'
        f'[[run]]\nname = "broken"\ndataset = "npz:{tmp_path / "broken.npz"}"\n{TINY}'
        f'[[run]]\nname = "tiny"\ndataset = "digits"\nnoise = 0.2\nseed = 1\n{TINY}')
    before = (out / "digits-noise10" / "manifest.json").stat().st_mtime_ns

    assert cli(["batch", str(f), "--out", str(out), "--quiet"]) == 1  # a run failed
    err = capsys.readouterr().err
    assert "[failed] broken" in err and "broken.npz" in err

    s = pd.read_csv(out / "summary.csv").set_index("name")
    assert list(s.index) == ["digits-noise10", "broken", "tiny"]
    assert dict(s["status"]) == {"digits-noise10": "skipped", "broken": "failed", "tiny": "complete"}
    assert (out / "digits-noise10" / "manifest.json").stat().st_mtime_ns == before
    m = done_man["metrics"]
    row = s.loc["digits-noise10"]
    assert row["num_examples"] == 1797 and row["num_flagged_train"] == m["num_flagged_train"]
    assert row["robust_model"] == "pgd"
    for col, key in [("natural_test_accuracy", "natural_test_accuracy"), ("natural_test_adv_accuracy", "natural_test_adv_accuracy"),
                     ("robust_test_accuracy", "pgd_test_accuracy"), ("robust_test_adv_accuracy", "pgd_test_adv_accuracy"),
                     ("estimated_noise_rate", "estimated_noise_rate"), ("wall_seconds", "wall_seconds")]:
        assert row[col] == pytest.approx(m[key], abs=1e-4)
    assert "broken.npz" in s.loc["broken", "error"] and np.isnan(s.loc["broken", "num_flagged_train"])
    assert "not a zip" in (out / "broken" / "error.txt").read_text() or "BadZipFile" in (out / "broken" / "error.txt").read_text()
    tiny = read_json(out / "tiny" / "manifest.json")
    assert tiny["status"] == "complete" and tiny["config"]["epochs"] == 3 and tiny["config"]["noise"] == 0.2
    assert s.loc["tiny", "num_examples"] == 1797 and s.loc["tiny", "num_flagged_train"] == tiny["metrics"]["num_flagged_train"]
    assert 0 <= s.loc["tiny", "robust_test_adv_accuracy"] <= 1
    pq = pd.read_parquet(out / "summary.parquet")
    assert list(pq["status"]) == ["skipped", "failed", "complete"]
    assert read_parquet_metadata(out / "summary.parquet")["kind"] == "batch_summary"

    # Rerun: the run that finished is now skipped too; the broken one fails again and is still reported.
    tiny_mtime = (out / "tiny" / "manifest.json").stat().st_mtime_ns
    assert cli(["batch", str(f), "--out", str(out), "--quiet"]) == 1
    s2 = pd.read_csv(out / "summary.csv").set_index("name")
    assert dict(s2["status"]) == {"digits-noise10": "skipped", "broken": "failed", "tiny": "skipped"}
    assert (out / "tiny" / "manifest.json").stat().st_mtime_ns == tiny_mtime
    assert s2.loc["tiny", "num_flagged_train"] == s.loc["tiny", "num_flagged_train"]


def test_the_shipped_example_batch_file_checks():
    """examples/batch.toml, which the README runs, passes every check (no training here)."""
    from pathlib import Path

    runs = load_batch(Path(__file__).resolve().parents[1] / "examples" / "batch.toml")
    assert [r.name for r in runs] == ["digits-clean", "digits-sym10", "digits-pair20"]
    assert runs[2].config.noise_kind == "pair" and runs[2].config.seed == 1 and runs[0].config.epochs == 30


def test_two_local_runs_at_once_give_the_tables_one_at_a_time_gives(tmp_path):
    """Issue #22 item 8: ``--max-concurrent 2`` on the local engine ran two audits in one process, whose
    trainings shared torch's global RNG, so identical options gave different tables. Each run now has
    its own process: both tables equal the one a run alone writes."""
    f = tmp_path / "grid.toml"
    f.write_text(f'[defaults]\nmodels = "natural"\nnoise = 0.1\n{TINY}[[run]]\nname = "a"\n[[run]]\nname = "b"\n')
    assert cli(["batch", str(f), "--out", str(tmp_path / "both"), "--max-concurrent", "2", "--quiet"]) == 0
    f1 = tmp_path / "one.toml"
    f1.write_text(f'[defaults]\nmodels = "natural"\nnoise = 0.1\n{TINY}[[run]]\nname = "a"\n')
    assert cli(["batch", str(f1), "--out", str(tmp_path / "alone"), "--quiet"]) == 0
    alone = pd.read_parquet(tmp_path / "alone" / "a" / "examples.parquet")
    for name in ("a", "b"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "both" / name / "examples.parquet"), alone)
    summary = pd.read_csv(tmp_path / "both" / "summary.csv")
    assert summary["status"].tolist() == ["complete", "complete"]


def test_a_ray_address_without_a_cluster_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for address, word in (("auto", "no Ray cluster there"), ("ray://127.0.0.1:1", "ray://")):
        p = subprocess.run([sys.executable, "-m", "audit", "run", "--dataset", "digits", "--models", "natural",
                            "--engine", "ray", "--ray-address", address, "--out", str(tmp_path / "r"), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        last = p.stderr.strip().splitlines()[-1]  # (Ray's client may log an INFO line before it)
        assert last.startswith(f"audit: error: --ray-address {address}") and word in last
        assert "Traceback" not in p.stderr


def test_ray_client_start_race_is_retried_then_named(monkeypatch, capsys):
    """Ray's client proxy can lose the server it forks for a new driver (ray-project/ray#63202): the
    engine connects again, says so, and after the last attempt names the traceback's last line."""
    ray = pytest.importorskip("ray")
    from audit import engines
    from audit.errors import AuditInputError

    race = ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n"
                                  "  File \"proxier.py\", line 396\npsutil.ZombieProcess: PID still exists")
    calls = []

    def init(**kw):
        calls.append(kw["address"])
        if len(calls) < 3:
            raise race

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(engines.time, "sleep", lambda s: None)
    engines.RayEngine(1, "ray://10.0.0.1:10001")._init()
    assert calls == ["ray://10.0.0.1:10001"] * 3
    err = capsys.readouterr().err
    assert err.count("failed to start for this driver") == 2 and "attempt 2 of 3" in err

    calls.clear()
    monkeypatch.setattr(engines, "RAY_CLIENT_ATTEMPTS", 2)
    with pytest.raises(AuditInputError, match=r"could not connect .*Initialization failure from server: "
                                              r"psutil.ZombieProcess"):
        engines.RayEngine(1, "ray://10.0.0.1:10001")._init()
    assert len(calls) == 2
    # a head address (no client server in between) is not retried
    calls.clear()
    with pytest.raises(AuditInputError):
        engines.RayEngine(1, "10.0.0.1:6379")._init()
    assert len(calls) == 1
