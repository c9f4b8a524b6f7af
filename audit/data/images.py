"""Image files (or encoded bytes) into one uint8 (N, C, H, W) array, by one documented rule.

Normalisation rule (``RULE_VERSION`` 1), the same for ``folder:``, ``csv:`` and ``parquet:`` sources:

* **Channels.** The dataset is grey (C = 1) when every image has a grey Pillow mode (``1``, ``L``, ``LA``,
  ``I``, ``I;16``, ``F``); otherwise it is RGB (C = 3) and grey images are replicated into three
  channels. Alpha is dropped and palettes are expanded (Pillow's ``convert``); a palette of greys only
  (R = G = B) counts as grey. 16-bit images are scaled to
  8 bits (value / 257); 32-bit integer and float images are rounded and clipped to 0..255.
* **Size.** Every image is resized to the most common (width, height) of the dataset (ties go to the
  larger area, then the larger height) with Pillow's bilinear filter, which antialiases when shrinking.
  The aspect ratio is not kept. Multi-frame files contribute their first frame; EXIF orientation is not
  applied (as in torchvision's ``ImageFolder``).
* **Bounds.** A file whose header declares more than ``max_pixels`` (width × height; default
  :data:`audit.data.limits.MAX_IMAGE_PIXELS`, 50 megapixels) or a zero width or height is refused
  before it is decoded; Pillow's decompression-bomb guard is set to the same cap while decoding.

Memory: when the decoded array would exceed the memory budget (``AUDIT_MEMORY_BUDGET_MB``, default
2048 MiB, or the ``memory_budget_mb`` argument), images are decoded once into a uint8 ``np.memmap`` file
in the cache directory (``AUDIT_CACHE_DIR``, default ``~/.cache/benign-audit``) and served from disk; the
file is keyed by every source file's path, size, modification and inode-change times and inode, so a rerun maps it again without
decoding, and a changed file makes a new one (replacing the caches of earlier versions of a dataset with
the same folder name). A cache file is complete or absent: it is written under a temporary name and
renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.data.checks import Problems
from audit.data.limits import MAX_IMAGE_PIXELS
from audit.errors import describe_error as _describe

RULE_VERSION = 1
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "P;grey", "PA;grey"})
DEFAULT_MEMORY_BUDGET_MB = 2048.0
PARALLEL_MIN_IMAGES = 2000  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class ImageRef:
    """One image to decode: a file ``path`` or encoded ``data`` bytes; ``name`` is how messages call it
    (a path relative to the dataset root, or ``row 12``)."""

    name: str
    path: str | Path | None = None
    data: bytes | None = None

    def open(self):
        from PIL import Image

        return Image.open(self.path if self.path is not None else io.BytesIO(self.data))


def readable_extensions() -> frozenset[str]:
    """Lower-case file suffixes (``.png``) of every format this Pillow can open."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def memory_budget_bytes(memory_budget_mb: float | None = None) -> int:
    """The in-RAM limit for decoded images, in bytes: the argument, else ``AUDIT_MEMORY_BUDGET_MB``, else 2048 MiB."""
    from audit.errors import AuditInputError

    if memory_budget_mb is None:
        env = os.environ.get("AUDIT_MEMORY_BUDGET_MB")
        try:
            memory_budget_mb = float(env) if env else DEFAULT_MEMORY_BUDGET_MB
        except ValueError:
            raise AuditInputError(f"AUDIT_MEMORY_BUDGET_MB={env!r}: must be a number of MiB") from None
    if memory_budget_mb < 0:
        raise AuditInputError(f"memory budget {memory_budget_mb} MiB: must be ≥ 0")
    return int(memory_budget_mb * 2**20)


def cache_directory(cache_dir: str | Path | None = None) -> Path:
    """Where decoded-image caches go: the argument, else ``AUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/benign-audit``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("AUDIT_CACHE_DIR"):
        return Path(os.environ["AUDIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "benign-audit"


def _grey_palette(img) -> bool:
    """Whether a palette image's palette holds only greys (R = G = B in every entry): such a file (a GIF
    saved from a grey picture) is a grey image, and must not switch the whole dataset to colour."""
    pal = img.getpalette() or []
    return len(pal) >= 3 and all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def effective_mode(img) -> str:
    """``img.mode``, except ``P;grey`` (``PA;grey``) for a palette image whose palette is grey
    (:func:`_grey_palette`): a grey mode, reported as what the file is."""
    return f"{img.mode};grey" if img.mode in ("P", "PA") and _grey_palette(img) else img.mode


def _mode_array(img) -> np.ndarray:
    """Decode ``img`` into (H, W) uint8 when its mode is grey, else (H, W, 3) uint8."""
    mode = img.mode
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint32)
        return ((a + 128) // 257).astype(np.uint8)
    if mode in ("I", "F"):
        return np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
    if mode in ("L", "RGB"):
        return np.asarray(img)
    return np.asarray(img.convert("L" if effective_mode(img) in GREY_MODES else "RGB"))


def _fit(arr: np.ndarray, c: int, h: int, w: int) -> tuple[np.ndarray, bool]:
    """(H', W'[, 3]) uint8 -> (c, h, w) view or copy, resizing bilinearly when the size differs."""
    resized = arr.shape[:2] != (h, w)
    if resized:
        from PIL import Image

        arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
    if arr.ndim == 2:
        return arr[None], resized  # broadcasts to 3 channels on assignment when c == 3
    return arr.transpose(2, 0, 1), resized


def _target_size(sizes: np.ndarray) -> tuple[int, int]:
    """Most common (width, height); ties go to the larger area, then the larger height."""
    counts = Counter(map(tuple, sizes.tolist()))
    w, h = max(counts, key=lambda s: (counts[s], s[0] * s[1], s[1], s[0]))
    return int(w), int(h)


class _DecodeCache:
    """A uint8 memmap file of decoded images plus a JSON file written last (its presence = complete)."""

    def __init__(self, root: Path, slug: str, key: str):
        self.root, self.slug = root, slug
        self.data = root / f"{slug}-{key}.u8"
        self.meta = root / f"{slug}-{key}.json"
        self.tmp = root / f"{slug}-{key}.u8.tmp{os.getpid()}"

    def load(self) -> tuple[np.ndarray, dict] | None:
        try:
            meta = json.loads(self.meta.read_text())
            shape = tuple(int(s) for s in meta["shape"])
            if self.data.stat().st_size != int(np.prod(shape)):
                return None
            return np.memmap(self.data, dtype=np.uint8, mode="r", shape=shape), meta["info"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def create(self, shape: tuple[int, ...]) -> np.memmap:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        return np.memmap(self.tmp, dtype=np.uint8, mode="w+", shape=shape)

    def commit(self, arr: np.memmap, info: dict) -> tuple[np.ndarray, dict]:
        arr.flush()
        shape = arr.shape
        del arr
        self.tmp.replace(self.data)
        tmp_meta = self.meta.with_name(self.meta.name + f".tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps({"shape": list(shape), "rule": RULE_VERSION, "info": info}))
        tmp_meta.replace(self.meta)
        self._evict_stale()
        loaded = self.load()
        assert loaded is not None
        return loaded

    def _evict_stale(self) -> None:
        """Remove this slug's caches of earlier file versions: a cache can be as large as the dataset.
        A process still mapping one keeps reading it (the file lives on until unmapped)."""
        for p in self.root.glob(f"{self.slug}-*"):
            stem = p.name[len(self.slug) + 1:]
            is_cache = len(stem.split(".")[0]) == 20 and p.suffix in (".u8", ".json")
            if is_cache and p not in (self.data, self.meta):
                p.unlink(missing_ok=True)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class _PixelCap:
    """Pillow's decompression-bomb guard set to ``cap``; its warnings silenced (the cap is checked here, and
    warnings about corrupt metadata such as EXIF would only reach the terminal as noise)."""

    def __init__(self, cap: int):
        self.cap = cap

    def __enter__(self):
        import warnings

        from PIL import Image

        self.before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, self.cap
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # corrupt EXIF and the like
        return self

    def __exit__(self, *exc):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.before
        self.warnings.__exit__(*exc)


def _too_large(pixels: str, max_pixels: int) -> ValueError:
    return ValueError(f"{pixels} pixels, more than the limit of {max_pixels:,} (max_image_pixels)")


def _open_checked(r: ImageRef, max_pixels: int):
    """Open ``r`` and check its declared size against ``max_pixels`` before anything is decoded."""
    import re

    from PIL import Image

    try:
        img = r.open()
    except Image.DecompressionBombError as e:  # Pillow's guard, at twice the cap, saw it first
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(f"{int(found.group(1)):,}" if found else "more than twice that many", max_pixels) from None
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        img.close()
        if w < 1 or h < 1:
            raise ValueError(f"{w}×{h} pixels: a zero-size image")
        raise _too_large(f"{w}×{h} = {w * h:,}", max_pixels)
    return img


def _work(refs: list[ImageRef], action: str, target: tuple[int, int, int] | None,
          max_pixels: int = MAX_IMAGE_PIXELS) -> list[tuple]:
    """Open each of ``refs``: ``(width, height, mode, array or None, error or None, resized)`` per image.

    action: ``header`` (size and mode only), ``verify`` (decode, keep nothing), ``decode`` (the image in
    its normalised mode at its own size) or ``fit`` (decoded and fitted to ``target`` (C, H, W)).
    Runs in worker processes when decoding is parallel, so it only takes and returns plain data.
    """
    with _PixelCap(max_pixels):
        return [_work_one(r, action, target, max_pixels) for r in refs]


def _work_one(r: ImageRef, action: str, target, max_pixels: int) -> tuple:
    try:
        with _open_checked(r, max_pixels) as img:
            w, h = img.size
            mode = effective_mode(img)
            arr, resized = None, False
            if action != "header":
                arr = _mode_array(img)
            if action == "fit":
                fitted, resized = _fit(arr, *target)
                arr = np.ascontiguousarray(np.broadcast_to(fitted, target))
            elif action == "verify":
                arr = None
        return (w, h, mode, arr, None, resized)
    except Exception as e:  # Pillow raises many types for bad files: OSError, SyntaxError, ValueError, ...
        return (0, 0, "", None, _describe(e), False)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_workers(n: int, workers: int | None = None) -> int:
    """Processes that decode ``n`` images: the argument, else ``AUDIT_DECODE_WORKERS``, else one per usable
    CPU (up to 8) when there are at least ``PARALLEL_MIN_IMAGES`` images and more than 2 CPUs, else 1 (in
    this process: on 2 CPUs, starting workers costs about what they save)."""
    from audit.errors import AuditInputError

    if workers is None and os.environ.get("AUDIT_DECODE_WORKERS"):
        try:
            workers = int(os.environ["AUDIT_DECODE_WORKERS"])
        except ValueError:
            raise AuditInputError(f"AUDIT_DECODE_WORKERS={os.environ['AUDIT_DECODE_WORKERS']!r}: "
                                  "must be a whole number of processes") from None
    if workers is None:
        cpus = _usable_cpus()
        workers = min(8, cpus) if n >= PARALLEL_MIN_IMAGES and cpus > 2 else 1
    return max(1, min(int(workers), max(n, 1)))


class _Chunks:
    """Runs :func:`_work` over index chunks in order, in this process or a process pool; the action of
    each chunk is chosen when it is submitted, so a consumer's decisions steer the chunks still to come."""

    def __init__(self, refs: Sequence[ImageRef], workers: int, max_pixels: int = MAX_IMAGE_PIXELS):
        self.refs, self.workers, self.pool, self.max_pixels = refs, workers, None, max_pixels
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the caller may have torch's thread pools running
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def run(self, rows: np.ndarray, choose_action, target=None):
        size = max(16, min(512, len(rows) // (4 * self.workers) + 1))
        chunks = iter([rows[i:i + size] for i in range(0, len(rows), size)])
        if self.pool is None:
            for idx in chunks:
                yield idx, _work([self.refs[i] for i in idx], choose_action(), target, self.max_pixels)
            return
        from collections import deque

        pending: deque = deque()

        def submit(idx):
            pending.append((idx, self.pool.submit(_work, [self.refs[i] for i in idx], choose_action(), target,
                                                  self.max_pixels)))

        for idx in list(islice(chunks, 2 * self.workers)):  # a bounded window keeps memory bounded
            submit(idx)
        while pending:
            idx, fut = pending.popleft()
            yield idx, fut.result()
            nxt = next(chunks, None)
            if nxt is not None:
                submit(nxt)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def decode_images(refs: Sequence[ImageRef], problems: Problems, *, slug: str,
                  memory_budget_mb: float | None = None, cache_dir: str | Path | None = None,
                  workers: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray | None, dict]:
    """Decode ``refs`` into one (N, C, H, W) uint8 array by the module's normalisation rule.

    Every unreadable file (missing, not an image, corrupt or truncated) is recorded in ``problems``
    under its ``name``, and decoding goes on so all of them are found; the array is then ``None``.
    Returns the array (an ``np.ndarray``, or a read-only ``np.memmap`` over the budget) and an info
    dict: ``image_size`` [H, W], ``channels``, ``resized`` and ``converted`` counts, ``source_modes``,
    ``source_sizes`` (the five most common "WxH"), ``source_wh`` (every file's [width, height], only when
    they differ), ``streamed`` and ``cache_file``.
    ``slug`` names the cache file (e.g. the dataset's folder name); ``workers``: see :func:`decode_workers`;
    ``max_pixels``: the largest width × height accepted (see the module docstring).
    """
    budget = memory_budget_bytes(memory_budget_mb)
    n = len(refs)
    ok = np.ones(n, bool)
    key = hashlib.sha256(f"rule{RULE_VERSION}\0max_pixels{max_pixels}".encode())
    for i, r in enumerate(refs):
        if r.path is None:
            key.update(b"%d:" % len(r.data) + hashlib.blake2b(r.data, digest_size=16).digest())
            continue
        try:
            st = os.stat(r.path)
        except FileNotFoundError:
            problems.add(f"{r.name}: no such file ({r.path})")
            ok[i] = False
            continue
        except (OSError, ValueError) as e:  # ValueError: a NUL in the path
            problems.add(f"{r.name}: cannot read ({_describe(e)})")
            ok[i] = False
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.add(f"{r.name}: not a file ({r.path})")
            ok[i] = False
            continue
        # size and mtime alone miss a file rewritten in place with its old time (cp -p, tar): the inode
        # change time (which no copy can set) and the inode number are in the key too
        key.update(f"{os.path.abspath(r.path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n"
                   .encode())
    safe_slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in slug)[:60] or "images"
    cache = _DecodeCache(cache_directory(cache_dir), safe_slug, key.hexdigest()[:20])
    if ok.all() and n:
        hit = cache.load()
        if hit is not None:
            arr, info = hit
            return arr, dict(info, streamed=True, cache_file=str(cache.data))

    chunks = _Chunks(refs, decode_workers(int(ok.sum()), workers), max_pixels)
    try:
        return _decode(refs, problems, ok, budget, cache, chunks)
    finally:
        chunks.close()


def _scan(refs, problems, ok, budget, chunks):
    """Pass 1: size and mode of every file, and its decoded pixels while they fit the budget.
    Returns sizes (N, 2) [w, h], modes, the kept arrays (or None) and which files were fully decoded."""
    n = len(refs)
    sizes = np.zeros((n, 2), np.int64)
    modes: list[str] = [""] * n
    kept: list[np.ndarray | None] = [None] * n
    verified = np.zeros(n, bool)
    state = {"bytes": 0, "keep": True}
    for idx, results in chunks.run(np.flatnonzero(ok), lambda: "decode" if state["keep"] else "header"):
        for i, (w, h, mode, arr, err, _) in zip(idx, results):
            if err is not None:
                ok[i] = False
                problems.add(f"{refs[i].name}: cannot read as an image ({err})")
                continue
            sizes[i], modes[i] = (w, h), mode
            if arr is not None:
                verified[i] = True
                if state["keep"]:
                    kept[i] = arr
                    state["bytes"] += arr.nbytes
                    if state["bytes"] > budget:
                        state["keep"], kept = False, [None] * n
    return sizes, modes, kept, verified


def _decode(refs, problems, ok, budget, cache, chunks) -> tuple[np.ndarray | None, dict]:
    n = len(refs)
    sizes, modes, kept, verified = _scan(refs, problems, ok, budget, chunks)
    good = np.flatnonzero(ok)
    info: dict = {"source_modes": dict(Counter(modes[i] for i in good).most_common()),
                  "source_sizes": {f"{w}x{h}": c for (w, h), c in Counter(map(tuple, sizes[good].tolist())).most_common(5)},
                  "streamed": False, "cache_file": None}
    if len(good) == 0:
        return None, info
    c = 1 if all(modes[i] in GREY_MODES for i in good) else 3
    w, h = _target_size(sizes[good])
    target_mode = "L" if c == 1 else "RGB"
    info.update(image_size=[h, w], channels=c, mode=target_mode,
                converted=int(sum(modes[i] != target_mode for i in good)))
    if len(np.unique(sizes[good], axis=0)) > 1:  # each file's [width, height] before fitting (odd_size)
        info["source_wh"] = sizes.tolist()
    if problems:  # refuse, but first decode what pass 1 only opened, to report every bad file at once
        for idx, results in chunks.run(good[~verified[good]], lambda: "verify"):
            for i, res in zip(idx, results):
                if res[4] is not None:
                    problems.add(f"{refs[i].name}: cannot read as an image ({res[4]})")
        return None, info
    streamed = n * c * h * w > budget
    out = cache.create((n, c, h, w)) if streamed else np.empty((n, c, h, w), np.uint8)
    try:
        info["resized"] = _fill(out, refs, problems, kept, chunks)
    except BaseException:
        if streamed:
            del out
            cache.discard()
        raise
    if problems:
        if streamed:
            del out
            cache.discard()
        return None, info
    if streamed:
        out, info = cache.commit(out, info)
        info = dict(info, streamed=True, cache_file=str(cache.data))
    return out, info


def _fill(out: np.ndarray, refs, problems, kept, chunks) -> int:
    """Pass 2: fit every image into ``out`` (N, C, H, W), in RAM or a memmap; returns how many were resized."""
    _, c, h, w = out.shape
    resized = 0
    in_hand = np.array([a is not None for a in kept], bool)
    for i in np.flatnonzero(in_hand):
        out[i], was_resized = _fit(kept[i], c, h, w)
        kept[i] = None  # free as we go: peak memory stays near one copy
        resized += was_resized
    for idx, results in chunks.run(np.flatnonzero(~in_hand), lambda: "fit", (c, h, w)):
        for i, (_, _, _, arr, err, was_resized) in zip(idx, results):
            if err is not None:
                problems.add(f"{refs[i].name}: cannot read as an image ({err})")
                continue
            out[i] = arr
            resized += was_resized
    return resized
