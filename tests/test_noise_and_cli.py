"""Noise injection is exact and seeded; bad input exits 2 with a one-line message."""

from __future__ import annotations

import numpy as np
import pytest

from audit.cli import main as cli
from audit.data.noise import noisy_labels


@pytest.mark.parametrize("kind", ["symmetric", "pair", "confusion", "mixed"])
def test_noise_flips_exactly_the_rate(kind):
    y = np.repeat(np.arange(10), 100)
    conf = np.ones((10, 10)) if kind == "confusion" else None
    out = noisy_labels(y, 0.2, 10, kind=kind, seed=3, confusion=conf)
    assert (out != y).sum() == 200
    assert (out == noisy_labels(y, 0.2, 10, kind=kind, seed=3, confusion=conf)).all()
    if kind == "pair":
        mapping = {(a, b) for a, b in zip(y[out != y], out[out != y])}
        assert len(mapping) == len({a for a, _ in mapping})  # one target per class
    if kind == "mixed":  # half follow one class permutation, the rest go anywhere
        pairs = {}
        for a, b in zip(y[out != y], out[out != y]):
            pairs.setdefault(a, []).append(b)
        top = sum(max(np.bincount(v)) for v in pairs.values())
        assert 100 <= top < 200


def test_bad_dataset_spec_exits_2(tmp_path, capsys):
    assert cli(["run", "--dataset", "nosuch:thing", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nosuch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "examples.parquet").exists()


def test_missing_npz_exits_2(tmp_path, capsys):
    assert cli(["run", "--dataset", f"npz:{tmp_path / 'none.npz'}", "--out", str(tmp_path / "r")]) == 2
    assert "none.npz" in capsys.readouterr().err


def test_bad_models_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # checked while the flags are parsed
        cli(["run", "--models", "natural,magic", "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    assert "magic" in capsys.readouterr().err


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["run", "--frobnicate"])
    assert e.value.code == 2


def test_progress_to_a_file_leaves_no_bar_debris(tmp_path):
    """Issue #26 item 7: with output going to a file, progress bars left lines of carriage-return debris.
    Bars draw only on a terminal; the stage lines remain."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    with open(tmp_path / "log.txt", "w") as log:
        p = subprocess.run([sys.executable, "-m", "audit", "run", "--dataset", "digits", "--models", "natural",
                            "--epochs", "2", "--cv-epochs", "2", "--folds", "2", "--out", str(tmp_path / "r")],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=600)
    text = (tmp_path / "log.txt").read_text()
    assert p.returncode == 0, text
    assert "\r" not in text and "it/s" not in text and "flagged" in text
