"""Write GGUF files (the reader and the format description are in `minitx.gguf`).

`write_gguf(path, metadata, tensors)` writes the header, typed metadata (with explicit or
inferred value types), tensor infos and the aligned data section, atomically (temporary file,
fsync, rename), as `minitx.safetensors.save_file` does.
"""
import struct

import numpy as np

from minitx.gguf import (DEFAULT_ALIGNMENT, GGUF_MAGIC, TENSOR_DTYPES, VALUE_TYPE_IDS,
                         VALUE_TYPES)
from minitx.quant.ggml_types import ggml_type
from minitx.safetensors import _atomic_write


def _infer_type(value):
    """The metadata type name for a Python value (see `write_gguf`)."""
    if isinstance(value, (bool, np.bool_)):
        return "BOOL"
    if isinstance(value, (int, np.integer)):
        if 0 <= value < 2**32:
            return "UINT32"
        return "INT64" if -2**63 <= value < 2**63 else "UINT64"
    if isinstance(value, (float, np.floating)):
        return "FLOAT32"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, (list, tuple)):
        if not value:
            raise TypeError("cannot infer the element type of an empty array; give value_types")
        inner = _infer_type(value[0])
        return f"ARRAY[{'INT32' if inner == 'UINT32' else inner}]"
    raise TypeError(f"cannot store metadata value {value!r} of type {type(value).__name__}")


def _encode_value(type_name, value, out):
    if type_name.startswith("ARRAY[") and type_name.endswith("]"):
        inner = type_name[6:-1]
        out.append(struct.pack("<IQ", VALUE_TYPE_IDS[inner.split("[")[0]], len(value)))
        for v in value:
            _encode_value(inner, v, out)
    elif type_name == "STRING":
        raw = value.encode("utf-8")
        out.append(struct.pack("<Q", len(raw)) + raw)
    elif type_name in VALUE_TYPE_IDS and VALUE_TYPES[VALUE_TYPE_IDS[type_name]][1]:
        out.append(struct.pack(VALUE_TYPES[VALUE_TYPE_IDS[type_name]][1], value))
    else:
        raise ValueError(f"unknown metadata type {type_name!r}; known: {sorted(VALUE_TYPE_IDS)}"
                         f" or ARRAY[<type>]")


def _tensor_bytes(name, value):
    """(type id, ne, bytes) for a tensor given as an ndarray or (type name, shape, raw bytes)."""
    if isinstance(value, np.ndarray):
        names = {np.dtype(v): k for k, v in TENSOR_DTYPES.items()}
        key = names.get(value.dtype.newbyteorder("<"))
        if key is None:
            raise TypeError(f"tensor {name!r}: no GGUF type for dtype {value.dtype}")
        a = np.ascontiguousarray(value, dtype=TENSOR_DTYPES[key])
        return ggml_type(key).id, tuple(reversed(a.shape)) or (1,), a.tobytes()
    type_name, shape, raw = value
    t = ggml_type(type_name)
    ne = tuple(reversed(tuple(shape)))
    raw = np.ascontiguousarray(raw, dtype=np.uint8).tobytes()
    expected = int(np.prod(ne)) // t.block_size * t.type_size
    if ne[0] % t.block_size or len(raw) != expected:
        raise ValueError(f"tensor {name!r}: {len(raw)} bytes do not fit {t.name} of shape "
                         f"{tuple(shape)} (expected {expected}, ne[0] % {t.block_size} == 0)")
    return t.id, ne, raw


def write_gguf(path, metadata, tensors, value_types=None, alignment=DEFAULT_ALIGNMENT,
               version=3):
    """Write a GGUF file atomically.

    Args:
        path: destination.
        metadata: {key: value}; value str, bool, int, float, or (nested) lists of them.
        tensors: {name: ndarray (F32/F16/F64/I8..I64)} or {name: (type name, NumPy shape,
            uint8 raw blocks)} for block-quantized data (see `minitx.quant.ggml`).
        value_types: optional {key: "UINT32" | "FLOAT32" | ... | "ARRAY[INT32]"} overriding the
            inferred types (non-negative int -> UINT32, float -> FLOAT32, list -> ARRAY[...]).
        alignment: data alignment; written as general.alignment when not 32.
    """
    value_types = dict(value_types or {})
    metadata = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT:
        metadata["general.alignment"] = alignment
        value_types["general.alignment"] = "UINT32"
    out = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(metadata))]
    for key, value in metadata.items():
        type_name = value_types.get(key) or _infer_type(value)
        _encode_value("STRING", key, out)
        out.append(struct.pack("<I", VALUE_TYPE_IDS[type_name.split("[")[0]]))
        _encode_value(type_name, value, out)
    blobs, offset = [], 0
    for name, value in tensors.items():
        type_id, ne, raw = _tensor_bytes(name, value)
        _encode_value("STRING", name, out)
        out.append(struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne))
        out.append(struct.pack("<IQ", type_id, offset))
        pad = -len(raw) % alignment
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    head = b"".join(out)
    _atomic_write(path, [head, b"\0" * (-len(head) % alignment)] + blobs)
