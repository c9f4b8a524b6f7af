"""Every ``--dataset`` source, built from tiny files written here; bad input exits 2 naming every problem."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.cli import main as cli
from audit.config import RunConfig
from audit.data import load_dataset
from audit.errors import AuditInputError


# -- fixture writers ---------------------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """The idx format of MNIST: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 30, n_test: int = 10, gz: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[prefix] = (x, y)
    return out


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 5, seed: int = 0):
    """CIFAR-10's python batches as torchvision lays them out: dicts with 'data' (N×3072 uint8) and 'labels'."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}, f, protocol=2)
    batches = {}
    for fname, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(base / fname, "wb") as f:
            pickle.dump({"batch_label": fname, "labels": labels, "data": data,
                         "filenames": [f"{fname}_{i}.png" for i in range(n)]}, f, protocol=2)
        batches[fname] = (data, labels)
    return batches, names


def png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def grey_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 12, size: int = 8, seed: int = 0):
    """Class folders of grey PNGs whose pixels encode (class, i): byte-exact checks are possible."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for c in classes:
        for i in range(per_class):
            a = rng.integers(0, 256, (size, size), dtype=np.uint8)
            png(root / c / f"{i:03d}.png", a)
            arrays[f"{c}/{i:03d}.png"] = a
    return arrays


def problems_of(spec: str, **kw) -> list[str]:
    """Every problem a load of ``spec`` reports (or its one message when it stops at once)."""
    with pytest.raises(AuditInputError) as e:
        load_dataset(spec, **kw)
    return e.value.problems or [str(e.value)]


def error_of(spec: str) -> str:
    """What the CLI prints after ``audit: error:``."""
    with pytest.raises(AuditInputError) as e:
        load_dataset(spec)
    return str(e.value)


# -- torchvision formats -----------------------------------------------------------------------------
def test_mnist_reads_torchvision_layout_exactly_as_torchvision_does(tmp_path):
    import torchvision

    write_mnist(tmp_path)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.images.shape == (40, 1, 28, 28) and ds.images.dtype == np.uint8
    assert (ds.split == "train").sum() == 30 and (ds.split == "test").sum() == 10
    assert ds.example_ids[0] == "mnist-train-00000" and ds.example_ids[30] == "mnist-test-00000"
    assert ds.index.tolist() == list(range(30)) + list(range(10))
    assert ds.class_names[3] == "3 - three" and ds.name == "mnist"
    for train, rows in ((True, slice(0, 30)), (False, slice(30, 40))):
        tv = torchvision.datasets.MNIST(str(tmp_path), train=train, download=False)
        assert np.array_equal(ds.images[rows, 0], tv.data.numpy())
        assert np.array_equal(ds.labels[rows], tv.targets.numpy())
        assert tuple(tv.classes) == ds.class_names


def test_fashion_mnist_reads_gzipped_idx(tmp_path):
    written = write_mnist(tmp_path, folder="FashionMNIST", n_train=20, n_test=10, gz=True, seed=1)
    ds = load_dataset(f"fashion-mnist:{tmp_path}")
    assert np.array_equal(ds.images[:20, 0], written["train"][0])
    assert np.array_equal(ds.labels[20:], written["t10k"][1])
    assert ds.class_names[0] == "T-shirt/top" and ds.example_ids[-1] == "fashion-mnist-test-00009"


def test_mnist_truncated_and_missing_files_are_all_named(tmp_path, capsys):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    imgs = raw / "train-images-idx3-ubyte"
    imgs.write_bytes(imgs.read_bytes()[:-100])
    assert cli(["validate", "--dataset", f"mnist:{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err
    assert "missing t10k-labels-idx1-ubyte" in err
    assert "train-images-idx3-ubyte: truncated: header says 30×28×28 values (23520 bytes), file holds 23420" in err


def test_mnist_absent_says_download_and_downloads_nothing(tmp_path):
    (msg,) = problems_of(f"mnist:{tmp_path}")
    assert "--download" in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []


def test_cifar10_batches_in_order_with_meta_names(tmp_path):
    batches, names = write_cifar10(tmp_path)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.images.shape == (25, 3, 32, 32) and ds.class_names == tuple(names)
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)] + [batches["test_batch"][0]])
    assert np.array_equal(ds.images.reshape(25, -1), expected)
    assert ds.labels.tolist() == sum((batches[f][1] for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]), [])
    assert ds.example_ids[4] == "cifar10-train-00004" and ds.example_ids[20] == "cifar10-test-00000"
    assert ds.index[19] == 19 and ds.index[20] == 0


def test_cifar100_fine_labels(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(2)
    fine = [f"c{i}" for i in range(100)]
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": [f"s{i}" for i in range(20)]}, f)
    for split, n in (("train", 6), ("test", 3)):
        with open(base / split, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [97, 3, 5, 7, 11, 13][:n],
                         "coarse_labels": [0] * n, "filenames": ["x"] * n, "batch_label": split}, f)
    ds = load_dataset(f"cifar100:{tmp_path}")
    assert ds.labels.tolist() == [97, 3, 5, 7, 11, 13, 97, 3, 5] and ds.class_names[97] == "c97"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": _RunsCode(), "labels": []}, f)
    monkeypatch.chdir(tmp_path)
    (msg,) = problems_of(f"cifar10:{tmp_path}")
    assert "data_batch_3: cannot read (UnpicklingError: refusing to load posix.system" in msg
    assert not (tmp_path / "pwned").exists()


def test_cifar_tarball_not_extracted_says_so(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"x")
    (msg,) = problems_of(f"cifar10:{tmp_path}")
    assert "cifar-10-python.tar.gz is there but not extracted" in msg


# -- image folders -----------------------------------------------------------------------------------
def test_folder_ids_index_paths_and_a_deterministic_split(tmp_path):
    arrays = grey_folder(tmp_path / "pets")
    (tmp_path / "pets" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "pets" / ".DS_Store").write_bytes(b"\0")
    ds = load_dataset(f"folder:{tmp_path / 'pets'}")
    assert ds.class_names == ("cat", "dog", "eel") and ds.name == "pets"
    assert ds.example_ids.tolist() == sorted(arrays) and ds.index.tolist() == list(range(36))
    assert ds.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert ds.images.shape == (36, 1, 8, 8)
    assert all(np.array_equal(ds.images[i, 0], arrays[k]) for i, k in enumerate(ds.example_ids))
    assert ds.paths[13] == os.path.abspath(tmp_path / "pets" / "dog" / "001.png")
    assert ds.extra["skipped_files"] == ["dog/notes.txt"]
    assert np.bincount(ds.labels[ds.split == "test"]).tolist() == [3, 3, 3]
    assert np.array_equal(load_dataset(f"folder:{tmp_path / 'pets'}").split, ds.split)


def test_folder_train_test_layout_gives_the_split(tmp_path):
    grey_folder(tmp_path / "d" / "train", classes=("a", "b"), per_class=4)
    grey_folder(tmp_path / "d" / "test", classes=("a", "b"), per_class=2, seed=1)
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    assert ds.split.tolist() == ["test"] * 4 + ["train"] * 8
    assert ds.example_ids[0] == "test/a/000.png" and ds.example_ids[4] == "train/a/000.png"
    assert ds.labels.tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]


def test_folder_normalisation_rule_mixed_modes_and_sizes(tmp_path):
    root = tmp_path / "mixed"
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    png(root / "a" / "0_grey.png", grey)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    png(root / "a" / "1_rgb.png", rgb)
    rgba = np.concatenate([rgb, np.zeros((8, 8, 1), np.uint8)], axis=2)
    png(root / "b" / "2_rgba.png", rgba)
    Image.fromarray(grey).convert("P").save(root / "b" / "3_palette.gif")
    png(root / "b" / "4_small.png", np.full((4, 6), 90, np.uint8))  # 6 wide, 4 high: resized
    Image.fromarray((np.full((8, 8), 257 * 100)).astype(np.uint16)).save(root / "b" / "5_16bit.png")
    ds = load_dataset(f"folder:{root}")
    assert ds.images.shape == (6, 3, 8, 8)  # one colour image makes the dataset RGB; 8×8 is the most common size
    assert all(np.array_equal(ds.images[0, ch], grey) for ch in range(3))  # grey replicated
    assert np.array_equal(ds.images[1], rgb.transpose(2, 0, 1))
    assert np.array_equal(ds.images[2], rgb.transpose(2, 0, 1))  # alpha dropped
    assert np.array_equal(ds.images[3, 1], grey)  # palette expanded
    assert (ds.images[4] == 90).all()  # a flat image stays flat through the bilinear resize
    assert (ds.images[5] == 100).all()  # 16 bits scaled by 1/257
    assert ds.extra["resized"] == 1 and ds.extra["source_modes"] == {"L": 2, "RGB": 1, "RGBA": 1, "P;grey": 1, "I;16": 1}
    (root / "a" / "1_rgb.png").unlink()
    (root / "b" / "2_rgba.png").unlink()
    (root / "b" / "3_palette.gif").unlink()
    grey_only = load_dataset(f"folder:{root}")
    assert grey_only.images.shape == (3, 1, 8, 8) and np.array_equal(grey_only.images[0, 0], grey)


def test_folder_bad_input_lists_every_problem_and_exits_2(tmp_path, capsys):
    root = tmp_path / "bad"
    grey_folder(root)
    (root / "dog" / "005.png").write_bytes(b"this is not a png")
    good = (root / "eel" / "003.png").read_bytes()
    (root / "eel" / "003.png").write_bytes(good[: len(good) // 2])
    (root / "fox").mkdir()
    (root / "fox" / "readme.txt").write_text("no images here")
    assert cli(["validate", "--dataset", f"folder:{root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"audit: error: folder:{root}: 3 problems\n")
    assert "  - class 'fox': no image files in fox/" in err
    assert "  - dog/005.png: cannot read as an image (UnidentifiedImageError" in err
    assert "  - eel/003.png: cannot read as an image (" in err


def test_folder_over_the_memory_budget_streams_from_a_memmap_cache(tmp_path):
    arrays = grey_folder(tmp_path / "big", per_class=10, size=16)
    in_ram = load_dataset(f"folder:{tmp_path / 'big'}")
    cache = tmp_path / "cache"
    ds = load_dataset(f"folder:{tmp_path / 'big'}", memory_budget_mb=0.005, cache_dir=cache)  # 5 KiB < 30×256 B
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert np.array_equal(np.asarray(ds.images), in_ram.images) and ds.fingerprint() == in_ram.fingerprint()
    (cache_file,) = cache.glob("*.u8")
    assert ds.extra["streamed"] and ds.extra["cache_file"] == str(cache_file)
    stamp = cache_file.stat().st_mtime_ns
    again = load_dataset(f"folder:{tmp_path / 'big'}", memory_budget_mb=0.005, cache_dir=cache)
    assert again.extra["cache_file"] == str(cache_file) and cache_file.stat().st_mtime_ns == stamp  # not re-decoded
    png(tmp_path / "big" / "cat" / "000.png", np.zeros((16, 16), np.uint8))  # a changed file: a new cache file
    changed = load_dataset(f"folder:{tmp_path / 'big'}", memory_budget_mb=0.005, cache_dir=cache)
    assert (changed.images[0] == 0).all() and np.array_equal(changed.images[1:], in_ram.images[1:])
    assert [p.name for p in cache.iterdir()] != [] and not cache_file.exists()  # the stale cache is evicted
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".u8"]


def test_parallel_decoding_matches_serial_images_and_problems(tmp_path):
    root = tmp_path / "par"
    grey_folder(root, per_class=20, seed=3)
    png(root / "dog" / "odd_size.png", np.full((5, 9), 77, np.uint8))
    serial = load_dataset(f"folder:{root}", decode_workers=1)
    parallel = load_dataset(f"folder:{root}", decode_workers=2)
    assert np.array_equal(serial.images, parallel.images) and serial.extra == parallel.extra
    streamed = load_dataset(f"folder:{root}", decode_workers=2, memory_budget_mb=0, cache_dir=tmp_path / "c")
    assert isinstance(streamed.images, np.memmap) and np.array_equal(streamed.images, serial.images)
    (root / "cat" / "007.png").write_bytes(b"broken")
    (root / "eel" / "011.png").write_bytes(b"broken too")
    assert problems_of(f"folder:{root}", decode_workers=2) == problems_of(f"folder:{root}", decode_workers=1) == [
        "cat/007.png: cannot read as an image (UnidentifiedImageError: cannot identify image file "
        f"'{root / 'cat' / '007.png'}')",
        "eel/011.png: cannot read as an image (UnidentifiedImageError: cannot identify image file "
        f"'{root / 'eel' / '011.png'}')"]


# -- manifests ---------------------------------------------------------------------------------------
def test_csv_manifest_class_names_split_and_relative_paths(tmp_path):
    arrays = grey_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=4)
    rows = [(f"imgs/{k}", k.split("/")[0], "test" if k.endswith("000.png") else "train") for k in sorted(arrays)]
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(tmp_path / "labels.csv", index=False,
                                                                 encoding="utf-8-sig")  # as Excel writes it
    ds = load_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert ds.class_names == ("cat", "dog") and ds.labels.tolist() == [0] * 4 + [1] * 4
    assert ds.split.tolist() == ["test", "train", "train", "train"] * 2
    assert ds.example_ids[5] == "imgs/dog/001.png" and ds.paths[5] == os.path.join(os.path.abspath(tmp_path), "imgs/dog/001.png")
    assert np.array_equal(ds.images[5, 0], arrays["dog/001.png"])


def test_csv_integer_labels_pinned_by_classes_txt_and_stratified_split(tmp_path):
    grey_folder(tmp_path, classes=("x",), per_class=9)
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\n")
    pd.DataFrame({"path": [f"x/{i:03d}.png" for i in range(9)], "label": [0, 1, 2] * 3}).to_csv(tmp_path / "m.csv", index=False)
    ds = load_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert ds.class_names == ("zero", "one", "two") and ds.labels.tolist() == [0, 1, 2] * 3
    assert np.bincount(ds.labels[ds.split == "test"]).tolist() == [1, 1, 1]


def test_csv_bad_rows_are_all_named_by_row_and_line(tmp_path, capsys):
    grey_folder(tmp_path / "data" / "imgs", classes=("a",), per_class=6)
    (tmp_path / "outside.png").write_bytes((tmp_path / "data" / "imgs" / "a" / "000.png").read_bytes())
    (tmp_path / "data" / "classes.txt").write_text("cat\ndog\nemu\n")
    (tmp_path / "data" / "imgs" / "a" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("path,label,split\n"
                        "imgs/a/000.png,cat,train\n"   # row 0: fine
                        "imgs/a/001.png,dgo,train\n"   # row 1: unknown class name
                        "imgs/a/002.png,7,test\n"      # row 2: out of range
                        "../outside.png,cat,train\n"   # row 3: escapes
                        "imgs/a/missing.png,dog,train\n"  # row 4: missing
                        "imgs/a/004.png,dog,train\n"   # row 5: corrupt
                        "imgs/a/000.png,dog,test\n"    # row 6: repeats row 0
                        "imgs/a/005.png,dog,valid\n"   # row 7: bad split
                        f"{tmp_path / 'outside.png'},cat,train\n")  # row 8: absolute, outside
    assert cli(["validate", "--dataset", f"csv:{manifest}"]) == 2
    err = capsys.readouterr().err
    expected = [
        "row 1 (line 3): unknown class name 'dgo' (known: cat, dog, emu)",
        "row 2 (line 4): label 7 out of range [0, 3)",
        "row 7 (line 9): split 'valid' is not 'train' or 'test'",
        f"row 3 (line 5): path '../outside.png' escapes the manifest's folder {tmp_path / 'data'}",
        "row 6 (line 8): path 'imgs/a/000.png' repeats row 0",
        f"row 8 (line 10): path '{tmp_path / 'outside.png'}' escapes the manifest's folder",
        "row 4 (line 6) (imgs/a/missing.png): no such file",
        "row 5 (line 7) (imgs/a/004.png): cannot read as an image (",
    ]
    assert f"csv:{manifest}: 8 problems" in err
    positions = [err.find(e) for e in expected]
    assert all(p > 0 for p in positions), [e for e, p in zip(expected, positions) if p < 0]


def test_csv_mixed_integer_and_name_labels_flag_the_minority(tmp_path):
    grey_folder(tmp_path, classes=("x",), per_class=4)
    pd.DataFrame({"path": [f"x/{i:03d}.png" for i in range(4)], "label": ["0", "1", "one", "1"]}).to_csv(tmp_path / "m.csv", index=False)
    (msg,) = problems_of(f"csv:{tmp_path / 'm.csv'}")
    assert msg.endswith("row 2 (line 4): label 'one' is not an integer (the other labels are; give classes.txt to use class names)")


def test_csv_empty_class_and_missing_column(tmp_path):
    grey_folder(tmp_path, classes=("x",), per_class=4)
    pd.DataFrame({"path": [f"x/{i:03d}.png" for i in range(4)], "label": [0, 2, 0, 2]}).to_csv(tmp_path / "m.csv", index=False)
    assert error_of(f"csv:{tmp_path / 'm.csv'}") == f"csv:{tmp_path / 'm.csv'}: class '1' (label 1) has no examples"
    pd.DataFrame({"file": ["x/000.png"], "label": [0]}).to_csv(tmp_path / "n.csv", index=False)
    assert error_of(f"csv:{tmp_path / 'n.csv'}") == (
        f"{tmp_path / 'n.csv'}: missing column(s) path (expected path,label[,split]; found file, label)")


def test_parquet_manifest_and_hugging_face_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = grey_folder(tmp_path, classes=("a", "b"), per_class=3)
    keys = sorted(arrays)
    pd.DataFrame({"path": keys, "label": [0, 0, 0, 1, 1, 1]}).to_parquet(tmp_path / "m.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 'm.parquet'}")
    assert ds.class_names == ("0", "1") and ds.example_ids.tolist() == keys

    cells = [{"bytes": (tmp_path / k).read_bytes(), "path": None} for k in keys]
    hf_meta = {"info": {"features": {"image": {"_type": "Image"},
                                     "label": {"names": ["ant", "bee"], "_type": "ClassLabel"}}}}
    table = pa.table({"image": cells, "label": [0, 0, 0, 1, 1, 1]})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(hf_meta)}), tmp_path / "hf.parquet")
    hf = load_dataset(f"parquet:{tmp_path / 'hf.parquet'}")
    assert hf.class_names == ("ant", "bee") and hf.paths is None and hf.example_ids[0] == "hf-000000"
    assert np.array_equal(hf.images, ds.images)


def test_npz_collects_every_problem(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((5, 4, 4), np.uint8), labels=np.array([0, 1, 9, 1]),
             class_names=np.array(["a", "b", "c"]), split=np.array(["train", "test", "dev", "train"]))
    probs = problems_of(f"npz:{p}")
    assert probs == ["5 images but 4 labels", "label 9 at row 2 is out of range [0, 3)",
                     "row 2: split 'dev' is not 'train' or 'test'"]


def test_npz_that_is_not_a_zip_says_so(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip file")
    assert error_of(f"npz:{tmp_path / 'x.npz'}") == (
        f"{tmp_path / 'x.npz'}: not a zip archive (an .npz file is a zip of .npy arrays, as np.savez writes)")


def test_unknown_source_lists_the_known_ones():
    (msg,) = problems_of("hf:mnist")
    assert "unknown source 'hf'" in msg and "cifar100, csv, digits, fashion-mnist, folder, mnist, npz, parquet" in msg


# -- audit validate ----------------------------------------------------------------------------------
def test_validate_summary_counts_duplicates_and_small_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    labels = np.array([0] * 12 + [1] * 12 + [2] * 6)
    split = np.array(["train"] * 10 + ["test"] * 2 + ["train"] * 10 + ["test"] * 2 + ["train"] * 6)
    images[1] = images[0]   # within train, same label
    images[10] = images[2]  # train 2 ~ test 10: across splits
    images[13] = images[3]  # train class 0 ~ train class 1: conflicting labels
    np.savez(tmp_path / "d.npz", images=images, labels=labels, split=split, class_names=np.array(["a", "b", "c"]))
    assert cli(["validate", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["splits"] == {"train": 26, "test": 4} and s["image_shape"] == [1, 6, 6]
    assert [(c["train"], c["test"]) for c in s["classes"]] == [(10, 2), (10, 2), (6, 0)]
    d = s["duplicates"]
    assert (d["groups"], d["within_train"], d["across_splits"], d["within_test"], d["conflicting_labels"]) == (3, 2, 1, 0, 1)
    assert d["examples"][0]["ids"] == ["d-000000", "d-000001"]
    assert [(c["name"], c["reason"]) for c in s["too_small"]] == [("c", "fewer than 8 training examples")]
    assert cli(["validate", "--dataset", f"npz:{tmp_path / 'd.npz'}"]) == 0
    text = capsys.readouterr().out
    assert "exact duplicates: 3 groups (6 images): 2 within train, 0 within test, 1 across splits; 1 with conflicting labels" in text
    assert "'c': 6 train, 0 test (fewer than 8 training examples)" in text
    assert cli(["validate", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--strict"]) == 2
    assert "1 duplicate groups span train and test" in capsys.readouterr().err


# -- end to end --------------------------------------------------------------------------------------
SMALL_RUN = ["--epochs", "5", "--robust-epochs", "2", "--models", "natural,pgd", "--folds", "2",
             "--eval-steps", "5", "--eval-restarts", "1", "--quiet"]
if "cv_epochs" in {f.name for f in dataclasses.fields(RunConfig)}:  # the cross-validation models' own epochs
    SMALL_RUN += ["--cv-epochs", "5"]


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and the machine's cores are shared; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_audit_run_on_a_streamed_folder_dataset_end_to_end(tmp_path, monkeypatch, capsys, one_torch_thread):
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for c in range(3):  # three separable classes: a bright band in row block c
        for i in range(20):
            a = rng.integers(0, 40, (8, 8), dtype=np.uint8)
            a[c * 3:c * 3 + 2] = 220
            png(root / f"class{c}" / f"{i:02d}.png", a)
    monkeypatch.setenv("AUDIT_MEMORY_BUDGET_MB", "0")  # every stage reads the memmap
    monkeypatch.setenv("AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert cli(["run", "--dataset", f"folder:{root}", "--out", str(out), *SMALL_RUN]) == 0
    df = pd.read_parquet(out / "examples.parquet")
    assert len(df) == 60 and sorted(df["example_id"]) == [f"class{c}/{i:02d}.png" for c in range(3) for i in range(20)]
    assert set(df["path"]) == {os.path.abspath(root / e) for e in df["example_id"]}
    assert df.loc[df["split"] == "test", "correct_natural"].mean() >= 0.9
    assert json.loads((out / "manifest.json").read_text())["dataset"]["shape"] == [1, 8, 8]
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1


def test_audit_run_on_a_bad_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "bad"
    grey_folder(root, classes=("a", "b"), per_class=6)
    (root / "b" / "003.png").write_bytes(b"junk")
    out = tmp_path / "run"
    assert cli(["run", "--dataset", f"folder:{root}", "--out", str(out), *SMALL_RUN]) == 2
    assert "b/003.png: cannot read as an image" in capsys.readouterr().err
    assert not (out / "examples.parquet").exists() and not (out / "pairs.parquet").exists()


def test_a_grey_palette_gif_keeps_a_grey_folder_grey_and_a_file_changed_in_place_is_decoded_again(tmp_path):
    """Issue #22 item 9: a palette GIF of greys switched the whole folder to the colour recipe; a file
    rewritten in place with its old size and time (cp -p, tar) was served from the decode cache."""
    import os

    from PIL import Image

    from audit.data import load_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / c / f"{i}.png")
    grey = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(grey).convert("P").save(root / "a" / "g.gif")  # Pillow's grey palette image
    assert Image.open(root / "a" / "g.gif").mode == "P"
    cache = tmp_path / "cache"
    ds = load_dataset(f"folder:{root}", cache_dir=cache, memory_budget_mb=0.0001)  # decoded through the cache
    assert ds.images.shape[1] == 1  # still grey
    i = [str(p).endswith("g.gif") for p in ds.paths].index(True)
    assert np.array_equal(np.asarray(ds.images[i, 0]), grey)
    # the same file rewritten in place: same size, same modification time
    target = root / "b" / "0.png"
    st = target.stat()
    new = 255 - np.asarray(Image.open(target))
    Image.fromarray(new).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_dataset(f"folder:{root}", cache_dir=cache, memory_budget_mb=0.0001)
    j = [str(p).endswith(os.path.join("b", "0.png")) for p in again.paths].index(True)
    assert np.array_equal(np.asarray(again.images[j, 0]), new)


def test_more_classes_than_memory_holds_is_refused_before_training(tmp_path, capsys):
    """Issue #22 item 9: 100,000 classes (the documented maximum) passed every check, then died after minutes
    at 6.5 GB. The class-score tables are sized up front: exit 2 at once, naming the classes and the memory."""
    import time

    from audit.cli import main as cli

    n = 100_000  # one 8x8 image per class
    np.savez(tmp_path / "many.npz", images=np.zeros((n, 8, 8), np.uint8), labels=np.arange(n),
             split=np.where(np.arange(n) % 4 == 0, "test", "train"))
    t0 = time.monotonic()
    assert cli(["run", "--dataset", f"npz:{tmp_path / 'many.npz'}", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "100,000 classes × 100,000 images" in err and "GiB" in err and time.monotonic() - t0 < 60
