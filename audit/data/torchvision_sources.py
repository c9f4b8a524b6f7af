"""``mnist:ROOT``, ``fashion-mnist:ROOT``, ``cifar10:ROOT``, ``cifar100:ROOT``: torchvision's on-disk formats.

``ROOT`` is what was passed to torchvision as ``root=``; the files are read where torchvision puts them:

* MNIST / Fashion-MNIST: the idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or their
  ``.gz``) in ``ROOT/MNIST/raw`` (``ROOT/FashionMNIST/raw``), or in ``ROOT/raw`` or ``ROOT`` itself.
* CIFAR-10 / CIFAR-100: the python batches in ``ROOT/cifar-10-batches-py`` (``ROOT/cifar-100-python``)
  or ``ROOT`` itself. They are pickles; they are read with an unpickler that only rebuilds numpy arrays,
  lists, dicts and strings, so a tampered file cannot run code, after every length the pickle declares
  has been checked against the file's size, so a tampered file cannot make it allocate more either.

Sizes declared in idx headers are checked against the file's size (plain files) or read in chunks
(``.gz``), never allocated up front.

The files are parsed here (no torch import, no checksum requirement), so a copy made by any tool works.
Nothing is downloaded unless ``--download`` is given, which hands the download to torchvision's dataset
class. torchvision's train / test files map to the ``train`` / ``test`` split, ``index`` is torchvision's
index within its split, and ids look like ``mnist-train-00000`` and ``cifar10-test-09999``.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np

from audit.data.base import TEST, TRAIN, AuditDataset
from audit.data.checks import Problems, check_class_list
from audit.data.limits import MAX_PICKLE_BYTES
from audit.data.registry import LoadOptions, register
from audit.errors import AuditInputError, describe_error

MNIST_CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                 "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _ids(name: str, split: str, n: int) -> list[str]:
    return [f"{name}-{split}-{i:05d}" for i in range(n)]


def _rows(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")


# -- MNIST-style idx files ---------------------------------------------------------------------------
def _read_exactly(f, n: int, chunk: int = 1 << 24) -> bytes:
    """Up to ``n`` bytes from ``f`` in chunks, so a header declaring more than the file holds costs only
    what the file holds."""
    parts, got = [], 0
    while got < n:
        block = f.read(min(chunk, n - got))
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (plain or ``.gz``) into an array of its declared type and shape.

    Raises ``ValueError`` with what was expected and found when the header or the length is wrong.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
            raise ValueError(f"not an idx file (magic bytes {head.hex() or 'missing'}, expected 0000 08 0N)")
        dtype, ndim = IDX_DTYPES[head[2]], head[3]
        raw_dims = f.read(4 * ndim)
        if len(raw_dims) < 4 * ndim:
            raise ValueError(f"header truncated: {ndim} dimensions declared, file ends after {4 + len(raw_dims)} bytes")
        dims = struct.unpack(f">{ndim}I", raw_dims)
        expected = math.prod(dims) * dtype.itemsize
        shape = "×".join(map(str, dims))
        if opener is open and expected > path.stat().st_size - 4 - 4 * ndim:
            raise ValueError(f"truncated: header says {shape} values ({expected} bytes), "
                             f"file holds {path.stat().st_size - 4 - 4 * ndim}")
        buf = _read_exactly(f, expected)
        if len(buf) < expected:
            raise ValueError(f"truncated: header says {shape} values ({expected} bytes), file holds {len(buf)}")
        if f.read(1):
            raise ValueError(f"longer than its header says ({shape} values)")
    return np.frombuffer(buf, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _find_idx(raw_dirs: list[Path], stem: str) -> Path | None:
    for d in raw_dirs:
        for p in (d / stem, d / f"{stem}.gz"):
            if p.is_file():
                return p
    return None


def _load_mnist_like(arg: str, spec: str, opts: LoadOptions, *, name: str, tv_class: str,
                     classes: tuple[str, ...]) -> AuditDataset:
    root = Path(arg)
    raw_dirs = [root / tv_class / "raw", root / "raw", root]
    stems = {TRAIN: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             TEST: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    if opts.download and any(_find_idx(raw_dirs, s) is None for pair in stems.values() for s in pair):
        import torchvision.datasets as tvd

        for train in (True, False):
            getattr(tvd, tv_class)(str(root), train=train, download=True)
    found = {s: _find_idx(raw_dirs, s) for pair in stems.values() for s in pair}
    if not any(found.values()):
        raise AuditInputError(f"{spec}: no {tv_class} idx files in {raw_dirs[0]}, {raw_dirs[1]} or {root} "
                              f"(expected train-images-idx3-ubyte[.gz] etc.; pass --download to fetch them)")
    problems = Problems(spec)
    missing = [s for s, p in found.items() if p is None]
    if missing:
        problems.add(f"missing {', '.join(missing)} (looked in {raw_dirs[0]}, {raw_dirs[1]}, {root}; "
                     "pass --download to fetch them)")
    parts = {}
    for split, (img_stem, lab_stem) in stems.items():
        arrays = []
        for stem, want_ndim in ((img_stem, 3), (lab_stem, 1)):
            path = found[stem]
            if path is None:
                continue
            try:
                a = read_idx(path)
            except (OSError, EOFError, ValueError) as e:  # EOFError / BadGzipFile: a broken .gz
                problems.add(f"{path}: {e}")
                continue
            except Exception as e:  # zlib.error and whatever else a corrupt .gz raises
                problems.add(f"{path}: cannot read ({describe_error(e)})")
                continue
            if a.ndim != want_ndim or a.dtype != np.uint8:
                problems.add(f"{path}: expected {'N×H×W' if want_ndim == 3 else 'N'} uint8, "
                             f"found {'×'.join(map(str, a.shape))} {a.dtype}")
                continue
            arrays.append(a)
        if len(arrays) != 2:
            continue
        images, labels = arrays
        if len(images) != len(labels):
            problems.add(f"{found[img_stem]} holds {len(images)} images but {found[lab_stem]} "
                         f"holds {len(labels)} labels")
            continue
        bad = np.flatnonzero(labels >= len(classes))
        if len(bad):
            problems.add(f"{found[lab_stem]}: label {labels[bad[0]]} out of range [0, {len(classes)}) "
                         f"at index {_rows(bad)}")
            continue
        parts[split] = (images, labels)
    if len(parts) == 2 and parts[TRAIN][0].shape[1:] != parts[TEST][0].shape[1:]:
        problems.add(f"train images are {parts[TRAIN][0].shape[1:]} but test images are {parts[TEST][0].shape[1:]}")
    problems.raise_if_any()
    return _assemble(name, spec, classes, [(s, *parts[s]) for s in (TRAIN, TEST)], channel_axis=False)


def _assemble(name: str, spec: str, classes: tuple[str, ...], parts: list[tuple[str, np.ndarray, np.ndarray]],
              *, channel_axis: bool) -> AuditDataset:
    images = np.concatenate([im if channel_axis else im[:, None] for _, im, _ in parts])
    labels = np.concatenate([lab for _, _, lab in parts]).astype(np.int64)
    split = np.concatenate([np.full(len(lab), s) for s, _, lab in parts]).astype(str)
    ids = np.array([i for s, _, lab in parts for i in _ids(name, s, len(lab))])
    index = np.concatenate([np.arange(len(lab), dtype=np.int64) for _, _, lab in parts])
    return AuditDataset(images=images, labels=labels, split=split, example_ids=ids, index=index,
                        class_names=classes, name=name, spec=spec)


@register("mnist")
def load_mnist(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """MNIST in torchvision's layout (``ROOT/MNIST/raw``): 60,000 train and 10,000 test 28×28 digits."""
    return _load_mnist_like(arg, spec, opts, name="mnist", tv_class="MNIST", classes=MNIST_CLASSES)


@register("fashion-mnist")
def load_fashion_mnist(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """Fashion-MNIST in torchvision's layout (``ROOT/FashionMNIST/raw``)."""
    return _load_mnist_like(arg, spec, opts, name="fashion-mnist", tv_class="FashionMNIST", classes=FASHION_CLASSES)


# -- CIFAR python batches ----------------------------------------------------------------------------
class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and builtin containers only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # numpy 2 moved numpy.core; py2-era files name it
        return super().find_class(module, name)


def _check_pickle_lengths(data: bytes) -> None:
    """Walk the pickle's opcodes without building anything: every declared length must fit in ``data``
    (the unpickler allocates a declared string or bytes length before reading it)."""
    try:
        for _ in pickletools.genops(io.BytesIO(data)):  # reads at most what is there
            pass
    except ValueError as e:  # a length beyond the end, an unknown opcode, no STOP
        raise ValueError(f"not a complete pickle ({e})") from None


def read_cifar_pickle(path: Path) -> dict:
    """One CIFAR python batch or meta file as a dict with ``str`` keys (as torchvision reads it: latin1)."""
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise ValueError(f"{size:,} bytes, more than {MAX_PICKLE_BYTES:,} (a CIFAR batch is about 30 MB)")
    data = path.read_bytes()
    _check_pickle_lengths(data)
    obj = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", tv_class="CIFAR10",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", meta_key="label_names", label_key="labels"),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", tv_class="CIFAR100",
                     train=["train"], test=["test"], meta="meta", meta_key="fine_label_names", label_key="fine_labels"),
}


def _find_cifar(root: Path, c: dict, spec: str, opts: LoadOptions) -> Path:
    """The folder holding the CIFAR files (downloading them only with ``--download``)."""
    dirs = [root / c["folder"], root]
    base = next((d for d in dirs if (d / c["meta"]).is_file()), None)
    if base is None and opts.download:
        import torchvision.datasets as tvd

        for train in (True, False):
            getattr(tvd, c["tv_class"])(str(root), train=train, download=True)
        base = next((d for d in dirs if (d / c["meta"]).is_file()), None)
    if base is None:
        hint = (f"{root / c['archive']} is there but not extracted: extract it, or pass --download"
                if (root / c["archive"]).is_file() else "pass --download to fetch it")
        raise AuditInputError(f"{spec}: no {c['folder']}/{c['meta']} under {root} ({hint})")
    return base


def _cifar_classes(path: Path, key: str, problems: Problems) -> tuple[str, ...]:
    try:
        meta = read_cifar_pickle(path)
    except Exception as e:  # OSError, EOFError, ValueError, UnpicklingError, ...
        problems.add(f"{path}: cannot read ({describe_error(e)})")
        return ()
    if key not in meta:
        problems.add(f"{path}: no {key!r} entry")
        return ()
    return tuple(check_class_list(meta[key], f"{path}: {key!r}", problems) or ())


def _cifar_batch(path: Path, label_key: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """images (N, 3, 32, 32) and labels (N,) of one batch; ``ValueError`` naming what is wrong."""
    batch = read_cifar_pickle(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise ValueError(f"no {missing[0]!r} entry")
    data, lab = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"'data' must be uint8 N×3072 (3×32×32), found {found}")
    if isinstance(lab, list) and not all(type(v) is int for v in lab):  # nested lists could expand enormously
        raise ValueError(f"{label_key!r} must be a list of integers")
    lab = np.asarray(lab) if isinstance(lab, (list, np.ndarray)) else np.zeros((0, 0))
    if lab.ndim != 1 or len(lab) != len(data) or (len(lab) and not np.issubdtype(lab.dtype, np.integer)):
        raise ValueError(f"{len(data)} images but {label_key!r} holds {lab.shape} {lab.dtype}")
    bad = np.flatnonzero((lab < 0) | (lab >= max(len(classes), 1)))
    if classes and len(bad):
        raise ValueError(f"label {lab[bad[0]]} out of range [0, {len(classes)}) at row {_rows(bad)}")
    return data.reshape(-1, 3, 32, 32), lab.astype(np.int64)


def _load_cifar(arg: str, spec: str, opts: LoadOptions, name: str) -> AuditDataset:
    c = CIFAR[name]
    base = _find_cifar(Path(arg), c, spec, opts)
    problems = Problems(spec)
    classes = _cifar_classes(base / c["meta"], c["meta_key"], problems)
    parts = []
    for split in (TRAIN, TEST):
        images, labels = [], []
        for fname in c[split]:
            path = base / fname
            if not path.is_file():
                problems.add(f"{path}: no such file")
                continue
            try:
                im, lab = _cifar_batch(path, c["label_key"], classes)
            except ValueError as e:
                problems.add(f"{path}: {e}")
                continue
            except Exception as e:  # OSError, EOFError, UnpicklingError, OverflowError, ...
                problems.add(f"{path}: cannot read ({describe_error(e)})")
                continue
            images.append(im)
            labels.append(lab)
        if images and len(images) == len(c[split]):
            parts.append((split, np.concatenate(images), np.concatenate(labels)))
    problems.raise_if_any()
    return _assemble(name, spec, classes, parts, channel_axis=True)


@register("cifar10")
def load_cifar10(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """CIFAR-10 python batches in torchvision's layout (``ROOT/cifar-10-batches-py``): 50,000 + 10,000 32×32 RGB."""
    return _load_cifar(arg, spec, opts, "cifar10")


@register("cifar100")
def load_cifar100(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """CIFAR-100 (fine labels) in torchvision's layout (``ROOT/cifar-100-python``)."""
    return _load_cifar(arg, spec, opts, "cifar100")
