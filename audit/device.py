"""Device handling in one place: ``auto`` resolves once to CUDA when present, else CPU; and the arithmetic
(``--precision``) every training and inference of a stage runs in."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

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


PRECISIONS = ("auto", "bf16", "fp32")
# Set per stage by :func:`precision` (audit.engines.execute), on whichever worker runs it; a context
# variable, so the audits of a batch running in threads side by side keep their own.
_PRECISION: ContextVar[str] = ContextVar("audit_precision", default="auto")


@contextmanager
def precision(name: str):
    """Within it, :func:`autocast` follows ``--precision`` ``name``: ``auto`` (bf16 on CUDA, float32 on the
    CPU), ``bf16`` (bf16 on the CPU too) or ``fp32`` (float32 everywhere)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})")
    token = _PRECISION.set(name)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def autocast(device: torch.device, *, attack: bool = False):
    """bf16 autocast on CUDA and a no-op context on the CPU (float32 keeps CPU results exact and seeded),
    unless :func:`precision` says otherwise: ``bf16`` autocasts on the CPU too (oneDNN's AMX and
    AVX512-BF16 kernels, about twice as fast where the CPU has them), ``fp32`` nowhere. ``attack``: the
    training attacks' context, bf16 only under an explicit ``bf16`` (they run in float32 by default, on
    CUDA too); the evaluation attack never autocasts, so robust accuracy is measured in float32."""
    p = _PRECISION.get()
    on = p == "bf16" or (p == "auto" and device.type == "cuda" and not attack)
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else torch.autocast(device.type, enabled=False)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AMX-BF16 or AVX512-BF16), by /proc/cpuinfo's flags; False
    where that file is missing (not Linux): bf16 there may run slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))
