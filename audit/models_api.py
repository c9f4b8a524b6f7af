"""``audit.load_model``: a trained model of a run directory, ready for inference."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.errors import AuditInputError
from audit.rundir import RunDir
from audit.train.models import build_model


def load_model(run_dir: str | Path, name: str = "natural", device: str = "cpu") -> torch.nn.Module:
    """Load model ``name`` (``natural``, ``pgd``, ``trades``, ``fgsm``) of ``run_dir`` in eval mode.

    The module takes float images in [0, 1], N×C×H×W, and returns logits (N, K). The state_dict is
    loaded with ``torch.load(weights_only=True)`` (:meth:`audit.rundir.RunDir.checkpoint`); a file that
    is not one, or does not fit the run's architecture, is an :class:`AuditInputError` (exit 2).
    """
    run = RunDir(run_dir, complete=False)
    state = run.checkpoint(name, map_location=device)
    cfg, ds = run.config, run.manifest["dataset"]
    model = build_model(cfg["arch"], tuple(ds["shape"]), run.num_classes, cfg["width"])
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise AuditInputError(f"{run.path / 'checkpoints' / f'{name}.pt'}: corrupt or not written by benign-audit "
                              f"(its tensors do not fit the run's {cfg['arch']} model)") from None
    return model.to(device).eval()
