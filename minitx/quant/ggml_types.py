"""ggml's tensor types: id, name, block length and bytes per block.

Every ggml type stores a row as whole blocks: `block_size` consecutive values of the row
(ggml's ne[0], the fastest-varying dimension) share one block of `type_size` bytes. Plain types
are blocks of one value (F32: 1 value in 4 bytes). A row of n values takes
n / block_size * type_size bytes, so n must be a multiple of block_size.

The ids are ggml's `enum ggml_type` (ggml/include/ggml.h); ids 4, 5 and 31-33, 36-38 were
removed upstream and are not valid in a file. minitx can read the layout (sizes) of all these
types; which ones it can *decode* is `minitx.quant.ggml.DEQUANTIZERS`.
"""
import collections

GGMLType = collections.namedtuple("GGMLType", "id name block_size type_size")

_TABLE = [
    # id  name       values/block  bytes/block
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),       # fp16 d + 16 bytes of nibbles
    (3, "Q4_1", 32, 20),       # fp16 d, fp16 m + 16 bytes of nibbles
    (6, "Q5_0", 32, 22),       # fp16 d + 4 bytes of high bits + 16 bytes of nibbles
    (7, "Q5_1", 32, 24),       # fp16 d, fp16 m + 4 + 16
    (8, "Q8_0", 32, 34),       # fp16 d + 32 int8
    (9, "Q8_1", 32, 36),       # fp16 d, fp16 s + 32 int8
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
]

GGML_TYPES = {i: GGMLType(i, name, bs, ts) for i, name, bs, ts in _TABLE}
GGML_TYPE_IDS = {t.name: t.id for t in GGML_TYPES.values()}


def ggml_type(key):
    """The GGMLType for an id (int) or a name ("Q4_1"); ValueError naming unknown ones."""
    if isinstance(key, str):
        if key.upper() not in GGML_TYPE_IDS:
            raise ValueError(f"unknown ggml type {key!r}; known: {sorted(GGML_TYPE_IDS)}")
        return GGML_TYPES[GGML_TYPE_IDS[key.upper()]]
    if key not in GGML_TYPES:
        raise ValueError(f"unknown ggml type id {key!r}; known ids: {sorted(GGML_TYPES)}")
    return GGML_TYPES[key]


def row_nbytes(type_id, n):
    """Bytes of one row of `n` values stored as type `type_id` (n a multiple of the block)."""
    t = ggml_type(type_id)
    if n % t.block_size:
        raise ValueError(f"a {t.name} row needs a multiple of {t.block_size} values, got {n}")
    return n // t.block_size * t.type_size
