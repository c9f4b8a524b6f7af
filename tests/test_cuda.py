"""The GPU path: skipped where no CUDA device is present (CI), run on a lent GPU with
``python -m pytest -m cuda`` (``benchmarks/gpu_check.sh`` does that on the device machine).

On CUDA the models train under bf16 autocast with cuDNN autotuning, so results are close to the CPU's,
not equal: the tests bound them against the same seeded run on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _digits_run(root, device: str):
    from audit.config import RunConfig
    from audit.pipeline import run_audit

    out = root / f"digits-noise10-{device}"
    run_audit(RunConfig(dataset="digits", models=("natural", "pgd"), noise=0.1, seed=0, device=device), out,
              progress=False)
    return out, json.loads((out / "manifest.json").read_text())


def test_a_cuda_run_writes_the_same_table_and_finds_the_noise_as_well_as_the_cpu_run(tmp_path):
    # the session's ``digits_run`` would resolve ``auto`` to CUDA here, so the CPU side is explicit
    out, man = _digits_run(tmp_path, "cuda")
    cpu_out, cpu_man = _digits_run(tmp_path, "cpu")
    assert man["device"].startswith("cuda") and man["status"] == "complete"
    gpu, cpu = pd.read_parquet(out / "examples.parquet"), pd.read_parquet(cpu_out / "examples.parquet")
    assert list(gpu.columns) == list(cpu.columns)
    # the data, the noise and the canaries are drawn on the CPU from the seed: identical on both devices
    for col in ("example_id", "split", "index", "given_label", "clean_label", "is_injected_noise",
                "held_out_as_canary"):
        assert np.array_equal(gpu[col].to_numpy(), cpu[col].to_numpy()), col
    m, c = man["metrics"], cpu_man["metrics"]
    assert m["noise_auroc"] >= 0.97 and m["noise_auroc"] >= c["noise_auroc"] - 0.02, (m["noise_auroc"],
                                                                                      c["noise_auroc"])
    assert m["natural_train_accuracy"] >= 0.99
    assert m["pgd_test_adv_accuracy"] >= m["natural_test_adv_accuracy"] + 0.4


def test_training_pixels_live_on_the_gpu_once_when_they_fit():
    """The accelerator path of ``_place_images`` on a real device: the view's rows, in order, as uint8."""
    from audit.rows import Rows
    from audit.train.engine import _place_images

    src = np.random.default_rng(0).integers(0, 256, (50, 1, 8, 8), dtype=np.uint8)
    idx = np.array([7, 3, 49, 0])
    placed = _place_images(Rows.of(src, idx), torch.device("cuda"))
    assert isinstance(placed, torch.Tensor) and placed.device.type == "cuda" and placed.dtype == torch.uint8
    assert np.array_equal(placed.cpu().numpy(), src[idx])
    # too big for a quarter of the free memory: stays a view, read batch by batch
    rows = Rows.of(src, idx)
    assert _place_images(rows, torch.device("cuda"), free_bytes=10) is rows


def test_pgd_on_cuda_lowers_a_natural_models_accuracy_like_on_cpu():
    """The same trained weights attacked on both devices: clean accuracy agrees to bf16 rounding, and
    PGD-20 drives it down on both (random starts differ between devices, so the bound is loose)."""
    from sklearn.datasets import load_digits

    from audit.train.evaluate import infer, robust_correct
    from audit.train.models import build_model

    d = load_digits()
    images = torch.tensor(np.round(d.images[:, None] * 255 / 16), dtype=torch.uint8)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images.float() / 255), y).backward()
        opt.step()
    res = {}
    for name in ("cpu", "cuda"):
        dev = torch.device(name)
        m = model.to(dev)
        clean = (infer(m, images, dev)[0].argmax(1) == d.target).mean()
        robust = robust_correct(m, images, y, "pgd", eps=0.1, norm="linf", steps=20, restarts=1, num_classes=10,
                                device=dev).mean()
        res[name] = (clean, robust)
    assert res["cpu"][0] > 0.95
    assert res["cuda"][0] == pytest.approx(res["cpu"][0], abs=0.01)
    assert res["cpu"][1] < res["cpu"][0] - 0.3 and res["cuda"][1] < res["cuda"][0] - 0.3
    assert res["cuda"][1] == pytest.approx(res["cpu"][1], abs=0.05)
