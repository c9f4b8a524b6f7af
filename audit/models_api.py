"""``audit.load_model``: a trained model of a run directory, ready for inference."""

from __future__ import annotations

from pathlib import Path

import torch

from audit.errors import AuditInputError
from audit.io import read_json
from audit.train.models import build_model


def load_model(run_dir: str | Path, name: str = "natural", device: str = "cpu") -> torch.nn.Module:
    """Load model ``name`` (``natural``, ``pgd``, ``trades``, ``fgsm``) of ``run_dir`` in eval mode.

    The module takes float images in [0, 1], N×C×H×W, and returns logits (N, K). The state_dict is
    loaded with ``torch.load(weights_only=True)``.
    """
    run_dir = Path(run_dir)
    man_path = run_dir / "manifest.json"
    if not man_path.exists():
        raise AuditInputError(f"{run_dir}: not a run directory (no manifest.json)")
    man = read_json(man_path)
    cfg, ds = man["config"], man["dataset"]
    path = run_dir / "checkpoints" / f"{name}.pt"
    if not path.exists():
        raise AuditInputError(f"{path}: no checkpoint for model {name!r} (run has {', '.join(cfg['models'])})")
    model = build_model(cfg["arch"], tuple(ds["shape"]), len(ds["class_names"]), cfg["width"])
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.to(device).eval()
