"""``--precision``: bf16 autocast on the CPU only when asked, in every stage, and part of every cache key
only when it is not the default (so earlier run directories stay valid)."""

from __future__ import annotations

import pytest
import torch

from audit.config import RunConfig
from audit.device import autocast, precision


def _dtype(device: str = "cpu", attack: bool = False) -> torch.dtype:
    lin = torch.nn.Linear(4, 3)
    with autocast(torch.device(device), attack=attack):
        return lin(torch.ones(2, 4)).dtype


def test_autocast_follows_the_precision_in_force():
    assert _dtype() == torch.float32  # auto: float32 on the CPU
    assert _dtype(attack=True) == torch.float32
    with precision("bf16"):
        assert _dtype() == torch.bfloat16 and _dtype(attack=True) == torch.bfloat16  # the training attacks too
        with precision("fp32"):
            assert _dtype() == torch.float32
        assert _dtype() == torch.bfloat16
    assert _dtype() == torch.float32
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        with precision("fp16"):
            pass


def test_the_engine_runs_each_task_in_its_precision():
    from audit.engines import Task, execute

    out, _ = execute(Task("t", lambda: {"dtype": _dtype()}, (), precision="bf16"), threads=1)
    assert out["dtype"] == torch.bfloat16 and _dtype() == torch.float32


def test_precision_joins_the_cache_keys_only_when_set(tmp_path, capfd):
    import json

    from audit.pipeline import run_audit, stage_configs

    cfg = RunConfig(dataset="digits", noise=0.1, seed=0, eps=0.1, epochs=8, robust_epochs=8, cv_epochs=8)
    assert not any("precision" in c for _, c, _ in stage_configs(cfg).values())
    bf = RunConfig(**{**cfg.__dict__, "precision": "bf16"})
    assert all(c["precision"] == "bf16" for _, c, _ in stage_configs(bf).values())
    a = run_audit(cfg, tmp_path / "fp32", progress=False)
    capfd.readouterr()
    b = run_audit(bf, tmp_path / "bf16", progress=True)
    plan = [line for line in capfd.readouterr().err.splitlines() if "plan:" in line]
    assert plan and "training images, bf16;" in plan[0]  # the plan says so before training
    assert a["recipe"]["precision"]["value"] == "fp32" and b["recipe"]["precision"] == {
        "value": "bf16", "option": "bf16", "slow": b["recipe"]["precision"]["slow"]}
    assert all(a["stages"][s]["key"] != b["stages"][s]["key"] for s in ("train_natural", "train_pgd", "crossval"))
    assert b["status"] == "complete" and b["metrics"]["noise_auroc"] > 0.95  # bf16 still finds the noise
    assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["config"]["precision"] == "bf16"


def test_audits_in_threads_side_by_side_keep_their_own_precision():
    import threading

    seen, ready = {}, threading.Barrier(2)

    def run(name: str, p: str) -> None:
        with precision(p):
            ready.wait()  # both are inside their precision before either computes
            seen[name] = _dtype()

    threads = [threading.Thread(target=run, args=("a", "bf16")), threading.Thread(target=run, args=("b", "auto"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": torch.bfloat16, "b": torch.float32}


def test_verify_trains_in_the_runs_precision_and_keys_it(digits_run, monkeypatch):
    """``audit verify`` retrains in the run's ``--precision``: its cached results are keyed by it when it
    is set (and keyed as before when it is not), and its trainings run inside it."""
    import json
    from types import SimpleNamespace

    import numpy as np

    from audit import verify
    from audit.config import config_from_dict

    man = json.loads((digits_run[0] / "manifest.json").read_text())
    cfg = config_from_dict(man["config"])
    assert cfg.precision == "auto"
    spec = verify.train_spec(cfg, "natural", 0, epochs=1)
    labels = np.zeros(5, np.int64)
    key = verify.result_key(SimpleNamespace(cfg=cfg, manifest=man), spec, labels)
    bf = RunConfig(**{**cfg.__dict__, "precision": "bf16"})
    assert verify.result_key(SimpleNamespace(cfg=bf, manifest=man), spec, labels) != key
    import audit.train.engine as engine

    seen = []

    def train_model_seen(*args, **kw):  # what the arithmetic is where verify trains, then stop
        seen.append(_dtype())
        raise RuntimeError("stop here")

    monkeypatch.setattr(engine, "train_model", train_model_seen)
    data = SimpleNamespace(cfg=bf, manifest=man, train_images=torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                           test_images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8), test_labels=np.zeros(2, np.int64))
    with pytest.raises(RuntimeError, match="stop here"):
        verify.train_and_evaluate(data, np.zeros(4, np.int64), spec, torch.device("cpu"), digits_run[0] / "x.pt")
    assert seen == [torch.bfloat16]
