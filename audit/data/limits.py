"""Bounds checked before anything is allocated, so no input file can make a load run out of memory.

* :data:`MAX_CLASSES`: at most 100,000 classes (ImageNet-21k has 21,841). A label ≥ this, or a class list
  longer, is refused naming the row or file, before any per-class array is built.
* :data:`MAX_IMAGE_PIXELS`: one image file may hold at most 50 megapixels (width × height, e.g.
  8,660 × 5,773); a larger one is refused from its header, before it is decoded. Raise it with
  ``load_dataset(..., max_image_pixels=N)`` or ``AUDIT_MAX_IMAGE_PIXELS=N``. Pillow's own
  decompression-bomb guard is set to the same value while decoding.
* Sizes declared inside files are checked against the file's size: idx headers (MNIST), the lengths in
  CIFAR pickles, and each ``.npy`` member of an ``.npz`` (its header's shape against the member's size,
  the member's size against the archive's: stored, or deflated at most :data:`DEFLATE_MAX_RATIO` : 1).
* :data:`MAX_PICKLE_BYTES`: a CIFAR pickle larger than 4 GiB is refused (CIFAR-100's train file is 150 MB).
"""

from __future__ import annotations

import os

from audit.errors import AuditInputError

MAX_CLASSES = 100_000
MAX_IMAGE_PIXELS = 50_000_000
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than this (zlib's technical maximum)
MAX_PICKLE_BYTES = 4 * 2**30
MAX_LABEL_DIGITS = len(str(MAX_CLASSES))


def image_pixel_cap(value: int | None = None) -> int:
    """The pixel cap in force: the argument, else ``AUDIT_MAX_IMAGE_PIXELS``, else :data:`MAX_IMAGE_PIXELS`."""
    where = "max_image_pixels"
    if value is None and os.environ.get("AUDIT_MAX_IMAGE_PIXELS"):
        value, where = os.environ["AUDIT_MAX_IMAGE_PIXELS"], "AUDIT_MAX_IMAGE_PIXELS"
    if value is None:
        return MAX_IMAGE_PIXELS
    try:
        cap = int(value)
    except (TypeError, ValueError):
        raise AuditInputError(f"{where}={value!r}: must be a whole number of pixels") from None
    if cap < 1 or isinstance(value, bool):
        raise AuditInputError(f"{where}={value!r}: must be a whole number of pixels ≥ 1")
    return cap


def label_too_large(text: str) -> bool:
    """Whether the integer written ``text`` (digits, optional sign) is ≥ :data:`MAX_CLASSES`, without
    converting it (Python refuses to convert more than 4,300 digits)."""
    digits = text.lstrip("+-").lstrip("0")
    return len(digits) > MAX_LABEL_DIGITS or (digits != "" and int(digits) >= MAX_CLASSES)
