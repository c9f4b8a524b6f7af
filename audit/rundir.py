"""One reader for a run directory (``audit run --out DIR``), used by ``report``, ``export``, the app and
:func:`audit.load_model`.

A run directory is **untrusted input**: someone may have sent it, or edited it. So:

* ``manifest.json`` is checked against a schema (types and bounds) before anything uses it; a
  non-JSON or wrong-typed manifest is an :class:`AuditInputError` naming the file and the field.
* The run's own files must be regular files, not symbolic links (a link could point anywhere).
* The manifest's ``dataset.spec`` must be a known spec form (:func:`check_spec`): a known source, an
  absolute path with the source's suffix, no ``..``, and a folder neither ``/`` nor one holding the
  home directory or the run itself. Nothing in a manifest can trigger a download (``download`` is
  never passed on) or widen what may be read.
* Before any image is read, the dataset the manifest names is loaded and its fingerprint compared
  with ``dataset.source_fingerprint``, recorded by the pipeline before injected noise
  (:meth:`RunDir.dataset`). A mismatch, an unloadable dataset or a run that recorded no fingerprint
  means no images: :class:`DatasetUnverified` (exit 2) saying why, naming the spec and both
  fingerprints. The dataset is then returned *as audited*: the given labels are the stored ones
  from ``examples.parquet`` (never noise re-injected), the clean labels too when the tool injected noise.
* Checkpoints load with ``torch.load(weights_only=True)``; an unreadable one is "corrupt or not written
  by benign-audit", never a hint to turn that protection off.
* Outputs of ``export`` and ``report`` may not be files the run owns (:meth:`RunDir.check_output`):
  its tables, ``manifest.json``, ``dynamics.npz``, ``verify.json``/``.png``, the decision log, hidden
  files, anything under ``checkpoints/`` or ``.cache/``, by name, through a link or as the same inode.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.config import NONE_WHEN_RESOLVED, OPTIONS, config_from_dict
from audit.data.limits import MAX_CLASSES
from audit.data.registry import SOURCES
from audit.errors import AuditInputError

MANIFEST = "manifest.json"
EXAMPLES = "examples.parquet"
PAIRS = "pairs.parquet"
DYNAMICS = "dynamics.npz"
DECISIONS_DB = "decisions.sqlite"
TABLES = (EXAMPLES, PAIRS)
OWNED_FILES = (MANIFEST, EXAMPLES, PAIRS, DYNAMICS, "verify.json", "verify.png", "error.txt")
OWNED_DIRS = ("checkpoints", ".cache")
FILE_SUFFIXES = {"npz": (".npz",), "csv": (".csv",), "parquet": (".parquet", ".pq")}
EXAMPLE_COLUMNS = ("example_id", "split", "given_label", "suggested_label", "issue_score", "is_label_issue")
PAIR_COLUMNS = ("test_id", "train_id", "rank", "similarity", "influence")
CATEGORIES = ("mislabelled", "atypical", "ambiguous", "ok")
# One schema per table (DESIGN.md, "Run directory"): the kind of every column the pipeline writes, by name
# or by pattern. A column of another kind (a flag stored as "yes"/"no", a score stored as text) is refused
# by name, so no reader ever acts on it.
_EXACT_KINDS = {"example_id": "str", "split": "split", "index": "int", "given_label": "label",
                "suggested_label": "label", "clean_label": "label", "issue_score": "float", "category": "category",
                "self_influence": "float", "memorization": "float", "label_quality": "float",
                "category_reason": "str", "signals_fired": "str", "path": "str",
                "test_id": "str", "train_id": "str", "rank": "int", "similarity": "float", "influence": "float",
                "fz_influence": "float", "fz_influence_se": "float", "reason": "str"}
_PREFIX_KINDS = (("is_", "bool"), ("adv_correct_", "bool"), ("correct_", "bool"), ("pred_", "label"),
                 ("loss_", "float"), ("margin_", "float"), ("aum_", "float"), ("memorization_", "float"))
_SUFFIX_KINDS = (("_score", "float"),)


def column_kind(name: str) -> str | None:
    """The kind a run's table column must have (``str``, ``int``, ``float``, ``bool``, ``label``,
    ``split``, ``category``), or None for a column without one."""
    if name in _EXACT_KINDS:
        return _EXACT_KINDS[name]
    for prefix, kind in _PREFIX_KINDS:
        if name.startswith(prefix):
            return kind
    for suffix, kind in _SUFFIX_KINDS:
        if name.endswith(suffix):
            return kind
    return None


def check_columns(df: pd.DataFrame, path: Path, num_classes: int) -> None:
    """Every column of ``df`` with a kind (:func:`column_kind`) holds that kind; else an
    :class:`AuditInputError` naming the file, the column and what it holds."""
    for col in df.columns:
        kind, v = column_kind(str(col)), df[col]
        if kind is None or v.empty:
            continue
        if kind == "bool":
            # adv_correct_M is empty (NA) on training rows; every other flag is set on every row
            ok = pd.api.types.is_bool_dtype(v) and (str(col).startswith("adv_correct_") or not v.isna().any())
            want = "true/false values"
        elif kind in ("int", "label"):
            ok = pd.api.types.is_integer_dtype(v) and not pd.api.types.is_bool_dtype(v)
            want = "integers"
            if ok and kind == "label" and (v.min() < 0 or v.max() >= num_classes):
                ok, want = False, f"integer classes in [0, {num_classes})"
        elif kind == "float":
            ok = pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)
            want = "numbers"
        elif kind == "split":
            ok, want = bool(v.isin(["train", "test"]).all()), "train/test"
        elif kind == "category":
            ok, want = bool(v.isin(CATEGORIES).all()), "one of " + "/".join(CATEGORIES)
        else:
            ok = v.map(lambda x: isinstance(x, str) or x is None).all()
            want = "text"
        if not ok:
            raise AuditInputError(f"{path}: column {str(col)[:60]} must hold {want} (it holds {v.dtype}); "
                                  "not a table benign-audit wrote")
MAX_SIDE = 65_536  # image height or width a manifest may declare


class DatasetUnverified(AuditInputError):
    """The dataset a run names cannot be shown: unknown spec form, missing, unloadable, no recorded
    fingerprint, or a fingerprint that differs. The message never quotes the loader (whose errors may
    quote the file the manifest points at), so it is safe to show anyone."""


# -- the manifest's schema ----------------------------------------------------------------------
def _schema():
    from pydantic import BaseModel, ConfigDict, Field, conlist

    class _Strict(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

    class Dataset(_Strict):
        spec: str = Field(max_length=4096)
        fingerprint: str = Field(max_length=64)
        source_fingerprint: str | None = Field(default=None, max_length=64)
        num_train: int = Field(ge=0)
        num_test: int = Field(ge=0)
        shape: conlist(int, min_length=3, max_length=3)  # type: ignore[valid-type]
        class_names: conlist(str, min_length=1, max_length=MAX_CLASSES)  # type: ignore[valid-type]

    class Manifest(_Strict):
        status: str
        config: dict
        dataset: Dataset
        metrics: dict[str, Any] = Field(default_factory=dict)

    return Manifest


def load_json_object(path: Path, max_bytes: int = 20 * 2**20) -> dict:
    """A JSON object from a run's own regular file of at most ``max_bytes``; else :class:`AuditInputError`."""
    _regular(path)
    if path.stat().st_size > max_bytes:
        raise AuditInputError(f"{path}: larger than {max_bytes // 2**20} MiB; not a file benign-audit wrote")
    try:
        obj = json.loads(path.read_bytes(), parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as e:
        raise AuditInputError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise AuditInputError(f"{path}: not what benign-audit writes (a JSON {type(obj).__name__}, expected an object)")
    return obj


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number benign-audit writes")


def _finite_float(text: str) -> float:
    x = float(text)
    if not np.isfinite(x):
        raise ValueError(f"{text[:30]} is out of range")
    return x


def read_manifest(path: Path, *, complete: bool = True) -> dict:
    """``manifest.json`` as a dict, checked: JSON, an object, ``status`` (``complete`` unless
    ``complete=False``); :func:`check_manifest` checks the fields."""
    man = load_json_object(path)
    if complete and man.get("status") != "complete":
        status = man.get("status")
        shown = repr(status) if isinstance(status, str) and len(status) < 40 else "missing or not a string"
        raise AuditInputError(f"{path}: run status is {shown}, not 'complete'; "
                              "rerun the same `audit run` command to finish it")
    return man


def check_manifest(man: dict, path: Path) -> dict:
    """The manifest's fields: ``config`` by the run options' own declaration (:func:`config_from_dict`:
    types, ranges, choices; every dataset default resolved), the rest by a schema."""
    from pydantic import ValidationError

    try:
        _schema().model_validate(man)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise AuditInputError(f"{path}: field {where}: {err['msg']} (not a manifest benign-audit wrote)") from None
    try:
        cfg = config_from_dict(man["config"])
    except AuditInputError as e:
        raise AuditInputError(f"{path}: field config: {e} (not a manifest benign-audit wrote)") from None
    unresolved = [k for k, f in OPTIONS.items() if getattr(cfg, k) is None and f.metadata["results"]
                  and k not in NONE_WHEN_RESOLVED and cfg.models]  # --models none resolves no recipe
    if unresolved:
        raise AuditInputError(f"{path}: field config.{unresolved[0]}: missing (not a manifest benign-audit wrote)")
    ds = man["dataset"]
    if len(ds["class_names"]) > max(2, ds["num_train"] + ds["num_test"]):
        raise AuditInputError(f"{path}: field dataset.class_names: {len(ds['class_names']):,} classes for "
                              f"{ds['num_train'] + ds['num_test']:,} images (not a manifest benign-audit wrote)")
    for k, v in man.get("metrics", {}).items():
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise AuditInputError(f"{path}: field metrics.{str(k)[:60]}: {type(v).__name__}, not a number "
                                  "(not a manifest benign-audit wrote)")
    models = man["config"].get("models")
    if isinstance(models, list) and not all(isinstance(m, str) for m in models):
        raise AuditInputError(f"{path}: field config.models: not a list of model names")
    c, h, w = man["dataset"]["shape"]
    if c not in (1, 3) or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise AuditInputError(f"{path}: field dataset.shape: {c}×{h}×{w} is not an image shape (C in 1, 3)")
    return man


# -- dataset specs ------------------------------------------------------------------------------
def check_spec(spec: str, run: Path) -> tuple[str, Path | None]:
    """(source, path) of a manifest's ``dataset.spec`` if it is a known spec form, else
    :class:`DatasetUnverified`. Nothing is read."""
    def refuse(why: str) -> DatasetUnverified:
        return DatasetUnverified(f"{run / MANIFEST}: dataset.spec {spec[:200]!r}: {why}; images are not read")

    if any(ord(ch) < 32 for ch in spec):
        raise refuse("holds control characters")
    source, sep, arg = spec.partition(":")
    if source not in SOURCES:
        raise refuse(f"unknown source {source[:40]!r} (known: {', '.join(sorted(SOURCES))})")
    if source == "digits":
        if sep:
            raise refuse("digits takes no path")
        return source, None
    p = Path(arg)
    if not p.is_absolute() or ".." in p.parts:
        raise refuse("a run records an absolute path without '..'")
    if source in FILE_SUFFIXES:
        if p.suffix.lower() not in FILE_SUFFIXES[source]:
            raise refuse(f"{source} specs name a {' or '.join(FILE_SUFFIXES[source])} file")
        return source, p
    real, run_real = p.resolve(), run.resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home directory in some containers
        home = Path(real.anchor)
    if real == Path(real.anchor) or home.is_relative_to(real) or run_real.is_relative_to(real):
        raise refuse("the folder is the file-system root or holds the home directory or the run itself")
    return source, p


def dataset_root(spec: str) -> Path | None:
    """The folder a dataset spec reads from (``folder:PATH`` -> PATH, ``csv:FILE`` -> its folder)."""
    source, sep, arg = spec.partition(":")
    if not sep or not arg:
        return None
    p = Path(arg).resolve()
    return p.parent if source in FILE_SUFFIXES else p


# -- the run directory --------------------------------------------------------------------------
def _regular(path: Path) -> Path:
    """``path`` if it is not a symbolic link (a run's own files are regular files)."""
    if path.is_symlink():
        raise AuditInputError(f"{path}: a symbolic link; a run directory's own files must be regular files")
    return path


class RunDir:
    """A run directory, opened read-only. ``complete=False`` also opens an unfinished run (for a
    checkpoint); otherwise the manifest must say ``complete`` and both tables must exist."""

    def __init__(self, path: str | os.PathLike, *, complete: bool = True):
        self.path = Path(path)
        man_path = self.path / MANIFEST
        if not man_path.is_file():
            raise AuditInputError(f"{self.path}: no {MANIFEST} (not a run directory; make one with `audit run`)")
        man = read_manifest(man_path, complete=complete)
        if complete:
            for name in TABLES:
                if not (self.path / name).is_file():
                    raise AuditInputError(f"{self.path / name}: missing (the run directory is incomplete)")
        self.manifest = check_manifest(man, man_path)
        self._dataset: Any = None

    # -- what the manifest says ----------------------------------------------------------------
    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["dataset"]["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["dataset"]["class_names"])

    @property
    def models(self) -> list[str]:
        return list(self.config["models"])

    @property
    def spec(self) -> str:
        return self.manifest["dataset"]["spec"]

    def file(self, name: str) -> Path:
        return _regular(self.path / name)

    # -- tables ----------------------------------------------------------------------------------
    def _parquet(self, name: str, required: tuple[str, ...], columns: list[str] | None) -> pd.DataFrame:
        path = self.file(name)
        if not path.is_file():
            raise AuditInputError(f"{path}: missing (the run directory is incomplete)")
        try:
            df = pd.read_parquet(path, columns=columns)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise AuditInputError(f"{path}: cannot read as Parquet ({type(e).__name__}: {str(e)[:200]})") from None
        missing = [c for c in required if (columns is None or c in columns) and c not in df.columns]
        if missing:
            raise AuditInputError(f"{path}: missing column(s) {', '.join(missing)} (not a table benign-audit wrote)")
        return df

    def examples(self, columns: list[str] | None = None) -> pd.DataFrame:
        """``examples.parquet`` (``columns`` only, if given), checked against the table's schema: the
        required columns (DESIGN.md's, and ``pred_M``/``correct_M`` of every model the manifest names),
        each column's kind (:func:`check_columns`), at least one row, unique string ids, train rows."""
        required = EXAMPLE_COLUMNS + ("index", "category", "self_influence", "memorization", "label_quality") + tuple(f"{k}_{m}" for m in self.models for k in ("pred", "correct"))
        df = self._parquet(EXAMPLES, required, columns)
        path = self.path / EXAMPLES
        if df.empty:
            raise AuditInputError(f"{path}: has no rows (an interrupted write? rerun `audit run`)")
        check_columns(df, path, self.num_classes)
        if "example_id" in df.columns and not df["example_id"].map(type).eq(str).all():
            raise AuditInputError(f"{path}: example_id holds non-string values")
        if "example_id" in df.columns and not df["example_id"].is_unique:
            raise AuditInputError(f"{path}: example_id is not unique")
        if "split" in df.columns and not (df["split"] == "train").any():
            raise AuditInputError(f"{path}: has no training rows")
        return df

    def pairs(self, examples: pd.DataFrame | None = None) -> pd.DataFrame:
        """``pairs.parquet``, checked: its columns and their kinds; ``reason`` and ``fz_influence`` (written
        since pairs had reasons) filled in when an older run lacks them. With ``examples``, a pair naming an
        example the run does not have is refused."""
        path = self.path / PAIRS
        df = self._parquet(PAIRS, PAIR_COLUMNS, None)
        check_columns(df, path, self.num_classes)
        if "reason" not in df.columns:
            df["reason"] = ""
        if "fz_influence" not in df.columns:
            df["fz_influence"] = np.nan
        if examples is not None and len(df):
            known = set(examples["example_id"])
            for col in ("test_id", "train_id"):
                bad = ~df[col].isin(known)
                if bad.any():
                    raise AuditInputError(f"{path}: {col} {str(df.loc[bad, col].iloc[0])[:60]!r} is not an example "
                                          "of this run")
        return df

    def dynamics(self) -> dict[str, np.ndarray]:
        """``dynamics.npz`` as plain arrays (no pickle), checked: ``example_ids`` text, and each
        ``margin_M``/``correct_M`` a 2-D (epochs × examples) numeric/bool array matching them; {} when the
        run has none."""
        path = self.file(DYNAMICS)
        if not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - zip, npy and pickle-refusal errors alike
            raise AuditInputError(f"{path}: cannot read as .npz ({type(e).__name__})") from None
        ids = out.get("example_ids")
        if ids is not None and (ids.ndim != 1 or ids.dtype.kind not in "US"):
            raise AuditInputError(f"{path}: example_ids is not a list of ids")
        n = None if ids is None else len(ids)
        for k, a in out.items():
            if k.startswith(("margin_", "correct_")):
                kind_ok = a.dtype.kind == "b" if k.startswith("correct_") else a.dtype.kind == "f"
                if a.ndim != 2 or not kind_ok or (n is not None and a.shape[1] != n):
                    raise AuditInputError(f"{path}: {k} has shape {a.shape} and type {a.dtype}; expected epochs × "
                                          f"{n if n is not None else 'examples'} "
                                          f"{'booleans' if k.startswith('correct_') else 'floats'}")
        return out

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, name: str, map_location: str = "cpu") -> dict:
        """The ``state_dict`` of model ``name``, loaded with ``torch.load(weights_only=True)``."""
        import torch

        has = (f"run has {', '.join(self.models)}" if self.models else
               "the run trained no models (--models none), so it has no checkpoints")
        if name not in self.models:
            raise AuditInputError(f"model {name!r}: not in this run ({has})")
        path = self.file(f"checkpoints/{name}.pt")
        _regular(path.parent)
        if not path.is_file():
            raise AuditInputError(f"{path}: no checkpoint for model {name!r} ({has})")
        try:
            with warnings.catch_warnings():  # torch's notes on odd pickle protocols: the file is refused anyway
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - every failure means the same thing to the user
            raise AuditInputError(f"{path}: corrupt or not written by benign-audit ({type(e).__name__})") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise AuditInputError(f"{path}: corrupt or not written by benign-audit (not a state_dict of tensors)")
        return state

    # -- review decisions ------------------------------------------------------------------------
    def decisions(self):
        """The run's :class:`audit.decisions.DecisionStore`, which checks labels against this run's classes."""
        from audit.decisions import DecisionStore

        return DecisionStore(self.path, num_classes=self.num_classes)

    def has_decisions(self) -> bool:
        return (self.path / DECISIONS_DB).exists()

    # -- the dataset -----------------------------------------------------------------------------
    def expected_fingerprint(self) -> str | None:
        """The fingerprint the dataset on disk must have: ``source_fingerprint``; for a run without
        injected noise that predates it, ``fingerprint`` is the same hash of the same data."""
        ds = self.manifest["dataset"]
        if ds.get("source_fingerprint"):
            return ds["source_fingerprint"]
        return ds["fingerprint"] if float(self.config["noise"]) == 0 else None

    def dataset(self):
        """The audited dataset, verified (module docstring) and cached; :class:`DatasetUnverified` if not."""
        if self._dataset is None:
            self._dataset = self._load_verified()
        return self._dataset

    def dataset_or_notice(self):
        """(dataset, None), or (None, a notice safe to show anyone) when it cannot be verified."""
        try:
            return self.dataset(), None
        except AuditInputError as e:
            return None, f"{e}"

    def _load_verified(self):
        from audit.data import load_dataset

        spec, man_path = self.spec, self.path / MANIFEST
        _, path = check_spec(spec, self.path)
        want = self.expected_fingerprint()
        if want is None:
            raise DatasetUnverified(f"{man_path}: records no dataset.source_fingerprint (a run from an older "
                                    "version), so the dataset cannot be verified; images are not read")
        if path is not None and not path.exists():
            raise DatasetUnverified(f"dataset {spec!r} named by {man_path}: {path} does not exist here; "
                                    "images are not read")
        try:
            ds = load_dataset(spec, download=False)
        except Exception as e:  # noqa: BLE001 - its message may quote the file, so only its type is shown
            raise DatasetUnverified(f"dataset {spec!r} named by {man_path} cannot be loaded as audited "
                                    f"({type(e).__name__}); images are not read") from None
        got = ds.fingerprint()
        if got != want:
            raise DatasetUnverified(f"dataset {spec!r} has fingerprint {got}, but {man_path} recorded {want} "
                                    "(not the data this run audited); images are not read")
        return self._as_audited(ds)

    def _as_audited(self, ds):
        """``ds`` with the stored given (and clean) labels of ``examples.parquet``."""
        cols = ["example_id", "split", "given_label"] + (["clean_label"] if "clean_label" in self._columns() else [])
        ex = self.examples(columns=cols)
        pos = pd.Index(np.asarray(ds.example_ids).astype(str)).get_indexer(ex["example_id"])
        if (pos < 0).any() or (np.asarray(ds.split)[pos] != ex["split"].to_numpy()).any():
            raise DatasetUnverified(f"{self.path / EXAMPLES}: example ids or splits differ from dataset "
                                    f"{self.spec!r}; images are not read")
        labels = np.asarray(ds.labels, dtype=np.int64).copy()
        labels[pos] = ex["given_label"].to_numpy(np.int64)
        clean = None
        if "clean_label" in ex.columns:
            clean = labels.copy()
            clean[pos] = ex["clean_label"].to_numpy(np.int64)
        size = self.config.get("image_size")
        if isinstance(size, int) and not isinstance(size, bool) and 4 <= size <= 4096:
            ds = ds.resized(size)  # the pixels the run trained on (--image-size)
        return ds.with_labels(labels, clean)

    def _columns(self) -> list[str]:
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.file(EXAMPLES)).names)

    # -- outputs ---------------------------------------------------------------------------------
    def owns(self, path: str | os.PathLike) -> str | None:
        """Which of the run's own files ``path`` would overwrite (by name, through links, or the same
        inode), or None."""
        p = Path(path)
        run_abs, run_real = Path(os.path.abspath(self.path)), self.path.resolve()
        candidates = {Path(os.path.abspath(p)), p.resolve(), p.parent.resolve() / p.name}
        for c in candidates:
            for root in (run_abs, run_real):
                if c.is_relative_to(root) and c != root:
                    rel = c.relative_to(root)
                    top = rel.parts[0]
                    if top in OWNED_DIRS or top.startswith(".") or (len(rel.parts) == 1 and _owned_name(top)):
                        return str(rel)
        if p.exists():
            st = p.stat()
            for own in self._owned_files():
                o = own.stat()
                if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
                    return str(own.relative_to(self.path))
        return None

    def _owned_files(self) -> list[Path]:
        files = [self.path / n for n in os.listdir(self.path) if _owned_name(n)]
        for d in OWNED_DIRS:
            if (self.path / d).is_dir() and not (self.path / d).is_symlink():
                files += [f for f in (self.path / d).rglob("*") if f.is_file()]
        return [f for f in files if f.is_file()]

    def check_output(self, path: str | os.PathLike, option: str) -> Path:
        """``path`` if a command may write it: not a directory, not a device, pipe or socket (a rename
        would replace it with a regular file), not one of the run's own files."""
        p = Path(path)
        if p.is_dir():
            raise AuditInputError(f"{option} {p}: is a directory; name the file to write")
        if (p.exists() or p.is_symlink()) and not p.is_file():
            raise AuditInputError(f"{option} {p}: exists and is not a regular file (a device, pipe, socket or "
                                  "dangling link); write to a new file")
        owned = self.owns(p)
        if owned is not None:
            raise AuditInputError(f"{option} {p}: would overwrite the run's own {owned}; write it elsewhere")
        return p


def is_run_manifest(path: Path) -> bool:
    """Whether ``path`` is a manifest benign-audit wrote (any status): a JSON object with ``tool``."""
    try:
        obj = json.loads(path.read_bytes()[: 50 * 2**20])
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and obj.get("tool") == "benign-audit"


def check_out_dir(out: str | os.PathLike, spec: str | None = None) -> Path:
    """``out`` if ``audit run --out`` may write there: a new or empty folder, or an earlier run's (to
    resume it); not a file, not a folder holding other things, not inside the dataset's own folder (its
    files would change the dataset's fingerprint and be audited next time)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AuditInputError(f"--out {out}: exists and is not a folder")
    # an image folder is rescanned on every load: a run inside it (its verify.png, an export) would join it
    root = dataset_root(spec) if spec and spec.startswith("folder:") else None
    if root is not None and root.is_dir():
        o = out.resolve()
        if o == root or o.is_relative_to(root):
            raise AuditInputError(f"--out {out}: inside the dataset's folder {root} (its files would become part "
                                  "of the dataset); write the run elsewhere")
    if out.is_dir():
        try:
            names = [n for n in os.listdir(out) if not n.startswith(".audit.lock")]  # a writer's lock: its own error
        except OSError as e:
            raise AuditInputError(f"--out {out}: cannot be read ({e.strerror or e})") from None
        if names and not is_run_manifest(out / MANIFEST):
            shown = ", ".join(sorted(names)[:3]) + (", …" if len(names) > 3 else "")
            raise AuditInputError(f"--out {out}: an existing folder that is not a benign-audit run (it holds "
                                  f"{len(names)} entries: {shown}); choose a new or empty folder")
    return out


def _owned_name(name: str) -> bool:
    """A run's own top-level file: its tables and records, the decision log, hidden files (temporary
    names, locks)."""
    return name in OWNED_FILES or name.startswith((DECISIONS_DB, "."))
