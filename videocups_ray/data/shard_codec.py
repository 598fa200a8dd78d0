"""The shard row format: Arrow schema, and encoding/decoding of one frame's arrays.

Each row is one frame. Arrays are stored as binary cells, encoded by a codec named in the
row itself (``image_codec``, ``label_codec``), so a reader never has to guess and a batch
decoder inside Ray ``map_batches`` (which sees columns, not file metadata) can decode rows
on its own. Codecs:

- ``png``: image as 8-bit RGB PNG; semantic as 8-bit grey PNG; instance as 16-bit grey PNG
  when every ID fits, else as 4-channel 8-bit PNG of the little-endian int32 bytes; ignore
  as an 8-bit 0/1 PNG.
- ``raw``: C-order little-endian bytes (uint8 image and semantic, int32 instance), ignore
  bit-packed (``np.packbits``); the Parquet zstd page compression does the rest.

Depth (float32 metres) and flow (float32 HxWx2, NaN where invalid) are always raw: they are
evaluation ground truth and must round-trip exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from videocups_ray.data.encodings import decode_png, encode_png
from videocups_ray.data.types import DataError, Frame

SCHEMA_VERSION = "1"

SHARD_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("image_codec", pa.string(), nullable=False),  # "png" | "raw"
        pa.field("label_codec", pa.string(), nullable=False),  # "png" | "raw"
        pa.field("image", pa.binary(), nullable=False),  # HxWx3 uint8 RGB
        pa.field("semantic", pa.binary(), nullable=False),  # HxW uint8, 255 = ignore
        pa.field("instance", pa.binary(), nullable=False),  # HxW int32 track ID, 0 = none
        pa.field("ignore", pa.binary(), nullable=False),  # HxW bool, True = drop in training
        pa.field("depth", pa.binary(), nullable=True),  # HxW float32 metres, raw
        pa.field("flow", pa.binary(), nullable=True),  # HxWx2 float32 px, NaN = invalid, raw
    ],
    metadata={b"videocups.schema_version": SCHEMA_VERSION.encode()},
)
CODECS = ("png", "raw")


def _check(arr: np.ndarray | None, shape: tuple[int, ...], name: str, key: str) -> np.ndarray:
    if arr is None:
        raise DataError(f"{key}: {name} is missing")
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise DataError(f"{key}: {name} has shape {arr.shape}, expected {shape}")
    return arr


def encode_row(video_id: str, frame_index: int, image: np.ndarray, semantic: np.ndarray,
               instance: np.ndarray, ignore: np.ndarray, depth: np.ndarray | None = None,
               flow: np.ndarray | None = None, flow_valid: np.ndarray | None = None, *,
               image_codec: str = "png", label_codec: str = "png", png_level: int = 1) -> dict[str, Any]:
    """One shard row (a dict of column -> Python value) from a frame's arrays."""
    key = f"video {video_id!r} frame {frame_index}"
    if image_codec not in CODECS or label_codec not in CODECS:
        raise ValueError(f"{key}: codecs must be in {CODECS}, got {image_codec!r}/{label_codec!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{key}: image must be HxWx3 uint8, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    semantic = _check(semantic, (h, w), "semantic", key)
    instance = _check(instance, (h, w), "instance", key)
    ignore = _check(ignore, (h, w), "ignore", key).astype(bool)
    if semantic.min(initial=0) < 0 or semantic.max(initial=0) > 255:
        raise DataError(f"{key}: semantic IDs must lie in [0, 255]")
    semantic = semantic.astype(np.uint8)
    instance = instance.astype("<i4")
    if instance.min(initial=0) < 0:
        raise DataError(f"{key}: negative instance ID {int(instance.min())}")
    if image_codec == "png":
        image_bytes = encode_png(image, level=png_level)
    else:
        image_bytes = np.ascontiguousarray(image).tobytes()
    if label_codec == "png":
        sem_bytes = encode_png(semantic, level=png_level)
        if instance.max(initial=0) <= 65535:
            inst_bytes = encode_png(instance.astype(np.uint16), level=png_level)
        else:
            inst_bytes = encode_png(np.ascontiguousarray(instance).view(np.uint8).reshape(h, w, 4), level=png_level)
        ign_bytes = encode_png(ignore.astype(np.uint8), level=png_level)
    else:
        sem_bytes = semantic.tobytes()
        inst_bytes = np.ascontiguousarray(instance).tobytes()
        ign_bytes = np.packbits(ignore.ravel()).tobytes()
    depth_bytes = None
    if depth is not None:
        depth_bytes = _check(depth, (h, w), "depth", key).astype("<f4").tobytes()
    flow_bytes = None
    if flow is not None:
        f = _check(flow, (h, w, 2), "flow", key).astype("<f4", copy=True)
        if flow_valid is not None:
            f[~_check(flow_valid, (h, w), "flow_valid", key).astype(bool)] = np.nan
        flow_bytes = f.tobytes()
    return {"video_id": str(video_id), "frame_index": int(frame_index), "height": h, "width": w,
            "image_codec": image_codec, "label_codec": label_codec, "image": image_bytes,
            "semantic": sem_bytes, "instance": inst_bytes, "ignore": ign_bytes,
            "depth": depth_bytes, "flow": flow_bytes}


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns = {f.name: [r[f.name] for r in rows] for f in SHARD_SCHEMA}
    return pa.table(columns, schema=SHARD_SCHEMA)


# --------------------------------------------------------------------------- decoding
def _raw(data: bytes, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise DataError(f"{what}: {len(data)} bytes, expected {expected} for {dtype} {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def _png(data: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = decode_png(data, what)
    if arr.shape[:2] != shape[:2]:
        raise DataError(f"{what}: decoded size {arr.shape[:2]} differs from the row's {shape[:2]}")
    return arr


def decode_arrays(row: dict[str, Any], what: str) -> dict[str, np.ndarray | None]:
    """Arrays of one row: image, semantic, instance, ignore, depth, flow, flow_valid."""
    h, w = int(row["height"]), int(row["width"])
    key = f"{what} video {row['video_id']!r} frame {row['frame_index']}"
    out: dict[str, np.ndarray | None] = {}
    codec = row["image_codec"]
    if codec == "png":
        out["image"] = _png(row["image"], (h, w), f"{key} image")
    elif codec == "raw":
        out["image"] = _raw(row["image"], "u1", (h, w, 3), f"{key} image")
    else:
        raise DataError(f"{key}: unknown image codec {codec!r}")
    codec = row["label_codec"]
    if codec == "png":
        out["semantic"] = _png(row["semantic"], (h, w), f"{key} semantic")
        inst = _png(row["instance"], (h, w), f"{key} instance")
        if inst.ndim == 3:
            inst = np.ascontiguousarray(inst).view("<i4").reshape(h, w)
        out["instance"] = inst.astype(np.int32)
        out["ignore"] = _png(row["ignore"], (h, w), f"{key} ignore") > 0
    elif codec == "raw":
        out["semantic"] = _raw(row["semantic"], "u1", (h, w), f"{key} semantic")
        out["instance"] = _raw(row["instance"], "<i4", (h, w), f"{key} instance")
        bits = np.frombuffer(row["ignore"], np.uint8)
        if len(bits) != (h * w + 7) // 8:
            raise DataError(f"{key} ignore: {len(bits)} bytes, expected {(h * w + 7) // 8}")
        out["ignore"] = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
    else:
        raise DataError(f"{key}: unknown label codec {codec!r}")
    depth = row.get("depth")
    out["depth"] = None if depth is None else _raw(depth, "<f4", (h, w), f"{key} depth")
    flow = row.get("flow")
    if flow is None:
        out["flow"] = out["flow_valid"] = None
    else:
        f = _raw(flow, "<f4", (h, w, 2), f"{key} flow")
        valid = np.isfinite(f).all(axis=-1)
        f[~valid] = 0.0
        out["flow"], out["flow_valid"] = f, valid
    return out


def row_to_frame(row: dict[str, Any], what: str) -> Frame:
    """A decoded :class:`Frame`; the ignore mask goes to ``extra["ignore"]``."""
    a = decode_arrays(row, what)
    return Frame(video_id=row["video_id"], frame_index=int(row["frame_index"]), image=a["image"],
                 semantic=a["semantic"], instance=a["instance"], depth=a["depth"], flow=a["flow"],
                 flow_valid=a["flow_valid"], extra={"ignore": a["ignore"]})


def _stack(values: list[np.ndarray | None]) -> np.ndarray:
    """Stack equal-shape arrays; otherwise (sizes differ, or some missing) an object array."""
    if values and all(v is not None for v in values) and len({v.shape for v in values}) == 1:
        return np.stack(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values if values else []
    return out


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode a Ray Data numpy batch of shard rows (``map_batches(decode_batch, batch_format="numpy")``).

    Returns video_id, frame_index and stacked image (N,H,W,3 uint8), semantic (N,H,W uint8),
    instance (N,H,W int32), ignore (N,H,W bool); depth, flow and flow_valid when the rows hold
    them. Frames of different sizes, or a column missing in some rows, give object arrays.
    """
    n = len(batch["video_id"])
    names = [k for k in SHARD_SCHEMA.names if k in batch]
    rows = [{k: batch[k][i] for k in names} for i in range(n)]
    decoded = [decode_arrays(r, "shard batch") for r in rows]
    out = {"video_id": np.asarray([str(v) for v in batch["video_id"]]),
           "frame_index": np.asarray(batch["frame_index"], dtype=np.int32)}
    for name in ("image", "semantic", "instance", "ignore"):
        out[name] = _stack([d[name] for d in decoded])
    for name in ("depth", "flow", "flow_valid"):
        values = [d[name] for d in decoded]
        if any(v is not None for v in values):
            out[name] = _stack(values)
    return out
