"""audit reproduce at quick scale: the paper's effects, as numbers."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from audit.cli import main as cli


def test_toy_mnist_label_noise_breaks_robustness_not_training(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["reproduce", "toy-mnist", "--quick", "--sigma2", "0.1,0.5", "--etas", "0,0.2", "--seeds", "1",
            "--n-train", "500", "--n-test", "300", "--n-attack", "150", "--eps", "0.05,64/255", "--threads", "1",
            "--quiet", "--out", str(out)]
    assert cli(args) == 0
    s = pd.read_csv(out / "toy_mnist.csv")
    assert len(s) == 2 * 2 * 2  # sigma2 × eta × eps
    assert (s["train_error_mean"] == 0).all()  # every model interpolates its noisy labels
    small = s[s["eps"].round(3) == 0.05].set_index(["sigma2", "eta"])["adversarial_error_mean"]
    for sigma2 in (0.1, 0.5):
        assert small[(sigma2, 0.0)] <= 0.1  # clean labels: robust at eps 0.05
        assert small[(sigma2, 0.2)] >= small[(sigma2, 0.0)] + 0.5  # 20% flipped labels: mostly broken
    clean = s[s["eta"] == 0]
    assert (clean["test_error_mean"] <= 0.02).all()
    runs = pd.read_csv(out / "toy_mnist_runs.csv")
    assert set(runs["flipped"]) == {0, 100} and len(runs) == 8
    assert Image.open(out / "toy_mnist.png").size[0] > 800 and (out / "toy_mnist_samples.png").is_file()
    assert "adversarial_error_mean" in capsys.readouterr().out

    # A rerun with the same options resumes: nothing is recomputed.
    before = (out / "toy_mnist_runs.csv").read_text()
    assert cli(args) == 0
    assert (out / "toy_mnist_runs.csv").read_text() == before


def test_label_noise_robustness_adversarial_error_grows_with_eta(tmp_path):
    out = tmp_path / "ln"
    assert cli(["reproduce", "label-noise-robustness", "--dataset", "digits", "--quick", "--etas", "0,0.4",
                "--seeds", "1", "--eps", "0.05", "--n-attack", "200", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    s = pd.read_csv(out / "label_noise.csv").set_index("eta")
    assert s.loc[0.4, "adversarial_error_mean"] >= s.loc[0.0, "adversarial_error_mean"] + 0.15
    assert s.loc[0.0, "test_error_mean"] < 0.1
    assert s.loc[0.0, "train_error_mean"] < 0.02
    assert (out / "label_noise.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, words", [
    (["toy-mnist", "--etas", "0.7"], "--etas"),
    (["toy-mnist", "--source", "nosuch:x"], "nosuch"),
    (["toy-mnist", "--n-attack", "0"], "--n-attack"),
    (["label-noise-robustness", "--dataset", "npz:/nonexistent.npz"], "/nonexistent.npz"),
    (["label-noise-robustness", "--eps", "0,0.1"], "--eps"),
])
def test_bad_reproduce_options_exit_2(tmp_path, capsys, args, words):
    assert cli(["reproduce", *args, "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
