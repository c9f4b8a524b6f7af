"""The registry of dataset sources: ``SOURCES[prefix]`` loads ``--dataset prefix:ARG``.

Source modules import :func:`register` and :class:`LoadOptions` from here and nothing from
:mod:`audit.data.sources`, which imports them all: no module imports back from the one importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class LoadOptions:
    """How to load, beyond the spec.

    download: let torchvision sources download missing files (never by default).
    memory_budget_mb: decoded image folders and manifests larger than this (MiB) stream from a memmap
        cache file; ``None`` reads ``AUDIT_MEMORY_BUDGET_MB`` (default 2048).
    cache_dir: where those cache files go; ``None`` reads ``AUDIT_CACHE_DIR`` (default ~/.cache/benign-audit).
    decode_workers: processes decoding image files; ``None`` reads ``AUDIT_DECODE_WORKERS``, else one per
        CPU (up to 8) from 2,000 images on, when there are more than 2 CPUs.
    max_image_pixels: largest width × height of one image file; a larger file is refused before it is
        decoded. ``None`` reads ``AUDIT_MAX_IMAGE_PIXELS``, else :data:`audit.data.limits.MAX_IMAGE_PIXELS`.
    """

    download: bool = False
    memory_budget_mb: float | None = None
    cache_dir: str | Path | None = None
    decode_workers: int | None = None
    max_image_pixels: int | None = None


Loader = Callable[..., object]
SOURCES: dict[str, Loader] = {}


def register(prefix: str) -> Callable[[Loader], Loader]:
    """Decorator: make ``fn(arg, *, spec, opts)`` the loader of ``--dataset prefix:ARG``."""

    def deco(fn: Loader) -> Loader:
        SOURCES[prefix] = fn
        return fn

    return deco
