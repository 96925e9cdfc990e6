"""Fuzz the safetensors reader (issue 14): every corrupted file loads cleanly or raises
SafetensorsError, never another exception, a large allocation or a hang (see tests/fuzzing.py).

Besides random byte corruption, the structured mutations rewrite the JSON header the way a
broken writer or an attacker would: non-integer, negative, infinite and overflowing shapes,
string/float/out-of-range offsets, holes and overlaps, unknown dtypes, bad `__metadata__`,
deep nesting, and wrong header lengths.
"""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import strategies as st

from fuzzing import Mutation, fuzz_loader, run_batch, u64_prefixed
from minitx.safetensors import SafetensorsError, _DTYPES, check_finite, load_file, save_file


def _valid_file(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
               "h": np.linspace(-1, 1, 4).astype(np.float16),
               "ids": np.arange(3, dtype=np.int64), "empty": np.zeros((0, 5), np.uint8),
               "flag": np.array([True, False])}
    path = tmp_path / "valid.safetensors"
    save_file(tensors, str(path), metadata={"format": "minitx-gpt", "step": "3"})
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    buffer = data[8 + n:]
    header["b16"] = {"dtype": "BF16", "shape": [2],               # save_file writes no BF16
                     "data_offsets": [len(buffer), len(buffer) + 4]}
    return _with_bf16(header, buffer)


def _with_bf16(header, buffer):
    bf16 = np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16     # top halves of float32
    return u64_prefixed(json.dumps(header).encode()) + buffer + bf16.astype("<u2").tobytes()


def _split(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


# Raw JSON texts a field may be replaced with (as text: Infinity and 1e999 are not Python values).
_WEIRD = ["Infinity", "-Infinity", "NaN", "1e999", "-1", "0", "1.5", "2.0", '"12"', "null",
          "true", "[]", "{}", "[1e999]", "[Infinity]", "[-1]", "[-2, -3]", "[2.5]", "[true]",
          "[4294967296, 4294967296, 4]", "[18446744073709551616]", "[0, 4611686018427387904]",
          "[9223372036854775807, 2]", '["0", 24]', "[0.0, 24.0]", "[24, 0]", "[0]", "[0, 1, 2]",
          "[-8, 16]", "[0, 18446744073709551616]", '"F99"', '"f32"', '"BF16"', '"BOOL"',
          '"I8"', '"F64"', "[" * 3000 + "]" * 3000, '{"a": ' * 3000 + "1" + "}" * 3000,
          "[" + ", ".join(["1"] * 40) + "]", "1" * 5000]
_SENTINEL = '"@@WEIRD@@"'


@st.composite
def header_mutations(draw, valid):
    """Structured corruption of the JSON header, re-framed with a correct or a wrong length."""
    header, buffer = _split(valid)
    names = sorted(k for k in header if k != "__metadata__")
    kind = draw(st.sampled_from(["field", "nudge", "metadata", "drop", "swap", "top", "deep"]))
    name = draw(st.sampled_from(names))
    if kind == "field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
        weird = draw(st.sampled_from(_WEIRD))
        if field == "entry":
            header[name] = "@@WEIRD@@"
        else:
            header[name][field] = "@@WEIRD@@"
        text, what = json.dumps(header).replace(_SENTINEL, weird), f"{name}.{field}={weird[:30]}"
    elif kind == "nudge":                   # a plausible-looking but wrong number
        field = draw(st.sampled_from(["shape", "data_offsets"]))
        values = header[name][field]
        if not values:
            values.append(0)
        i = draw(st.integers(0, len(values) - 1))
        values[i] = draw(st.sampled_from([values[i] + 1, values[i] - 1, values[i] * 2, -values[i],
                                          values[i] + 2**32, 2**63 - 1, 2**64]))
        text, what = json.dumps(header), f"{name}.{field}[{i}]={values[i]}"
    elif kind == "metadata":
        weird = draw(st.sampled_from(_WEIRD + ['{"a": 1}', '{"a": ["b"]}', '["x"]']))
        header["__metadata__"] = "@@WEIRD@@"
        text, what = json.dumps(header).replace(_SENTINEL, weird), f"__metadata__={weird[:30]}"
    elif kind == "drop":                    # leaves a hole in the buffer
        del header[name]
        text, what = json.dumps(header), f"drop {name}"
    elif kind == "swap":                    # offsets of two tensors exchanged
        other = draw(st.sampled_from(names))
        a, b = header[name], header[other]
        a["data_offsets"], b["data_offsets"] = b["data_offsets"], a["data_offsets"]
        text, what = json.dumps(header), f"swap offsets of {name} and {other}"
    elif kind == "top":
        text = draw(st.sampled_from(["[]", "1", '"x"', "null", "", "{", "{}", "{\"a\": 1}"]))
        what = f"header {text!r}"
    else:
        depth = draw(st.sampled_from([100, 10_000, 200_000]))
        text, what = "[" * depth + "]" * depth, f"nested {depth} deep"
    blob = text.encode()
    framing = draw(st.sampled_from(["exact", "short", "long", "huge"]))
    n = {"exact": len(blob), "short": max(len(blob) - 3, 0), "long": len(blob) + 3,
         "huge": 2**40}[framing]
    return Mutation(f"{what}, length {framing}", struct.pack("<Q", n) + blob + buffer)


def _load(path):
    """How model loaders read weights: the reader, then the finiteness check."""
    return check_finite(load_file(path), path)


def _check(result, data):
    """Successful loads must match the file: names, shapes, dtypes and bytes of the buffer."""
    header, buffer = _split(data)
    header.pop("__metadata__", None)
    if set(result) != set(header):
        return [f"loaded {sorted(result)}, header lists {sorted(header)}"]
    problems = []
    for name, a in result.items():
        info = header[name]
        b, e = info["data_offsets"]
        want = np.float32 if info["dtype"] == "BF16" else _DTYPES[info["dtype"]]
        if a.shape != tuple(info["shape"]) or a.dtype != want:
            problems.append(f"{name}: got {a.shape} {a.dtype}, header says {info}")
        elif info["dtype"] != "BF16" and a.astype(want.newbyteorder("<")).tobytes() != buffer[b:e]:
            problems.append(f"{name}: values differ from bytes [{b}, {e}) of the buffer")
    return problems


def test_fuzz_safetensors(tmp_path):
    valid = _valid_file(tmp_path)
    fuzz_loader(_load, valid, SafetensorsError, mutations=[header_mutations(valid)],
                check=_check)


# ---------------------------------------------------------------- the examples, named
def _file(header_text, buffer=b"\0" * 24):
    blob = header_text.encode()
    return struct.pack("<Q", len(blob)) + blob + buffer


_F32 = '{"w": {"dtype": "F32", "shape": %s, "data_offsets": %s}%s}'
CORRUPT = {
    "infinite shape": _F32 % ("[Infinity]", "[0, 24]", ""),
    "1e999 shape": _F32 % ("[1e999]", "[0, 24]", ""),
    "float shape": _F32 % ("[6.0]", "[0, 24]", ""),
    "negative dims": _F32 % ("[-2, -3]", "[0, 24]", ""),
    "product overflows int64 to 0": _F32 % ("[4294967296, 4294967296, 4]", "[0, 0]", ""),
    "deep nesting": "[" * 100_000,
    "metadata a list": _F32 % ("[6]", "[0, 24]", ', "__metadata__": ["x"]'),
    "metadata values not strings": _F32 % ("[6]", "[0, 24]", ', "__metadata__": {"a": 1}'),
    "string offsets": _F32 % ("[6]", '["0", 24]', ""),
    "float offsets": _F32 % ("[6]", "[0.0, 24.0]", ""),
    "offsets reversed": _F32 % ("[6]", "[24, 0]", ""),
    "offsets past the end": _F32 % ("[6]", "[8, 32]", ""),
    "hole at the start": _F32 % ("[4]", "[8, 24]", ""),
    "trailing bytes": _F32 % ("[4]", "[0, 16]", ""),
    "unknown dtype": '{"w": {"dtype": "F8_E9", "shape": [6], "data_offsets": [0, 24]}}',
    "overlap": ('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                '"b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}'),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_header_raises_safetensors_error(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_file(CORRUPT[case]))
    with pytest.raises(SafetensorsError):
        load_file(str(path))


def test_absurd_header_length_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    failures = run_batch(load_file, [Mutation("2**62 header", path.read_bytes())],
                         SafetensorsError, budget=64 * 1024 * 1024)
    assert not failures, failures


def test_writer_refuses_a_tensor_named_like_the_metadata(tmp_path):
    with pytest.raises(ValueError, match="__metadata__"):
        save_file({"__metadata__": np.ones(2)}, str(tmp_path / "x.safetensors"))


def test_check_finite_names_the_tensor(tmp_path):
    path = str(tmp_path / "nan.safetensors")
    save_file({"ok": np.ones(3, np.float32), "bad": np.array([1.0, np.inf], np.float32),
               "ids": np.arange(2)}, path)
    tensors = load_file(path)                      # the reader itself loads the bytes as they are
    assert np.isinf(tensors["bad"][1])
    with pytest.raises(SafetensorsError, match="'bad'.*non-finite"):
        check_finite(tensors, path)
    del tensors["bad"]
    assert check_finite(tensors, path) is tensors


# ---------------------------------------------------------------- the harness can fail
def _foreign(path):
    raise KeyError("not the format's error")


def _allocates(path):
    return {"x": np.ones(2**31, np.uint8)}                      # 2 GB


def _hangs(path):
    while True:
        pass


def _nan(path):
    return {"x": np.array([np.nan])}


@pytest.mark.parametrize("load_fn, expect", [(_foreign, "foreign KeyError"),
                                             (_allocates, "memory budget"),
                                             (_hangs, "SIGALRM: a hang"),
                                             (_nan, "non-finite")])
def test_harness_reports_each_failure_kind(tmp_path, load_fn, expect):
    failures = run_batch(load_fn, [Mutation("any", _valid_file(tmp_path))], SafetensorsError,
                         budget=256 * 1024 * 1024, timeout=1)
    assert len(failures) == 1 and expect in failures[0], failures


# ---------------------------------------------------------------- the CLI: one error line, exit 2
@pytest.mark.parametrize("case", ["1e999 shape", "deep nesting", "metadata a list", "hole at the start"])
def test_cli_reports_a_corrupted_checkpoint_in_one_line(tmp_path, capsys, case):
    from minitx.checkpoint import resolve, save_checkpoint
    from minitx.cli import main
    from minitx.models.gpt import GPT, get_config
    ckpt = tmp_path / "ckpt"
    save_checkpoint(str(ckpt), GPT(get_config("tiny", vocab_size=16)), step=1)
    with open(os.path.join(resolve(str(ckpt)), "model.safetensors"), "wb") as f:
        f.write(_file(CORRUPT[case]))
    code = main(["quantize", "--ckpt", str(ckpt), "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert "model.safetensors" in err[0]
