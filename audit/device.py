"""Device handling in one place: ``auto`` resolves once to CUDA when present, else CPU."""

from __future__ import annotations

import torch

from audit.errors import AuditInputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device (CPU threads: ``--threads``,
    :func:`audit.config.default_threads`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AuditInputError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise AuditInputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32 keeps CPU results exact and seeded)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
