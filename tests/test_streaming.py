"""Streaming: images are read batch by batch from a memmap through ``audit.rows.Rows``; the process's
own (anonymous) memory does not grow with the number of images. Measured in a fresh subprocess per
size from /proc/self/status (RssAnon: memory the process owns, not the file pages the kernel maps and
can drop)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from audit.rows import Rows, take
    from audit.train.engine import TrainSpec, train_model
    from audit.train.models import build_model

    def anon_mb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    path, n = sys.argv[1], int(sys.argv[2])
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 1, 28, 28))
    torch.set_num_threads(1)
    rows = Rows.of(mm, np.arange(n)[::-1])  # a view in another order: nothing is copied
    base, peak = anon_mb(), 0.0
    for s in range(0, n, 512):  # inference-style pass over every image
        x = take(rows, slice(s, s + 512)).float()
        peak = max(peak, anon_mb())
    labels = torch.as_tensor(np.arange(n) % 10)
    spec = TrainSpec(method="natural", arch="mlp", width=0.25, epochs=1, batch_size=512, lr=0.01)
    train_model(build_model("mlp", (1, 28, 28), 10, 0.25), rows, labels, spec, device=torch.device("cpu"),
                progress=False)
    peak = max(peak, anon_mb())
    print(json.dumps({"growth_mb": peak - base}))
""")


def _growth(tmp_path, n: int) -> float:
    path = tmp_path / f"images{n}.u8"
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, 1, 28, 28))
    mm[:] = np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    mm.flush()
    del mm
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(n)], capture_output=True, text=True,
                         timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_pythonpath()})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


def _pythonpath() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    small, large = _growth(tmp_path, 20_000), _growth(tmp_path, 200_000)  # 16 MB and 157 MB of images
    # one epoch keeps per-example records (loss, margin, correctness: 9 bytes each, 1.6 MB at 200k);
    # everything else is per batch: the 141 MB more images must not show up
    assert large - small < 24, (small, large)


def test_a_view_is_gathered_onto_an_accelerator_once_only_when_it_fits():
    """On a CPU a view stays a view (read batch by batch); on an accelerator it is copied over once,
    with the same pixels in the same order, when it fits in RESIDENT_SHARE of the free memory, and
    stays a view when it does not. (``meta`` stands in for the accelerator: same code path, no GPU.)"""
    import torch

    from audit.rows import Rows
    from audit.train.engine import RESIDENT_SHARE, _place_images

    src = np.arange(6 * 2 * 3 * 3, dtype=np.uint8).reshape(6, 2, 3, 3)
    rows = Rows.of(src, np.array([4, 0, 5]))
    size = 3 * 2 * 3 * 3
    assert _place_images(rows, torch.device("cpu")) is rows
    big = _place_images(rows, torch.device("meta"), free_bytes=int(size / RESIDENT_SHARE) - 1)
    assert big is rows
    fits = _place_images(rows, torch.device("meta"), free_bytes=int(size / RESIDENT_SHARE))
    assert isinstance(fits, torch.Tensor) and fits.device.type == "meta"
    assert tuple(fits.shape) == (3, 2, 3, 3) and fits.dtype == torch.uint8
    # the gather itself (before the copy) holds exactly rows 4, 0, 5
    from audit.rows import take

    assert np.array_equal(take(rows, slice(None)).numpy(), src[[4, 0, 5]])
