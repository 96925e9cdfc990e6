"""Fuzzing the GGUF reader: corrupted files either load (every tensor decodes to float32 of its
declared shape) or raise GGUFError; never another exception, a crash, a huge allocation or a
hang. Self-contained: each hypothesis example runs a batch of corrupted files in one forked
child with an address-space limit (RLIMIT_AS) and an alarm; the parent reports what happened."""
import json
import os
import resource
import signal
import struct
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx.gguf import GGUFError, open_gguf
from minitx.gguf_write import write_gguf
from minitx.quant import ggml as blocks

BUDGET = 512 * 2**20          # extra address space a child may map or allocate
TIMEOUT = 20                  # seconds per batch
CASES = 25                    # corrupted files per batch (per hypothesis example)
BOUNDARY = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _valid(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "valid.gguf"
    write_gguf(path, {"general.architecture": "llama", "a.u32": 7, "a.f": 0.5,
                      "a.list": ["x", "yz"], "a.nested": [[1, 2], [3]], "a.ints": [1, 2, 3]},
               {"q41": ("Q4_1", (2, 64), blocks.quantize_rows(rng.standard_normal((2, 64)), "Q4_1")),
                "q8": ("Q8_0", (3, 32), blocks.quantize_rows(rng.standard_normal((3, 32)), "Q8_0")),
                "f": rng.standard_normal(5).astype(np.float32)},
               value_types={"a.nested": "ARRAY[ARRAY[INT32]]"})
    return path.read_bytes()


def _load(path):
    """What a user of the reader does: open, read metadata, decode every tensor."""
    g = open_gguf(path)
    problems = []
    for name, info in g.tensors.items():
        a = g.dequantize(name)
        if a.dtype != np.float32 or a.shape != info.shape:
            problems.append(f"{name}: decoded {a.dtype} {a.shape}, declared {info.shape}")
    return problems


@st.composite
def mutations(draw, size):
    kind = draw(st.sampled_from(["flip", "truncate", "boundary", "delete", "duplicate"]))
    head = min(size, 400)                      # most structure lives in the first bytes
    at = draw(st.one_of(st.integers(0, head - 1), st.integers(0, size - 1)))
    if kind == "flip":
        return (kind, at, draw(st.integers(0, 7)))
    if kind == "truncate":
        return (kind, at, 0)
    if kind == "boundary":
        return (kind, at, draw(st.sampled_from(BOUNDARY)) * 16 + draw(st.sampled_from([4, 8])))
    return (kind, at, draw(st.integers(1, 64)))


def _apply(data, m):
    kind, at, arg = m
    b = bytearray(data)
    if kind == "flip":
        b[at] ^= 1 << arg
    elif kind == "truncate":
        del b[at:]
    elif kind == "boundary":
        value, width = arg // 16, arg % 16
        raw = (value % 2**(8 * width)).to_bytes(width, "little")
        b[at:at + width] = raw
    elif kind == "delete":
        del b[at:at + arg]
    else:
        b[at:at] = b[at:at + arg]
    return bytes(b)


def _child(data, batch, folder, wfd):
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + BUDGET, hard))
    signal.alarm(TIMEOUT)
    out = []
    for i, m in enumerate(batch):
        path = os.path.join(folder, f"case{i}.gguf")
        with open(path, "wb") as f:
            f.write(_apply(data, m))
        try:
            problems = _load(path)
            if problems:
                out.append(f"{m}: loaded wrongly: {problems}")
        except GGUFError:
            pass
        except MemoryError:
            out.append(f"{m}: MemoryError (an allocation beyond {BUDGET >> 20} MB)")
        except Exception as e:                             # noqa: BLE001 - reported
            out.append(f"{m}: {type(e).__name__}: {e}")
    os.write(wfd, json.dumps(out).encode())
    os._exit(0)


def _address_space():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _run_batch(data, batch, folder):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _child(data, batch, folder, w)
        finally:
            os._exit(3)
    os.close(w)
    deadline = time.monotonic() + TIMEOUT + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return [f"batch {batch} hung (killed)"]
        time.sleep(0.01)
    raw = b""
    while chunk := os.read(r, 65536):
        raw += chunk
    os.close(r)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return [f"child died (signal {sig}, status {status}) on batch {batch}"]
    return json.loads(raw)


@given(st.data())
def test_fuzz_gguf_reader(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz")
    valid = _valid(folder)
    batch = [data.draw(mutations(len(valid))) for _ in range(CASES)]
    failures = _run_batch(valid, batch, str(folder))
    assert not failures, "\n".join(failures)


def test_the_harness_catches_a_foreign_exception_and_a_hang(tmp_path, monkeypatch):
    valid = _valid(tmp_path)
    monkeypatch.setattr(f"{__name__}._load", lambda path: {}["no such key"])
    assert "KeyError" in _run_batch(valid, [("flip", 0, 0)], str(tmp_path))[0]
    monkeypatch.setattr(f"{__name__}.TIMEOUT", 1)
    monkeypatch.setattr(f"{__name__}._load", lambda path: time.sleep(30))
    failure = _run_batch(valid, [("flip", 0, 0)], str(tmp_path))[0]
    assert "died" in failure or "hung" in failure
    monkeypatch.setattr(f"{__name__}._load", lambda path: np.ones(2**31, np.uint8))
    monkeypatch.setattr(f"{__name__}.TIMEOUT", 20)
    assert "MemoryError" in _run_batch(valid, [("flip", 0, 0)], str(tmp_path))[0]


def test_regressions(tmp_path):
    """Named corruptions: a huge array length, a huge metadata count."""
    valid = _valid(tmp_path)
    key = struct.pack("<Q", len("a.ints")) + b"a.ints"
    at = valid.index(key) + len(key) + 4 + 4                 # the array's u64 length
    cases = [("boundary", at, (2**63) * 16 + 8), ("boundary", 24, (2**62) * 16 + 8)]
    assert _run_batch(valid, cases, str(tmp_path)) == []
