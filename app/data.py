"""Cached, read-only loaders for one run directory, and the file-access rule of the app.

Everything here reads artifacts and never writes them (decisions go through
:class:`audit.decisions.DecisionStore`). Loaders are keyed by the file's path and modification time, so
a rerun of ``audit run`` into the same directory is picked up without restarting the server, and
the big tables are shared by every browser session (``st.cache_resource``: never mutate what they
return).

Safety: a run directory is untrusted input, read through :class:`audit.rundir.RunDir` (a checked
manifest, regular files, fixed names). Pictures come only from the dataset the manifest names *after*
its fingerprint matched the recorded one; otherwise the tables show without pictures and
:func:`dataset_notice` says why (nothing in a manifest can download or widen what is read). The zoomed
view opens only the source file the verified dataset lists for that example, and only when it
resolves (symlinks followed) inside the run directory or that dataset's root.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

DEFAULT_RUN = "artifacts/digits"
THUMB = 96  # thumbnail side, pixels
THUMB_GRID = 72  # the review grid's thumbnails
ZOOM = 280  # zoomed view side, pixels
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


# -- which run ------------------------------------------------------------------------------------
def run_dir_from_argv() -> Path:
    """The run directory: ``$AUDIT_RUN_DIR`` (set by ``audit app``), else the first plain argument after
    ``streamlit run app/streamlit_app.py --``, else ``artifacts/digits``."""
    env = os.environ.get("AUDIT_RUN_DIR")
    if env:
        return Path(env)
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return Path(args[0] if args else DEFAULT_RUN)


def run_problem(run: Path) -> str | None:
    """Why ``run`` cannot be reviewed, or None."""
    from audit.errors import AuditInputError

    if not (run / "examples.parquet").is_file():
        return f"{run}: no examples.parquet — run `audit run --out {run}` first, then `audit app {run}`"
    if not (run / "manifest.json").is_file():
        return f"{run}: no manifest.json (an interrupted run? rerun `audit run --out {run}` to finish it)"
    try:
        _rundir(str(run), _mtime(run / "manifest.json"))
    except AuditInputError as e:
        return str(e)
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except FileNotFoundError:
        return 0.0


# -- artifacts ------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=8)
def _rundir(run: str, mtime: float):
    """The run opened read-only (its manifest checked), once per manifest version."""
    from audit.rundir import RunDir

    return RunDir(run, complete=False)


def _open(run: Path):
    return _rundir(str(run), _mtime(run / "manifest.json"))


def manifest(run: Path) -> dict:
    """``manifest.json``, checked by :class:`audit.rundir.RunDir` (shared, read-only)."""
    return _open(run).manifest


@st.cache_resource(show_spinner="Loading examples…", max_entries=4)
def _examples(path: str, mtime: float) -> pd.DataFrame:
    run = Path(path).parent
    df = _open(run).examples()
    df.index = pd.RangeIndex(len(df))
    return df


def examples(run: Path) -> pd.DataFrame:
    """``examples.parquet``, loaded once per file version and shared (read-only)."""
    p = run / "examples.parquet"
    return _examples(str(p), _mtime(p))


@st.cache_resource(show_spinner=False, max_entries=4)
def _row_of(path: str, mtime: float) -> pd.Index:
    return pd.Index(_examples(path, mtime)["example_id"])


def row_of(run: Path) -> pd.Index:
    """``example_id`` -> row in :func:`examples` (``get_indexer`` / ``get_loc``)."""
    p = run / "examples.parquet"
    return _row_of(str(p), _mtime(p))


@st.cache_resource(show_spinner=False, max_entries=64)
def _sorted_train(path: str, mtime: float, column: str) -> np.ndarray:
    df = _examples(path, mtime)
    x = df.loc[df["split"] == "train", column].to_numpy(dtype=float, na_value=np.nan)
    return np.sort(x[~np.isnan(x)])


def train_percentile(run: Path, column: str, value) -> float | None:
    """Share of training examples whose ``column`` is below ``value`` (sorted once per run, then a
    binary search); None when the value is missing."""
    if value is None or pd.isna(value):
        return None
    p = run / "examples.parquet"
    xs = _sorted_train(str(p), _mtime(p), column)
    return float(np.searchsorted(xs, float(value), side="left") / len(xs)) if len(xs) else None


@st.cache_resource(show_spinner=False, max_entries=4)
def _pairs(path: str, mtime: float) -> pd.DataFrame:
    if not mtime:
        return pd.DataFrame(columns=["test_id", "train_id", "rank", "similarity", "influence", "reason"])
    return _open(Path(path).parent).pairs()


def pairs(run: Path) -> pd.DataFrame:
    p = run / "pairs.parquet"
    return _pairs(str(p), _mtime(p))


@dataclass(frozen=True)
class Dynamics:
    """Per-epoch margins of every training example under every model (``dynamics.npz``)."""

    margins: dict[str, np.ndarray]  # model -> (epochs, N_train) float16
    column: pd.Index  # example_id -> column

    def curves(self, example_id: str) -> pd.DataFrame:
        """Long table ``model, epoch, margin`` for one example (empty if it has none)."""
        j = self.column.get_indexer([example_id])[0]
        if j < 0:
            return pd.DataFrame(columns=["model", "epoch", "margin"])
        parts = [pd.DataFrame({"model": m, "epoch": np.arange(1, len(a) + 1), "margin": a[:, j].astype(np.float32)})
                 for m, a in self.margins.items()]
        return pd.concat(parts, ignore_index=True)


@st.cache_resource(show_spinner=False, max_entries=4)
def _dynamics(path: str, mtime: float) -> Dynamics | None:
    from audit.errors import AuditInputError

    if not mtime:
        return None
    try:
        if Path(path).is_symlink():
            return None
        with np.load(path, allow_pickle=False) as z:  # margins only: the largest arrays are read once
            models = [str(m) for m in z["models"]] if "models" in z.files else []
            return Dynamics({m: z[f"margin_{m}"] for m in models if f"margin_{m}" in z.files},
                            pd.Index(z["example_ids"].astype(str)))
    except (OSError, ValueError, KeyError, AuditInputError):  # unreadable: the page says so instead of failing
        return None


def dynamics(run: Path) -> Dynamics | None:
    p = run / "dynamics.npz"
    return _dynamics(str(p), _mtime(p))


@st.cache_resource(show_spinner=False, max_entries=16)
def _latest_decisions(run: str, version: int) -> pd.DataFrame:
    from audit.decisions import DecisionStore

    return DecisionStore(run).latest()


def latest_decisions(run: Path) -> pd.DataFrame:
    """The effective decision per example, cached until anyone writes a new row (shared, read-only)."""
    from audit.decisions import DecisionStore

    return _latest_decisions(str(run), DecisionStore(run).version())


# -- images ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Images:
    images: np.ndarray | None  # (N, C, H, W) uint8
    row: pd.Index  # example_id -> row of ``images``
    paths: np.ndarray | None  # source file per row, when the dataset has files
    error: str | None = None


@st.cache_resource(show_spinner="Loading images…", max_entries=2)
def _images(run: str, manifest_mtime: float, examples_mtime: float) -> Images:
    """The verified dataset's pictures, or none and a notice (:meth:`audit.rundir.RunDir.dataset_or_notice`)."""
    ds, notice = _open(Path(run)).dataset_or_notice()
    if ds is None:
        return Images(None, pd.Index([]), None, notice)
    paths = None if getattr(ds, "paths", None) is None else np.asarray(ds.paths).astype(str)
    return Images(ds.images, pd.Index(np.asarray(ds.example_ids).astype(str)), paths)


def _versions(run: Path) -> tuple[str, float, float]:
    return str(run), _mtime(run / "manifest.json"), _mtime(run / "examples.parquet")


def images(run: Path) -> Images:
    """The run's dataset pictures, loaded and verified once per run version and shared."""
    return _images(*_versions(run))


def dataset_notice(run: Path) -> str | None:
    """Why the run's pictures are not shown (a dataset that cannot be verified), or None: for the views
    to show beside the tables. Safe to show anyone: it quotes no file content."""
    return images(run).error


def allowed_roots(run: Path) -> list[Path]:
    """The run directory, and the dataset's root once the dataset is verified (never from the manifest alone)."""
    from audit.rundir import dataset_root

    roots = [run.resolve()]
    if images(run).images is not None:
        root = dataset_root(manifest(run)["dataset"]["spec"])
        if root is not None:
            roots.append(root)
    return roots


def safe_file(path: str | os.PathLike | None, roots: list[Path]) -> Path | None:
    """``path`` resolved, if it is an existing image file inside one of ``roots``; else None.

    Relative paths resolve against the first root (the run directory); ``..`` and symlinks that lead
    outside every root are refused.
    """
    if path is None or (isinstance(path, float) and np.isnan(path)) or str(path) in ("", "nan", "None"):
        return None
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = roots[0] / p
    try:
        p = p.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
        return None
    if not any(p.is_relative_to(r) for r in roots):
        return None
    return p


def _to_pil(arr: np.ndarray):
    from PIL import Image

    a = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(a))


def _resized_png(img, side: int) -> bytes:
    """Longest side to ``side`` pixels: crisp whole-number upscaling for tiny images, Lanczos down."""
    from PIL import Image

    w, h = img.size
    scale = side / max(w, h)
    if scale >= 1:
        k = max(1, int(scale))
        img = img.resize((w * k, h * k), Image.NEAREST)
    else:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=50_000)
def _placeholder_png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 225).save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=50_000)
def _thumb_png(run: str, manifest_mtime: float, examples_mtime: float, example_id: str, side: int) -> bytes | None:
    imgs = _images(run, manifest_mtime, examples_mtime)
    if imgs.images is None:
        return None
    i = imgs.row.get_indexer([example_id])[0]
    if i < 0:
        return None
    return _resized_png(_to_pil(imgs.images[i]), side)


def thumbnail(run: Path, example_id: str, side: int = THUMB) -> bytes:
    """PNG bytes of one example at ``side`` pixels (cached per example and size); a grey square if
    the dataset cannot be loaded or does not hold the example."""
    png = _thumb_png(*_versions(run), str(example_id), side)
    return png if png is not None else _placeholder_png(side)


@st.cache_data(show_spinner=False, max_entries=512)
def _file_png(path: str, mtime: float, side: int) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return _resized_png(im.convert("RGB") if im.mode not in ("L", "RGB") else im, side)
    except Exception:  # noqa: BLE001 - a broken file falls back to the decoded array
        return None


def source_path(run: Path, example_id: str) -> str | None:
    """The source file the *verified* dataset lists for ``example_id`` (never the table's ``path``
    column, which a tampered run could point anywhere), or None."""
    imgs = images(run)
    if imgs.paths is None:
        return None
    i = imgs.row.get_indexer([str(example_id)])[0]
    return str(imgs.paths[i]) if i >= 0 else None


def zoom_image(run: Path, row: pd.Series, side: int = ZOOM) -> tuple[bytes, str | None]:
    """The zoomed view: the verified dataset's source file for the example when it lies inside the
    allowed roots (full resolution, then resized), else the decoded array; and the path shown."""
    src = safe_file(source_path(run, row["example_id"]), allowed_roots(run))
    if src is not None:
        png = _file_png(str(src), _mtime(src), side)
        if png is not None:
            return png, str(src)
    return thumbnail(run, row["example_id"], side), None
