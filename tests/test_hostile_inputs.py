"""Hostile and clumsy input to `audit run` and `audit batch`: every option range-checked before any
work (exit 2, one line naming the option, no run directory left "running"), one writer per run
directory, no half-written files, timings kept on cached reruns. (Datasets: test_hostile_data.py;
run directories, reports, exports and decisions: test_hostile_outputs.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from filelock import FileLock

from audit.cli import main as cli

TINY = ["--epochs", "3", "--robust-epochs", "1", "--cv-epochs", "3", "--folds", "2", "--steps", "2", "--eval-steps", "5",
        "--eval-restarts", "1", "--tracin-checkpoints", "1", "--knn-k", "10", "--threads", "1", "--quiet"]


@pytest.mark.parametrize("args, word", [
    (["--epochs", "0"], "--epochs"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--eval-steps", "0"], "--eval-steps"),
    (["--eps", "nan"], "--eps"),
    (["--eps", "inf"], "--eps"),
    (["--repeats", "0"], "--repeats"),
    (["--seed", "-1"], "--seed"),
    (["--width", "0"], "--width"),
    (["--lr", "nan"], "--lr"),
    (["--knn-k", "0"], "--knn-k"),
    (["--noise", "1.5"], "--noise"),
    (["--noise-kind", "symetric"], "symmetric"),  # did you mean
    (["--models", "natural,magic"], "magic"),
    (["--models", "pgd"], "natural"),
    (["--threads", "0"], "--threads"),
    (["--canary-rate", "0.6"], "--canary-rate"),
    (["--folds", "1"], "--folds"),
    (["--epochs", "1.5"], "--epochs"),
    (["--epochs", "lots"], "--epochs"),
    (["--device", "tpu"], "tpu"),
    (["--ray-address", "auto"], "--engine ray"),
    (["--max-image-pixels", "0"], "--max-image-pixels"),
    (["--augment", "rotate"], "--augment"),
])
def test_bad_option_exits_2_before_any_work(tmp_path, capsys, args, word):
    out = tmp_path / "run"
    try:
        code = cli(["run", "--dataset", "digits", *args, "--out", str(out)])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err, err
    assert not out.exists()  # nothing written, no manifest left "running"


def test_out_naming_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    assert cli(["run", "--dataset", "digits", *TINY, "--out", str(f)]) == 2
    assert "file.txt" in capsys.readouterr().err and f.read_text() == "mine"


def test_batch_option_out_of_range_fails_before_training(tmp_path, capsys):
    f = tmp_path / "grid.toml"
    f.write_text('[[run]]\nname = "a"\nepochs = -3\n')
    assert cli(["batch", str(f), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "epochs -3" in err and "[[run]] #1" in err and not (tmp_path / "out").exists()
    f.write_text('[[run]]\nname = "a"\n')
    for cap in ("0", "-1"):  # 0 once fell through to the default cap
        assert cli(["batch", str(f), "--out", str(tmp_path / "out"), "--quiet", "--max-concurrent", cap]) == 2
        assert f"--max-concurrent {cap}: must be ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_busy_run_directory_is_refused_naming_its_writer(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".audit.lock.owner").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "since": "now"}))
    with FileLock(str(out / ".audit.lock")):
        assert cli(["run", "--dataset", "digits", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another audit" in err and "4242" in err
    assert not (out / "manifest.json").exists()


def _start(out, extra=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "audit.cli", "run", "--dataset", "digits", "--noise", "0.1",
                             *TINY, "--epochs", "20", *extra, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_on_one_run_directory_one_completes_one_exits_2(tmp_path):
    out = tmp_path / "run"
    a, b = _start(out), _start(out)
    ra, rb = a.communicate(timeout=600), b.communicate(timeout=600)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (ra, rb)
    loser = ra if a.returncode == 2 else rb
    assert "another audit is writing" in loser[1]
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete"
    assert not list(out.rglob("*.tmp"))


def test_rerun_removes_stale_temporaries_and_keeps_timings(tmp_path):
    out = tmp_path / "run"
    assert cli(["run", "--dataset", "digits", *TINY, "--out", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    for junk in (out / ".examples.parquet.x1y2.tmp", out / ".cache" / ".crossval.npz.k3.tmp",
                 out / "checkpoints" / ".natural.pt.999.tmp"):
        junk.write_bytes(b"half")
    time.sleep(0.01)
    assert cli(["run", "--dataset", "digits", *TINY, "--out", str(out)]) == 0
    second = json.loads((out / "manifest.json").read_text())
    assert not list(out.rglob("*.tmp"))
    for name, st in first["stages"].items():
        if name == "write":
            continue
        assert second["stages"][name]["status"] == "cached"
        assert second["stages"][name]["seconds"] == st["seconds"] > 0  # the record of the work is kept
    assert second["metrics"]["compute_seconds"] >= sum(s["seconds"] for k, s in first["stages"].items() if k != "write")
