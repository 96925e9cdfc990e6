"""Read and write the safetensors format with NumPy alone (no pickle, no code execution).

Layout (https://github.com/huggingface/safetensors, "Format"):
    8 bytes      N, little-endian unsigned 64-bit: the length of the header
    N bytes      UTF-8 JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
                 "__metadata__": {str: str}}  (padded with spaces)
    rest         the byte buffer; tensor `name` is bytes [b, e) of it, C order, little-endian.

`save_file` writes atomically: to a temporary file in the same directory, flushed and fsynced,
then renamed over the target, so a crash never leaves a half-written checkpoint behind.
"""
import json
import os
import struct

import numpy as np

from minitx.fileio import atomic_write

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A file is not a valid safetensors file (truncated, corrupted, or an unknown dtype)."""


def save_file(tensors, path, metadata=None):
    """Write a dict of ndarrays to `path` atomically.

    Args:
        tensors: {name: ndarray}; dtypes among F64/F32/F16/I64/.../U8/BOOL.
        path: destination file.
        metadata: optional {str: str}, stored under "__metadata__".
    """
    header, offset, arrays = {}, 0, []
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        a = a if a.flags.c_contiguous else a.copy(order="C")     # keeps 0-d arrays 0-d
        key = _NAMES.get(a.dtype.newbyteorder("<"))
        if key is None:
            raise TypeError(f"safetensors cannot store {name!r} of dtype {a.dtype}")
        a = a.astype(_DTYPES[key], copy=False)
        header[name] = {"dtype": key, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    _atomic_write(path, [struct.pack("<Q", len(blob)), blob] + [a.tobytes() for a in arrays])


def _atomic_write(path, chunks):
    atomic_write(path, chunks)


def read_header(path):
    """Return (header dict without metadata, metadata dict, byte offset of the data buffer)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{path}: truncated file ({size} bytes), not safetensors")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, _MAX_HEADER):
                raise SafetensorsError(f"{path}: header length {n} exceeds the file size "
                                       f"{size}: truncated or not a safetensors file")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: corrupted safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    _validate(path, header, size - 8 - n)
    return header, metadata, 8 + n


def _validate(path, header, buffer_size):
    spans = []
    for name, info in header.items():
        try:
            dt = _DTYPES.get(info["dtype"]) if info["dtype"] != "BF16" else np.dtype("<u2")
            shape, (b, e) = [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: malformed entry for tensor {name!r}") from None
        if dt is None:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        if not (0 <= b <= e <= buffer_size) or e - b != int(np.prod(shape)) * dt.itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} offsets [{b}, {e}) do not fit its "
                                   f"shape {shape} or the {buffer_size}-byte buffer (truncated?)")
        spans.append((b, e))
    spans.sort()
    for (b0, e0), (b1, e1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors overlap in the data buffer")


def load_file(path, names=None):
    """Read tensors from a safetensors file.

    Args:
        path: the file.
        names: optional iterable of tensor names to read (default: all).
    Returns:
        {name: ndarray}. BF16 tensors are widened to float32 (NumPy has no bfloat16).
    """
    header, _, start = read_header(path)
    wanted = header.keys() if names is None else names
    out = {}
    with open(path, "rb") as f:
        for name in wanted:
            if name not in header:
                raise KeyError(f"{path}: no tensor named {name!r}")
            info = header[name]
            b, e = info["data_offsets"]
            f.seek(start + b)
            raw = f.read(e - b)
            if len(raw) != e - b:
                raise SafetensorsError(f"{path}: truncated while reading {name!r}")
            if info["dtype"] == "BF16":     # bfloat16 = the top 16 bits of a float32
                a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, _DTYPES[info["dtype"]]).copy()
            out[name] = a.reshape(info["shape"])
    return out


def load_metadata(path):
    """The "__metadata__" dict of a safetensors file."""
    return read_header(path)[1]
