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
import math
import os
import reprlib
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
_MAX_HEADER = 100 * 1024 * 1024        # the reference implementation's limit
_MAX_NDIM = 32                          # NumPy 1.x's limit on array dimensions
_MAX_BYTES = 2 ** 63 - 1                # NumPy's limit on an array's size in bytes


class SafetensorsError(ValueError):
    """A file is not a valid safetensors file (truncated, corrupted, an unknown dtype, ...),
    or its weights are not finite (`check_finite`)."""


def save_file(tensors, path, metadata=None):
    """Write a dict of ndarrays to `path` atomically.

    Args:
        tensors: {name: ndarray}; dtypes among F64/F32/F16/I64/.../U8/BOOL.
        path: destination file.
        metadata: optional {str: str}, stored under "__metadata__".
    """
    header, offset, arrays = {}, 0, []
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"safetensors tensor names are strings other than '__metadata__', "
                             f"got {name!r}")
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
    """Read and validate the header of a safetensors file.

    Every check runs on the JSON alone, against the file's size, before any tensor byte is read
    or allocated: a corrupted file raises SafetensorsError naming the problem, never another
    exception and never a large allocation.

    Args:
        path: the file.
    Returns:
        (header, metadata, start): header {name: {"dtype": str, "shape": [int], "data_offsets":
        [b, e]}} without "__metadata__", metadata {str: str}, and the byte offset of the buffer.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: truncated file ({size} bytes), not safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):                # before reading (allocating) n bytes
            raise SafetensorsError(f"{path}: header length {n} exceeds the file size {size} "
                                   f"(or the {_MAX_HEADER}-byte limit): truncated or not a "
                                   f"safetensors file")
        blob = f.read(n)
    if len(blob) != n:
        raise SafetensorsError(f"{path}: truncated while reading the {n}-byte header")
    header = _parse_json(path, blob)
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not (isinstance(metadata, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings, got "
                               f"{_short(metadata)}")
    _validate(path, header, size - 8 - n)
    return header, metadata, 8 + n


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        names = [k for k, _ in pairs]
        raise ValueError(f"duplicate key {next(k for k in names if names.count(k) > 1)!r}")
    return out


def _parse_json(path, blob):
    """The header as a dict; strict JSON (no NaN/Infinity, no duplicate keys)."""
    try:
        header = json.loads(blob.decode("utf-8"), parse_constant=_reject_constant,
                            object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError, JSONDecodeError, int digits
        raise SafetensorsError(f"{path}: corrupted safetensors header "
                               f"({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object but {type(header).__name__}")
    return header


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _short(value):
    """A bounded repr (depth and length), safe on deeply nested or huge JSON values."""
    return _REPR.repr(value)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entry(path, name, info, buffer_size):
    """(dtype, shape, begin, end) of one header entry, every field checked."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise SafetensorsError(f"{path}: entry for tensor {name!r} must be an object with "
                               f"dtype, shape and data_offsets, got {_short(info)}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or (code not in _DTYPES and code != "BF16"):
        raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {_short(code)}; "
                               f"known: {sorted(_DTYPES) + ['BF16']}")
    itemsize = 2 if code == "BF16" else _DTYPES[code].itemsize
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_int(s) and s >= 0 for s in shape)):
        raise SafetensorsError(f"{path}: tensor {name!r} has shape {_short(shape)}; expected a "
                               f"list of at most {_MAX_NDIM} non-negative integers")
    if math.prod(max(s, 1) for s in shape) * itemsize > _MAX_BYTES:
        raise SafetensorsError(f"{path}: tensor {name!r} has shape {_short(shape)}, too large "
                               f"for an array")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise SafetensorsError(f"{path}: tensor {name!r} has data_offsets {_short(offsets)}; "
                               f"expected [begin, end] integers")
    b, e = offsets
    if not 0 <= b <= e <= buffer_size:
        raise SafetensorsError(f"{path}: tensor {name!r} offsets [{b}, {e}) lie outside the "
                               f"{buffer_size}-byte data buffer (truncated?)")
    if e - b != math.prod(shape) * itemsize:
        raise SafetensorsError(f"{path}: tensor {name!r} offsets [{b}, {e}) hold {e - b} bytes, "
                               f"its shape {shape} of {code} needs {math.prod(shape) * itemsize}")
    return code, shape, b, e


def _validate(path, header, buffer_size):
    """Check every entry, then that the tensors tile the buffer exactly (no hole, no overlap)."""
    spans = sorted((b, e, name) for name, info in header.items()
                   for _, _, b, e in [_check_entry(path, name, info, buffer_size)])
    end = 0
    for b, e, name in spans:
        if b < end:
            raise SafetensorsError(f"{path}: tensor {name!r} [{b}, {e}) overlaps the tensor "
                                   f"before it (which ends at {end})")
        if b > end:
            raise SafetensorsError(f"{path}: bytes [{end}, {b}) of the data buffer belong to no "
                                   f"tensor (the format forbids holes)")
        end = e
    if end != buffer_size:
        raise SafetensorsError(f"{path}: bytes [{end}, {buffer_size}) of the data buffer belong "
                               f"to no tensor (trailing data or a corrupted header)")


def load_file(path, names=None):
    """Read tensors from a safetensors file.

    Args:
        path: the file.
        names: optional iterable of tensor names to read (default: all).
    Returns:
        {name: ndarray}. BF16 tensors are widened to float32 (NumPy has no bfloat16). Values are
        not checked: call `check_finite` before using them as model weights.
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
            raw = bytearray(e - b)                # at most the file's size (checked above)
            if f.readinto(raw) != e - b:
                raise SafetensorsError(f"{path}: truncated while reading {name!r}")
            if info["dtype"] == "BF16":     # bfloat16 = the top 16 bits of a float32
                a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, _DTYPES[info["dtype"]])   # writable: owns `raw`
            out[name] = a.reshape(info["shape"])
    return out


def check_finite(tensors, path):
    """Raise SafetensorsError naming the first floating tensor holding NaN or +-inf.

    The reader loads such values as they are (they are valid IEEE bytes); model loaders call this
    before using them as weights.

    Args:
        tensors: {name: ndarray}.
        path: the file they came from (for the message).
    Returns:
        `tensors`, unchanged.
    """
    for name, a in tensors.items():
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a))
            raise SafetensorsError(f"{path}: tensor {name!r} holds {bad.size} non-finite "
                                   f"value(s) (first {a.reshape(-1)[bad[0]]} at flat index "
                                   f"{bad[0]}); refusing to load it as weights")
    return tensors


def load_metadata(path):
    """The "__metadata__" dict of a safetensors file."""
    return read_header(path)[1]
