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
import stat
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
    """Why ``run`` cannot be reviewed, or None: no tables, a manifest or examples table that is a link,
    not a regular file or refused by :class:`audit.rundir.RunDir` (its message), or no examples at all
    (:func:`no_examples`)."""
    from audit.errors import AuditInputError

    for name in ("examples.parquet", "manifest.json"):
        problem = file_problem(run / name)
        if problem:
            return problem
    if not (run / "examples.parquet").is_file():
        return f"{run}: no examples.parquet — run `audit run --out {run}` first, then `audit app {run}`"
    if not (run / "manifest.json").is_file():
        return f"{run}: no manifest.json (an interrupted run? rerun `audit run --out {run}` to finish it)"
    try:
        _rundir(str(run), _mtime(run / "manifest.json"))
        empty = no_examples(run)
        if empty:
            return empty
        examples(run)
    except AuditInputError as e:
        return str(e)
    return None


def no_examples(run: Path) -> str | None:
    """A notice when ``examples.parquet`` holds no rows (nothing to review: an info, not an error), else None."""
    import pyarrow.parquet as pq

    path = run / "examples.parquet"
    if file_problem(path) or not path.is_file():
        return None
    try:
        rows = pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - not Parquet: RunDir says so in its own words
        return None
    if rows:
        return None
    return (f"{path}: holds no examples (0 rows), so there is nothing to review; rerun `audit run --out {run}` "
            "to audit a dataset")


# -- the run's own files ------------------------------------------------------------------------------
def file_problem(path: Path) -> str | None:
    """Why the app will not read ``path`` from a run directory, or None (a regular file, or nothing there).

    A run directory is input (DESIGN.md, "Trust boundaries"): a symbolic link could show any file on this
    machine, and a device or pipe could block the server, so only regular files are read. The notice
    names the file (plain text: show it through :func:`app.ui.md`)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path.name}: cannot be read ({e.strerror or type(e).__name__}); not shown"
    if stat.S_ISLNK(mode):
        return (f"{path.name}: a symbolic link; the app reads only the run directory's own regular files, "
                "so it is not read")
    if not stat.S_ISREG(mode):
        return f"{path.name}: not a regular file (a folder, device or pipe); not read"
    return None


def read_run_file(path: Path, max_bytes: int = 20 * 2**20) -> bytes | None:
    """The bytes of a run directory's own file ``path``; None when it is not there. A link, anything but a
    regular file, or a file over ``max_bytes`` is an :class:`audit.errors.AuditInputError` naming it
    (opened without following links, then checked on the open file, so nothing swaps in between)."""
    from audit.errors import AuditInputError

    problem = file_problem(path)
    if problem:
        raise AuditInputError(problem)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuditInputError(f"{path.name}: cannot be read ({e.strerror or type(e).__name__}); not shown") from None
    with os.fdopen(fd, "rb") as f:
        st_ = os.fstat(f.fileno())
        if not stat.S_ISREG(st_.st_mode):
            raise AuditInputError(f"{path.name}: not a regular file; not read")
        if st_.st_size > max_bytes:
            raise AuditInputError(f"{path.name}: larger than {max_bytes // 2**20} MiB; not a file benign-audit "
                                  "wrote, not read")
        return f.read(max_bytes + 1)[:max_bytes]


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


# Optional columns the pages read as numbers: one holding text is shown as missing, and said so, rather than
# failing a page (the required ones are checked by RunDir).
NUMERIC_OPTIONAL = ("evidence_confidence", "label_quality", "memorization", "self_influence")
NUMERIC_OPTIONAL_PREFIXES = ("loss_", "aum_", "first_learned_", "forgetting_", "margin_")
TEXT_OPTIONAL = ("category", "category_reason", "signals_fired")


@st.cache_resource(show_spinner="Loading examples…", max_entries=4)
def _examples_checked(path: str, mtime: float) -> tuple[pd.DataFrame, tuple[str, ...]]:
    run = Path(path).parent
    df = _open(run).examples()
    df.index = pd.RangeIndex(len(df))
    df["example_id"] = df["example_id"].astype(str)
    problems = []
    for col in list(df.columns):
        name = str(col)
        numeric = name in NUMERIC_OPTIONAL or name.startswith(NUMERIC_OPTIONAL_PREFIXES)
        if numeric and (not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
            problems.append(f"examples.parquet: column {name[:60]} does not hold numbers; shown as missing")
        elif name in TEXT_OPTIONAL and df[col].map(lambda x: not isinstance(x, str) and x is not None).any():
            df[col] = df[col].map(lambda x: "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x))
            problems.append(f"examples.parquet: column {name[:60]} does not hold text; shown as text")
    return df, tuple(problems)


def _examples(path: str, mtime: float) -> pd.DataFrame:
    return _examples_checked(path, mtime)[0]


def examples_problems(run: Path) -> tuple[str, ...]:
    """What was wrong with ``examples.parquet``'s optional columns (each a plain-text line naming the file)."""
    p = run / "examples.parquet"
    return _examples_checked(str(p), _mtime(p))[1]


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


PAIR_NUMBERS = ("similarity", "influence", "fz_influence")


@dataclass(frozen=True)
class Pairs:
    """``pairs.parquet`` as the Pairs page can show it, and what was wrong with it (plain-text lines that
    name the file)."""

    table: pd.DataFrame
    problems: tuple[str, ...] = ()


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({"test_id": pd.Series(dtype=str), "train_id": pd.Series(dtype=str),
                         "rank": pd.Series(dtype="int64"), "similarity": pd.Series(dtype=float),
                         "influence": pd.Series(dtype=float), "reason": pd.Series(dtype=str)})


@st.cache_resource(show_spinner=False, max_entries=4)
def _pairs(path: str, mtime: float, examples_mtime: float) -> Pairs:
    """The pairs checked against this run's examples: rows naming an example the run does not have, or
    without a usable rank, are left out; numbers stored as text read as missing; ``reason`` and
    ``fz_influence`` (older runs lack them) filled in. A table RunDir refuses: none, and its message."""
    from audit.errors import AuditInputError

    problem = file_problem(Path(path))
    if problem:
        return Pairs(_empty_pairs(), (f"{problem}; no pairs shown",))
    if not mtime:
        return Pairs(_empty_pairs())
    run = Path(path).parent
    try:
        p = _open(run).pairs().copy()
    except AuditInputError as e:
        return Pairs(_empty_pairs(), (f"{e}; no pairs shown",))
    problems = []
    if not len(p):
        return Pairs(_empty_pairs())
    for col in ("test_id", "train_id"):
        p[col] = p[col].astype(str)
    for col in ("rank", *PAIR_NUMBERS):
        if col not in p.columns:
            p[col] = np.nan
            if col != "fz_influence":
                problems.append(f"pairs.parquet: no {col} column; shown as missing")
            continue
        v = pd.to_numeric(p[col], errors="coerce").astype(float)
        if (v.isna() & p[col].notna()).any() or not pd.api.types.is_numeric_dtype(p[col]):
            problems.append(f"pairs.parquet: column {col} does not hold numbers"
                            + ("; those pairs are left out" if col == "rank" else "; shown as missing"))
        p[col] = v
    bad_rank = ~np.isfinite(p["rank"].to_numpy(float))
    if bad_rank.any():
        p = p[~bad_rank]
    p["rank"] = p["rank"].astype("int64")
    if "reason" not in p.columns:
        p["reason"] = ""
    p["reason"] = p["reason"].map(lambda x: x if isinstance(x, str) else "")
    known = pd.Index(_examples(str(run / "examples.parquet"), examples_mtime)["example_id"])
    for col in ("test_id", "train_id"):
        unknown = ~p[col].isin(known)
        if unknown.any():
            first = str(p.loc[unknown, col].iloc[0])[:60]
            problems.append(f"pairs.parquet: {int(unknown.sum()):,} pair(s) name a {col} that is not an example of "
                            f"this run (e.g. {first!r}); they are left out")
            p = p[~unknown]
    return Pairs(p.reset_index(drop=True), tuple(problems))


def pairs_checked(run: Path) -> Pairs:
    """``pairs.parquet`` and its problems, loaded once per version of it and of the examples (shared)."""
    p = run / "pairs.parquet"
    return _pairs(str(p), _mtime(p), _mtime(run / "examples.parquet"))


def pairs(run: Path) -> pd.DataFrame:
    """The usable pairs (:func:`pairs_checked`; shared, read-only)."""
    return pairs_checked(run).table


@dataclass(frozen=True)
class Dynamics:
    """Per-epoch margins of every training example under every model (``dynamics.npz``)."""

    margins: dict[str, np.ndarray]  # model -> (epochs, N_train) float16
    column: pd.Index  # example_id -> column
    problems: tuple[str, ...] = ()  # what was left out and why (plain text naming the file)

    def curves(self, example_id: str) -> pd.DataFrame:
        """Long table ``model, epoch, margin`` for one example (empty if it has none)."""
        j = self.column.get_indexer([example_id])[0] if len(self.column) else -1
        if j < 0 or not self.margins:
            return pd.DataFrame(columns=["model", "epoch", "margin"])
        parts = [pd.DataFrame({"model": m, "epoch": np.arange(1, len(a) + 1), "margin": a[:, j].astype(np.float32)})
                 for m, a in self.margins.items()]
        return pd.concat(parts, ignore_index=True)


def _checked_margins(z, ids: pd.Index) -> tuple[dict[str, np.ndarray], list[str]]:
    """The margin arrays of the models ``z`` names that are epochs × examples numbers; the others, said."""
    out, problems = {}, []
    models = z["models"] if "models" in z.files else np.array([])
    if models.ndim != 1 or models.dtype.kind not in "US":
        return {}, ["dynamics.npz: models is not a list of model names; training curves not shown"]
    for m in (str(x) for x in models):
        key = f"margin_{m}"
        if key not in z.files:
            continue
        a = z[key]
        if a.ndim != 2 or a.dtype.kind not in "fiu" or a.shape[1] != len(ids) or a.shape[0] > 100_000:
            problems.append(f"dynamics.npz: {key[:70]} has shape {a.shape} and type {a.dtype}, not epochs × "
                            f"{len(ids):,} numbers; its training curves are not shown")
            continue
        out[m] = a
    return out, problems


@st.cache_resource(show_spinner=False, max_entries=4)
def _dynamics(path: str, mtime: float) -> Dynamics | None:
    if not mtime and not os.path.lexists(path):
        return None
    problem = file_problem(Path(path))
    if problem:
        return Dynamics({}, pd.Index([]), (f"{problem}; training curves not shown",))
    try:
        with np.load(path, allow_pickle=False) as z:  # margins only: the largest arrays are read once
            if "example_ids" not in z.files:
                return Dynamics({}, pd.Index([]), ("dynamics.npz: no example_ids; training curves not shown",))
            raw = z["example_ids"]
            if raw.ndim != 1 or raw.dtype.kind not in "US":
                return Dynamics({}, pd.Index([]), (f"dynamics.npz: example_ids has shape {raw.shape} and type "
                                                   f"{raw.dtype}, not a list of ids; training curves not shown",))
            ids = pd.Index(raw.astype(str))
            margins, problems = _checked_margins(z, ids)
            return Dynamics(margins, ids, tuple(problems))
    except Exception as e:  # noqa: BLE001 - zip, npy and pickle-refusal errors alike: the page says so
        return Dynamics({}, pd.Index([]), (f"dynamics.npz: cannot be read ({type(e).__name__}); training curves "
                                           "not shown",))


def dynamics(run: Path) -> Dynamics | None:
    p = run / "dynamics.npz"
    return _dynamics(str(p), _mtime(p))


def _decisions_key(run: Path) -> tuple[str, int, float]:
    """What the decisions in effect depend on: the log's version and the examples they are bound to."""
    from audit.decisions import DecisionStore

    return str(run), DecisionStore(run).version(), _mtime(run / "examples.parquet")


@st.cache_resource(show_spinner=False, max_entries=16)
def _latest_decisions(run: str, version: int, examples_mtime: float) -> pd.DataFrame:
    from audit.decisions import DecisionStore

    out = DecisionStore(run).latest().copy()
    out["example_id"] = out["example_id"].astype(str)
    return out


def latest_decisions(run: Path) -> pd.DataFrame:
    """The effective decision per example, those made about another label or image than the run shows
    left out (:func:`stale_decisions`); cached until anyone writes a new row or the examples change
    (shared, read-only)."""
    return _latest_decisions(*_decisions_key(run))


@st.cache_resource(show_spinner=False, max_entries=16)
def _stale_decisions(run: str, version: int, examples_mtime: float) -> pd.DataFrame:
    from audit.decisions import DecisionStore

    store = DecisionStore(run)
    stale = getattr(store, "stale", None)
    if stale is None:  # a store without binding: nothing is stale
        return pd.DataFrame(columns=["example_id", "decision", "new_label", "reviewer", "decided_at", "seq",
                                     "given_label", "content", "stale_reason"])
    out = stale().copy()
    out["example_id"] = out["example_id"].astype(str)
    return out


def stale_decisions(run: Path) -> pd.DataFrame:
    """Decisions in the log that are not applied because the run now shows another label or image for
    the example, or no longer has it (:meth:`audit.decisions.DecisionStore.stale`: ``stale_reason``);
    cached like :func:`latest_decisions` (shared, read-only)."""
    return _stale_decisions(*_decisions_key(run))


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


def decoded_source(im):
    """A source file's picture decoded as the dataset loader decodes it (:func:`audit.data.images._mode_array`):
    grey or RGB 8-bit, a 16-bit grey image scaled to 0–255 (``convert`` would clip it to white), a palette or
    alpha image as its grey or RGB pixels."""
    from PIL import Image

    from audit.data.images import _mode_array

    return Image.fromarray(np.ascontiguousarray(_mode_array(im)))


@st.cache_data(show_spinner=False, max_entries=512)
def _file_png(path: str, mtime: float, side: int) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return _resized_png(decoded_source(im), side)
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
