"""Counting helpers shared by the metrics: unique values and (a, b) pair counts of label maps.

Everything here is a bincount over compacted IDs, never a Python loop over pixels. IDs are
compacted through a dense lookup table when their range is small (the common case: panoptic
IDs of a few dozen classes), and through a sort (``np.unique``) otherwise, so huge label
divisors stay correct, only slower.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from videocups_ray.data.types import DataError

# Largest ID range compacted through a dense lookup table (int64: 32 MiB at the limit).
_DENSE_RANGE_LIMIT = 1 << 22
# Largest dense (a x b) pair table before falling back to compacting the pair index.
_DENSE_PAIR_LIMIT = 1 << 22


def compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique values, index of each value into them)`` of a 1-D int64 array."""
    if values.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    # A dense table costs O(span); a sort costs O(n log n). Prefer the table when it is smaller.
    if span <= _DENSE_RANGE_LIMIT and span <= 4 * values.size + 65536:
        shifted = values - lo if lo != 0 else values
        present = np.bincount(shifted, minlength=span)
        uniq = np.flatnonzero(present)
        lut = np.zeros(span, np.int64)
        lut[uniq] = np.arange(uniq.size, dtype=np.int64)
        return uniq.astype(np.int64) + lo, lut[shifted]
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq.astype(np.int64), inverse.reshape(-1).astype(np.int64)


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique values, pixel count of each)`` of a 1-D int64 array."""
    uniq, inverse = compact(values)
    return uniq, np.bincount(inverse, minlength=uniq.size).astype(np.int64)


def pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-occurrence counts of two equally long 1-D int64 arrays: ``(a_ids, b_ids, counts)``,
    one entry per pair that occurs, sorted by (a, b)."""
    return pair_counts_compacted(*compact(a), *compact(b))


def pair_counts_compacted(ua: np.ndarray, ia: np.ndarray, ub: np.ndarray,
                          ib: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pair_counts` of two arrays already compacted to ``(unique, index)``."""
    nb = max(ub.size, 1)
    index = ia * nb + ib
    if ua.size * nb <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(index, minlength=ua.size * nb)
        nz = np.flatnonzero(counts)
        return ua[nz // nb], ub[nz % nb], counts[nz].astype(np.int64)
    upair, inverse = compact(index)
    counts = np.bincount(inverse, minlength=upair.size).astype(np.int64)
    return ua[upair // nb], ub[upair % nb], counts


def decode_classes(ids: np.ndarray, label_divisor: int, num_classes: int, ignore_label: int,
                   name: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split panoptic IDs and compact their classes: ``(classes present, class index per
    pixel, instance per pixel)``. Checks the classes (see :func:`check_semantic_range`) on
    the few unique values instead of on every pixel."""
    semantic, instance = split_panoptic(ids, label_divisor)
    classes, index = compact(semantic)
    check_semantic_range(classes, num_classes, ignore_label, label_divisor, name, where)
    return classes, index, instance


def compact_panoptic(classes: np.ndarray, class_index: np.ndarray, instance: np.ndarray,
                     label_divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """``(unique panoptic IDs, index per pixel)`` from a :func:`decode_classes` result.

    Panoptic IDs span ``classes * label_divisor``; coding them as ``class index * stride +
    instance`` with ``stride = max instance + 1`` keeps the dense lookup table small.
    """
    if class_index.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    stride = int(instance.max()) + 1
    codes, index = compact(class_index * stride + instance)
    return classes[codes // stride] * label_divisor + codes % stride, index


def reduce_pairs(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``counts`` over equal (a, b) keys (small arrays: per-frame tables, not pixels)."""
    if a.size == 0:
        return a.astype(np.int64), b.astype(np.int64), counts.astype(np.int64)
    order = np.lexsort((b, a))
    a, b, counts = a[order], b[order], counts[order]
    starts = np.flatnonzero(np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    return a[starts], b[starts], np.add.reduceat(counts, starts).astype(np.int64)


def reduce_values(a: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``counts`` over equal keys of ``a`` (small arrays)."""
    if a.size == 0:
        return a.astype(np.int64), counts.astype(np.int64)
    uniq, inverse = np.unique(a, return_inverse=True)
    return uniq.astype(np.int64), np.bincount(inverse.reshape(-1), weights=counts,
                                              minlength=uniq.size).astype(np.int64)


def split_panoptic(ids: np.ndarray, label_divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """``(semantic, instance)`` of ``semantic * label_divisor + instance`` IDs (int64)."""
    if label_divisor & (label_divisor - 1) == 0:  # power of two: shift and mask are cheaper
        shift = label_divisor.bit_length() - 1
        return ids >> shift, ids & (label_divisor - 1)
    semantic = ids // label_divisor
    return semantic, ids - semantic * label_divisor


def check_label_pair(gt: np.ndarray, pred: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (ground truth, prediction) pair of panoptic maps; return them as int64.

    ``where`` names the sequence and frame in error messages.
    """
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if not isinstance(arr, np.ndarray):
            raise DataError(f"{where}: {name} must be a numpy array, got {type(arr).__name__}")
        if arr.ndim != 2:
            raise DataError(f"{where}: {name} must be a 2-D HxW label map, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise DataError(f"{where}: {name} must hold integer panoptic IDs, got dtype {arr.dtype}")
    if gt.shape != pred.shape:
        raise DataError(f"{where}: ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    gt64 = gt.astype(np.int64, copy=False).reshape(-1)
    pred64 = pred.astype(np.int64, copy=False).reshape(-1)
    for name, arr in (("ground truth", gt64), ("prediction", pred64)):
        if arr.size and int(arr.min()) < 0:
            raise DataError(f"{where}: {name} holds negative panoptic ID {int(arr.min())}")
    return gt64, pred64


def check_semantic_range(semantic: np.ndarray, num_classes: int, ignore_label: int,
                         label_divisor: int, name: str, where: str) -> None:
    """Every class must be in ``[0, num_classes)`` or the ignore label, else the ID is bad
    (most often an instance ID at or beyond ``label_divisor`` spilling into the class)."""
    if semantic.size == 0:
        return
    bad = (semantic >= num_classes) & (semantic != ignore_label)
    if bad.any():
        value = int(semantic[np.argmax(bad)])
        raise DataError(
            f"{where}: {name} has class {value} (panoptic ID // {label_divisor}), not in "
            f"[0, {num_classes}) and not the ignore label {ignore_label}; an instance ID >= "
            f"label_divisor or a wrong label_divisor gives this")


def check_thing_classes(things: Iterable[int], num_classes: int, ignore_label: int) -> tuple[int, ...]:
    """``things`` as a tuple of ints; ValueError unless each is a class ID other than the ignore label."""
    things = tuple(int(t) for t in things)
    for t in things:
        if not 0 <= t < num_classes or t == ignore_label:
            raise ValueError(f"thing class {t} must be in [0, {num_classes}) and not the ignore label")
    return things


def class_masks(num_classes: int, things: tuple[int, ...], ignore_label: int,
                size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(is_thing, is_valid)`` boolean tables over class IDs ``[0, size)`` (size defaults to
    ``num_classes``); the ignore label, when it falls inside the table, is not valid."""
    size = num_classes if size is None else size
    is_thing = np.zeros(size, bool)
    is_thing[list(things)] = True
    is_valid = np.ones(size, bool)
    if ignore_label < size:
        is_valid[ignore_label] = False
    return is_thing, is_valid
