"""Hostile and degenerate datasets: every one ends in exit 2 naming the culprit, never a traceback,
never an allocation the input's size does not justify; folder walks do not follow links to folders.

The table ``CASES`` writes one bad dataset per case and runs ``audit validate --dataset SPEC`` in process;
the fuzz tests at the end throw random npz files, manifests and image bytes at ``load_dataset``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.cli import main as cli
from audit.data import load_dataset
from audit.data.limits import MAX_CLASSES, MAX_IMAGE_PIXELS
from audit.errors import AuditInputError


# -- writers -----------------------------------------------------------------------------------------
def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def png_bytes(seed: int = 0, size: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def classes_of_pngs(root: Path, classes=("a", "b"), per_class: int = 6) -> list[str]:
    """Grey 6×6 PNGs ``root/<class>/<i>.png``; returns their paths relative to ``root``."""
    rels = []
    for k, c in enumerate(classes):
        for i in range(per_class):
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / f"{i}.png").write_bytes(png_bytes(100 * k + i))
            rels.append(f"{c}/{i}.png")
    return rels


def big_png(path: Path, w: int, h: int) -> Path:
    """A real, valid w×h grey PNG of zeros, compressed row by row (12000×12000 is about 140 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp, row, parts = zlib.compressobj(9), b"\0" * (w + 1), []
    for _ in range(h):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def npz(path: Path, n: int = 12, **arrays) -> str:
    """An npz of ``n`` 4×4 images and labels 0/1 alternating, with ``arrays`` replacing or adding members."""
    rng = np.random.default_rng(0)
    members = {"images": rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), "labels": np.arange(n) % 2}
    members.update(arrays)
    np.savez(path, **members)
    return f"npz:{path}"


def csv_manifest(root: Path, labels: list, extra: str = "", rels: list[str] | None = None) -> str:
    """``root/m.csv`` listing PNGs under ``root`` with ``labels``; ``extra`` is appended verbatim."""
    rels = rels or classes_of_pngs(root, per_class=len(labels) // 2 + 1)[: len(labels)]
    lines = ["path,label"] + [f"{r},{lab}" for r, lab in zip(rels, labels)]
    (root / "m.csv").write_text("\n".join(lines) + "\n" + extra)
    return f"csv:{root / 'm.csv'}"


def parquet_manifest(root: Path, metadata: dict[str, str]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rels = classes_of_pngs(root, per_class=3)
    table = pa.table({"path": rels, "label": [0, 0, 0, 1, 1, 1]})
    pq.write_table(table.replace_schema_metadata(metadata), root / "m.parquet")
    return f"parquet:{root / 'm.parquet'}"


def cifar10(root: Path, replace: dict[str, bytes] | None = None) -> str:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    rng = np.random.default_rng(0)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / fname, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 1, 2]}, f, protocol=2)
    for fname, data in (replace or {}).items():
        (base / fname).write_bytes(data)
    return f"cifar10:{root}"


def idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def mnist(root: Path, train_images: bytes) -> str:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_header(4, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_header(4) + bytes([0, 1, 0, 1]))
    (raw / "train-images-idx3-ubyte").write_bytes(train_images)
    return f"mnist:{root}"


def nested_list_bomb(depth: int = 6, width: int = 1000) -> bytes:
    """A ~30 KB pickle of lists sharing one list ``width`` times at every level: width**depth leaves."""
    x: list = list(range(width))
    for _ in range(depth - 1):
        x = [x] * width
    return pickle.dumps(x, protocol=2)


def zip_with_member_size(path: Path, member: str, declared: int) -> None:
    """Rewrite the central directory of ``path`` so ``member`` declares ``declared`` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len].decode() == member:
            struct.pack_into("<I", data, at + 24, declared)
            break
        at = data.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", data, info.header_offset + 22, declared)
    path.write_bytes(bytes(data))


# -- the cases: (id, writer(tmp_path) -> spec or (spec, extra CLI args), words the message must hold) --
def _folder_link_outside(t: Path) -> str:
    classes_of_pngs(t / "d")
    save_png(t / "secret.png", np.zeros((6, 6), np.uint8))
    os.symlink(t / "secret.png", t / "d" / "a" / "evil.png")
    return f"folder:{t / 'd'}"


def _folder_with(t: Path, name: str, data: bytes) -> str:
    classes_of_pngs(t / "d")
    (t / "d" / "b" / name).write_bytes(data)
    return f"folder:{t / 'd'}"


def _folder_bad_utf8_name(t: Path) -> str:
    classes_of_pngs(t / "d")
    with open(os.fsencode(t / "d" / "a") + b"/caf\xe9.png", "wb") as f:
        f.write(png_bytes())
    return f"folder:{t / 'd'}"


def _folder_empty_test_split(t: Path) -> str:
    classes_of_pngs(t / "d" / "train")
    (t / "d" / "test").mkdir()
    return f"folder:{t / 'd'}"


def _folder_huge_png(t: Path) -> str:
    classes_of_pngs(t / "d")
    big_png(t / "d" / "a" / "huge.png", 12000, 12000)
    return f"folder:{t / 'd'}"


def _folder_pixel_option(t: Path):
    classes_of_pngs(t / "d")
    save_png(t / "d" / "b" / "wide.png", np.zeros((10, 200), np.uint8))
    return f"folder:{t / 'd'}", ["--max-image-pixels", "1000"]


def _manifest_link_outside(t: Path) -> str:
    rels = classes_of_pngs(t / "d")
    save_png(t / "secret.png", np.zeros((6, 6), np.uint8))
    os.symlink(t / "secret.png", t / "d" / "a" / "link.png")
    return csv_manifest(t / "d", [0, 1, 0, 1], rels=rels[:3] + ["a/link.png"])


def _csv_rows(t: Path, rows: str, classes_txt: bytes | None = None) -> str:
    classes_of_pngs(t / "d")
    if classes_txt is not None:
        (t / "d" / "classes.txt").write_bytes(classes_txt)
    (t / "d" / "m.csv").write_text("path,label,split\n" + rows)
    return f"csv:{t / 'd' / 'm.csv'}"


GOOD_ROWS = "a/0.png,0,train\na/1.png,0,train\nb/0.png,1,train\nb/1.png,1,test\na/2.png,0,test\n"


def _hf_parquet(t: Path, cell) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = [{"bytes": png_bytes(i), "path": None} for i in range(3)] + [cell]
    pq.write_table(pa.table({"image": cells, "label": [0, 1, 0, 1]}), t / "hf.parquet")
    return f"parquet:{t / 'hf.parquet'}"


CASES = [
    # paths and links
    ("folder file link leaves the root", _folder_link_outside, ["a/evil.png", "outside the dataset folder"]),
    ("manifest row link leaves the folder", _manifest_link_outside, ["row 3", "a/link.png", "outside the manifest"]),
    ("folder name not UTF-8", _folder_bad_utf8_name, ["caf\\xe9.png", "not valid UTF-8"]),
    ("manifest path holds NUL", lambda t: _csv_rows(t, "a/0.png,0,train\na/1\0.png,1,train\n"),
     ["row 1", "NUL"]),
    # image bounds and bad image bytes
    ("12000x12000 PNG", _folder_huge_png, ["a/huge.png", "144,000,000 pixels", "max_image_pixels"]),
    ("PNG over --max-image-pixels", _folder_pixel_option, ["b/wide.png", "200×10 = 2,000 pixels", "limit of 1,000"]),
    ("truncated PNG", lambda t: _folder_with(t, "cut.png", png_bytes(size=64)[:-30]), ["b/cut.png", "truncated"]),
    ("PNG header only", lambda t: _folder_with(t, "head.png", png_bytes()[:40]), ["b/head.png", "cannot read"]),
    ("text named .png", lambda t: _folder_with(t, "notes.png", b"hello"), ["b/notes.png", "cannot read"]),
    ("random bytes named .jpg", lambda t: _folder_with(t, "x.jpg", bytes(range(256)) * 4), ["b/x.jpg"]),
    ("corrupt JPEG body", lambda t: _folder_with(t, "y.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 60),
     ["b/y.jpg", "cannot read"]),
    ("folder test split empty", _folder_empty_test_split, ["no 'test' rows"]),
    ("HF image cell without bytes", lambda t: _hf_parquet(t, {"bytes": None, "path": "x"}), ["row 3", "no bytes"]),
    # labels and classes
    ("npz label 1000000000", lambda t: npz(t / "x.npz", labels=np.array([0, 1] * 5 + [1, 1_000_000_000])),
     ["1000000000", "row 11", f"{MAX_CLASSES:,}"]),
    ("npz negative label", lambda t: npz(t / "x.npz", labels=np.array([0, 1] * 5 + [1, -3])), ["-3", "row 11"]),
    ("npz uint64 max label", lambda t: npz(t / "x.npz", labels=np.array([0, 1] * 5 + [1, 2**64 - 1], np.uint64)),
     ["18446744073709551615", "row 11"]),
    ("npz label beyond class_names", lambda t: npz(t / "x.npz", labels=np.array([0, 1] * 5 + [1, 5]),
                                                   class_names=np.array(["a", "b"])), ["label 5", "row 11"]),
    ("npz duplicate class names", lambda t: npz(t / "x.npz", class_names=np.array(["cat", "cat"])),
     ["'cat' listed twice"]),
    ("npz 0-d class_names", lambda t: npz(t / "x.npz", class_names=np.array("cat")), ["class_names", "shape ()"]),
    ("npz class_names not UTF-8", lambda t: npz(t / "x.npz", class_names=np.array([b"a", b"\xff"])),
     ["class_names", "not UTF-8"]),
    ("csv label 1000000000", lambda t: _csv_rows(t, GOOD_ROWS + "b/2.png,1000000000,train\n"),
     ["row 5 (line 7)", "1000000000"]),
    ("csv 23-digit label", lambda t: _csv_rows(t, GOOD_ROWS + "b/2.png,12345678901234567890123,train\n"),
     ["row 5", "12345678901234567890123"]),
    ("csv 5000-digit label", lambda t: _csv_rows(t, GOOD_ROWS + "b/2.png," + "9" * 5000 + ",train\n"),
     ["row 5", "99999", "..."]),
    ("csv negative label", lambda t: _csv_rows(t, GOOD_ROWS + "b/2.png,-7,train\n"), ["row 5", "-7", "negative"]),
    ("csv huge label with classes.txt", lambda t: _csv_rows(t, GOOD_ROWS + "b/2.png,99999999999999999999999,train\n",
                                                            b"a\nb\n"), ["row 5", "out of range"]),
    ("classes.txt not UTF-8", lambda t: _csv_rows(t, GOOD_ROWS, b"caf\xe9\nb\n"), ["classes.txt", "not UTF-8"]),
    ("classes.txt duplicate names", lambda t: _csv_rows(t, GOOD_ROWS, b"a\nb\na\n"), ["classes.txt", "'a' listed twice"]),
    ("csv no test rows", lambda t: _csv_rows(t, GOOD_ROWS.replace("test", "train")), ["no 'test' rows"]),
    ("csv no train rows", lambda t: _csv_rows(t, GOOD_ROWS.replace("train", "test")), ["no 'train' rows"]),
    ("csv columns twice", lambda t: _csv_twice(t),
     ["'path'", "more than once"]),
    ("csv not UTF-8", lambda t: _csv_bytes(t, b"path,label\n\xff\xfe,1\n"), ["m.csv", "cannot read as CSV"]),
    ("parquet class_names not JSON", lambda t: parquet_manifest(t, {"class_names": "[a, b"}),
     ["metadata 'class_names'", "not JSON"]),
    ("parquet class_names a number", lambda t: parquet_manifest(t, {"class_names": "5"}),
     ["metadata 'class_names'", "list of class names"]),
    ("parquet huggingface not JSON", lambda t: parquet_manifest(t, {"huggingface": "{oops"}),
     ["metadata 'huggingface'", "not JSON"]),
    ("parquet huggingface wrong shape", lambda t: parquet_manifest(t, {"huggingface": '{"info": [1, 2]}'}),
     ["metadata 'huggingface'", "expected"]),
    ("parquet huggingface names not text", lambda t: parquet_manifest(
        t, {"huggingface": json.dumps({"info": {"features": {"label": {"names": [["x"], "y"]}}}})}),
     ["ClassLabel names", "not text"]),
    # degenerate npz
    ("npz with no rows", lambda t: npz(t / "x.npz", n=0), ["no examples"]),
    ("npz N×0×0 images", lambda t: npz(t / "x.npz", images=np.zeros((12, 0, 0), np.uint8)), ["0×0", "zero-size"]),
    ("npz split without test rows", lambda t: npz(t / "x.npz", split=np.array(["train"] * 12)), ["no 'test' rows"]),
    ("npz split without train rows", lambda t: npz(t / "x.npz", split=np.array(["test"] * 12)), ["no 'train' rows"]),
    ("npz float labels", lambda t: npz(t / "x.npz", labels=np.arange(12) % 2 + 0.5), ["labels", "float64"]),
    ("npz float images", lambda t: npz(t / "x.npz", images=np.zeros((12, 4, 4))), ["uint8", "float64"]),
    ("npz object labels", lambda t: _npz_object(t), ["labels", "pickle"]),
    ("npz 2-D split", lambda t: npz(t / "x.npz", split=np.array([["train"] * 12] * 2)), ["split", "1-D"]),
    ("npz member declares a huge shape", lambda t: _npz_huge_header(t), ["labels.npy", "declares shape"]),
    ("npz member declares a huge size", lambda t: _npz_zip_bomb(t), ["images.npy", "declares", "archive"]),
    # sizes declared inside torchvision files
    ("CIFAR pickle declares a 1 TB byte string",
     lambda t: cifar10(t, {"data_batch_2": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx."}),
     ["data_batch_2", "not a complete pickle"]),
    ("CIFAR pickle declares a 1 TB text string",
     lambda t: cifar10(t, {"test_batch": b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"xx."}),
     ["test_batch", "not a complete pickle"]),
    ("CIFAR labels are nested lists", lambda t: cifar10(t, {"data_batch_1": pickle.dumps(
        {"data": np.zeros((3, 3072), np.uint8), "labels": [[0] * 10] * 3}, protocol=2)}),
     ["data_batch_1", "list of integers"]),
    ("CIFAR labels a 10**18-leaf list bomb", lambda t: cifar10(t, {"data_batch_3": pickle.dumps(
        {"data": np.zeros((3, 3072), np.uint8), "labels": pickle.loads(nested_list_bomb())}, protocol=2)}),
     ["data_batch_3", "list of integers"]),
    ("CIFAR label names a list bomb", lambda t: cifar10(t, {"batches.meta": pickle.dumps(
        {"label_names": pickle.loads(nested_list_bomb())}, protocol=2)}), ["batches.meta", "is a list, not text"]),
    ("CIFAR label names not text", lambda t: cifar10(t, {"batches.meta": pickle.dumps(
        {"label_names": [[1]] * 10}, protocol=2)}), ["batches.meta", "not text"]),
    ("CIFAR label 10**30", lambda t: cifar10(t, {"data_batch_4": pickle.dumps(
        {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 10**30]}, protocol=2)}), ["data_batch_4"]),
    ("CIFAR duplicate class names", lambda t: cifar10(t, {"batches.meta": pickle.dumps(
        {"label_names": ["x"] * 10}, protocol=2)}), ["batches.meta", "'x' listed twice"]),
    ("idx header declares 100 GB", lambda t: mnist(t, idx_header(100_000, 1000, 1000) + b"\0" * 64),
     ["train-images-idx3-ubyte", "truncated", "100000×1000×1000", "file holds 64"]),
    ("idx header declares 2^32×2^32×255", lambda t: mnist(t, idx_header(2**32 - 1, 2**32 - 1, 255) + b"\0" * 64),
     ["train-images-idx3-ubyte", "truncated", "4294967295×4294967295×255"]),
    ("gzipped idx header declares 4 GB", lambda t: _gz_idx(t), ["train-labels-idx1-ubyte.gz", "truncated", "file holds 4"]),
]


def _gz_idx(t: Path) -> str:
    spec = mnist(t, idx_header(4, 28, 28) + bytes(4 * 28 * 28))
    raw = t / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_header(4_000_000_000) + bytes(4)))
    return spec


def _csv_twice(t: Path) -> str:
    classes_of_pngs(t / "d")
    (t / "d" / "m.csv").write_text("path,label,Path\na/0.png,0,a/1.png\n")
    return f"csv:{t / 'd' / 'm.csv'}"


def _csv_bytes(t: Path, data: bytes) -> str:
    (t / "m.csv").write_bytes(data)
    return f"csv:{t / 'm.csv'}"


def _npz_object(t: Path) -> str:
    path = t / "x.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in (("images", np.zeros((2, 4, 4), np.uint8)), ("labels", np.array([0, None], dtype=object))):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=True)
            zf.writestr(f"{key}.npy", buf.getvalue())
    return f"npz:{path}"


def _npz_huge_header(t: Path) -> str:
    """A labels member whose .npy header declares 10**12 int64 values but holds 12."""
    path = t / "x.npz"
    npz(path)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(path, "a") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the later member is the one read
        zf.writestr("labels.npy", buf.getvalue() + np.arange(12).tobytes())
    return f"npz:{path}"


def _npz_zip_bomb(t: Path) -> str:
    path = t / "x.npz"
    npz(path)
    zip_with_member_size(path, "images.npy", 2**31)
    return f"npz:{path}"


def _run_case(writer, tmp_path: Path, capsys) -> tuple[int, str]:
    made = writer(tmp_path)
    spec, extra = made if isinstance(made, tuple) else (made, [])
    code = cli(["validate", "--dataset", spec, *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("writer,words", [(w, words) for _, w, words in CASES], ids=[c[0] for c in CASES])
def test_hostile_dataset_exits_2_naming_the_culprit(writer, words, tmp_path, capsys):
    t0 = time.perf_counter()
    code, err = _run_case(writer, tmp_path, capsys)
    assert code == 2, err
    assert err.startswith("audit: error: ") and "Traceback" not in err
    missing = [w for w in words if w not in err]
    assert not missing, (missing, err)
    assert time.perf_counter() - t0 < 10


# -- folder walks and links ----------------------------------------------------------------------------
def test_links_to_folders_are_not_followed_so_rows_do_not_multiply(tmp_path):
    root = tmp_path / "data"
    rels = classes_of_pngs(root, classes=("a", "b", "c", "d"), per_class=20)  # 80 images
    clean = load_dataset(f"folder:{root}")
    os.symlink("..", root / "a" / "up")  # the loop of the issue: 80 images used to load as 3,320 rows
    os.symlink("../..", root / "b" / "up2")
    os.symlink("../c", root / "d" / "also_c")
    t0 = time.perf_counter()
    ds = load_dataset(f"folder:{root}")
    assert time.perf_counter() - t0 < 5
    assert len(ds.labels) == 80 and ds.example_ids.tolist() == sorted(rels)
    assert np.array_equal(ds.labels, clean.labels) and ds.fingerprint() == clean.fingerprint()
    assert ds.extra["skipped_files"] == ["a/up/", "b/up2/", "d/also_c/"]


def test_a_linked_class_folder_is_skipped_and_a_link_inside_the_root_is_read(tmp_path):
    root = tmp_path / "data"
    classes_of_pngs(root, classes=("a", "b"), per_class=4)
    classes_of_pngs(tmp_path / "elsewhere", classes=("z",), per_class=4)
    os.symlink(tmp_path / "elsewhere" / "z", root / "z")  # a class folder that is a link: not a class
    os.symlink(root / "a" / "0.png", root / "b" / "copy_of_a0.png")  # a file link that stays inside
    ds = load_dataset(f"folder:{root}")
    assert ds.class_names == ("a", "b") and len(ds.labels) == 9
    assert "z/" in ds.extra["skipped_files"]
    i = ds.example_ids.tolist().index("b/copy_of_a0.png")
    assert np.array_equal(ds.images[i], ds.images[0]) and ds.labels[i] == 1


def test_manifest_link_that_stays_inside_is_read(tmp_path):
    rels = classes_of_pngs(tmp_path, per_class=3)
    os.symlink(tmp_path / "a" / "0.png", tmp_path / "b" / "link.png")
    ds = load_dataset(csv_manifest(tmp_path, [0, 0, 1, 1, 1], rels=rels[:2] + rels[3:5] + ["b/link.png"]))
    assert ds.example_ids[-1] == "b/link.png" and np.array_equal(ds.images[-1], ds.images[0])


# -- the pixel cap as an option ---------------------------------------------------------------------
def test_max_image_pixels_keyword_and_environment(tmp_path, monkeypatch):
    root = tmp_path / "d"
    classes_of_pngs(root)
    save_png(root / "b" / "big.png", np.full((60, 50), 7, np.uint8))  # 3,000 pixels
    assert MAX_IMAGE_PIXELS == 50_000_000
    assert len(load_dataset(f"folder:{root}").labels) == 13
    with pytest.raises(AuditInputError, match=r"b/big\.png: .*50×60 = 3,000 pixels, more than the limit of 2,999"):
        load_dataset(f"folder:{root}", max_image_pixels=2999)
    assert len(load_dataset(f"folder:{root}", max_image_pixels=3000).labels) == 13
    monkeypatch.setenv("AUDIT_MAX_IMAGE_PIXELS", "2999")
    with pytest.raises(AuditInputError, match="big.png"):
        load_dataset(f"folder:{root}")
    assert len(load_dataset(f"folder:{root}", max_image_pixels=10**6).labels) == 13  # the argument wins
    monkeypatch.setenv("AUDIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(AuditInputError, match="AUDIT_MAX_IMAGE_PIXELS='lots': must be a whole number"):
        load_dataset(f"folder:{root}")
    monkeypatch.delenv("AUDIT_MAX_IMAGE_PIXELS")
    with pytest.raises(AuditInputError, match="max_image_pixels=0"):
        load_dataset(f"folder:{root}", max_image_pixels=0)


def test_any_other_exception_of_a_source_becomes_exit_2_naming_the_spec(capsys):
    from audit.data.registry import SOURCES

    def explodes(arg, *, spec, opts):
        return {}["no such key"]  # a KeyError deep in a source's parsing

    SOURCES["explodes"] = explodes
    try:
        assert cli(["validate", "--dataset", "explodes:x.bin"]) == 2
    finally:
        del SOURCES["explodes"]
    assert capsys.readouterr().err == "audit: error: explodes:x.bin: cannot load (KeyError: 'no such key')\n"


def test_registry_has_no_back_imports():
    """Source modules import ``register`` from :mod:`audit.data.registry`, never from ``sources``."""
    import audit.data as pkg

    for mod in ("folder", "manifest", "torchvision_sources", "images", "checks", "registry", "limits"):
        text = (Path(pkg.__file__).parent / f"{mod}.py").read_text()
        assert "from audit.data.sources import" not in text and "from audit.data import" not in text, mod


# -- fuzzing: any input ends in a dataset or AuditInputError, within bounded time ---------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

FUZZ = settings(max_examples=40, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = st.sampled_from(["uint8", "int8", "int64", "uint64", "float32", "bool", "<U5", "S3"])


def loads_or_refuses(spec: str, **kw) -> None:
    """The property: ``load_dataset`` returns a usable dataset or raises AuditInputError, nothing else."""
    t0 = time.perf_counter()
    try:
        ds = load_dataset(spec, decode_workers=1, **kw)
    except AuditInputError as e:
        assert str(e).strip(), "an error must say what is wrong"
    else:
        assert len(ds.labels) > 0 and ds.images.dtype == np.uint8 and ds.images.ndim == 4
        assert set(ds.split.tolist()) == {"train", "test"} and len(set(ds.class_names)) == ds.num_classes
    assert time.perf_counter() - t0 < 3


NPZ_SHAPES = st.sampled_from([(8,), (8, 3, 3), (8, 2, 2, 3), (), (8, 0, 0), (2, 8), (9,), (0,)])


@st.composite
def npz_members(draw):
    """A valid 8-row npz (optional split and class names), then 0-2 members replaced by random arrays."""
    out = {"images": draw(hnp.arrays(np.uint8, (8, 4, 4))), "labels": np.arange(8) % 2}
    if draw(st.booleans()):
        out["split"] = np.array(["train", "train", "test", "test"] * 2)
    if draw(st.booleans()):
        out["class_names"] = np.array(["x", "y"])
    for key in sorted(draw(st.sets(st.sampled_from(["images", "labels", "split", "class_names", "extra"]),
                                   max_size=2))):
        out[key] = draw(hnp.arrays(draw(DTYPES), draw(NPZ_SHAPES)))
    return out


@FUZZ
@given(npz_members(), st.sampled_from(["none", "cut", "splice"]), st.integers(0, 10_000), st.binary(max_size=8))
def test_fuzz_npz_files(members, damage, at, junk):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.npz"
        np.savez(path, **members)
        data = path.read_bytes()
        at %= max(len(data), 1)
        if damage != "none":  # the archive truncated, or with junk spliced in
            path.write_bytes(data[:at] if damage == "cut" else data[:at] + junk + data[at + len(junk):])
        loads_or_refuses(f"npz:{path}")


CELLS = st.one_of(st.sampled_from(["../up.png", "/etc/hostname", "", "a", "b/9.png", "a/0.png\0x", "a//0.png",
                                   "./b/2.png", "0", "-1", "2", "1e400", "99999999999999999999999", "train",
                                   "test", "Train ", "nan", "cat", "é", "a/0.png"]),
                  st.text(max_size=6), st.integers(-2**70, 2**70).map(str))
VALID = [f"{c}/{i}.png" for c in "ab" for i in range(4)]


@st.composite
def manifest_rows(draw):
    """A valid manifest of the 8 PNGs (labels as names or integers, with or without a split), then
    0-3 cells replaced by hostile ones."""
    paths = draw(st.permutations(VALID))[: draw(st.integers(4, 8))]
    names = draw(st.booleans())
    rows = [[p, p[0] if names else str("ab".index(p[0])), "test" if p[2] in "01" else "train"] for p in paths]
    for i, col, cell in draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 2), CELLS), max_size=3)):
        rows[i % len(rows)][col] = cell
    return rows


@FUZZ
@given(manifest_rows(), st.sampled_from(["csv", "parquet"]), st.booleans(),
       st.sampled_from([None, b"a\nb\n", b"b\na\n", b"a\na\n", b"\xff\n", b""]),
       st.sampled_from([{}, {"class_names": '["a", "b"]'}, {"class_names": "{"}, {"huggingface": "[1]"},
                        {"huggingface": '{"info": {"features": {"label": {"names": 3}}}}'}]))
def test_fuzz_manifests(rows, kind, with_split, classes_txt, metadata):
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        classes_of_pngs(root, per_class=4)
        if classes_txt is not None:
            (root / "classes.txt").write_bytes(classes_txt)
        cols = {"path": [r[0] for r in rows], "label": [r[1] for r in rows]}
        if with_split:
            cols["split"] = [r[2] for r in rows]
        if kind == "csv":
            pd.DataFrame(cols, columns=list(cols)).to_csv(root / "m.csv", index=False)
        else:
            table = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
            pq.write_table(table.replace_schema_metadata(metadata), root / "m.parquet")
        loads_or_refuses(f"{kind}:{root / f'm.{kind}'}")


def _encoded(fmt: str, seed: int, mode: str) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (7, 5, 3) if mode == "RGB" else (7, 5), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@FUZZ
@given(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]), st.sampled_from(["L", "RGB"]), st.integers(0, 3),
       st.sampled_from(["none", "cut", "flip", "random"]), st.integers(0, 4000),
       st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=4),
       st.binary(max_size=64), st.sampled_from(["folder", "parquet"]))
def test_fuzz_image_bytes(fmt, mode, seed, damage, cut, flips, raw, where):
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = bytearray(_encoded(fmt, seed, mode))
    if damage == "flip":
        for at, value in flips:
            data[at % len(data)] = value
    data = {"cut": data[: cut % len(data)], "random": raw}.get(damage, data)
    suffix = {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, "." + fmt.lower())
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        classes_of_pngs(root, per_class=3)
        if where == "folder":
            (root / "a" / f"fuzz{suffix}").write_bytes(bytes(data))
            loads_or_refuses(f"folder:{root}", max_image_pixels=10**6)
        else:
            cells = [{"bytes": png_bytes(i), "path": None} for i in range(4)] + [{"bytes": bytes(data), "path": None}]
            pq.write_table(pa.table({"image": cells, "label": [0, 1, 0, 1, 1]}), root / "hf.parquet")
            loads_or_refuses(f"parquet:{root / 'hf.parquet'}", max_image_pixels=10**6)
