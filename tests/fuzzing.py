"""A reusable fuzz harness for minitx's binary-format readers (safetensors now, GGUF next).

`fuzz_loader(load_fn, valid_bytes, own_errors)` corrupts a valid file in random and structured
ways (hypothesis draws the corruptions) and asserts, for every corrupted file, that `load_fn`
either returns finite, correctly shaped arrays or raises one of the format's own errors: never
another exception type, never an allocation beyond a memory budget, never a hang.

Both limits are enforced, not hoped for: each batch of cases runs in a forked child whose address
space is capped with `resource.setrlimit(RLIMIT_AS, ...)` (a large allocation fails there with
MemoryError and is reported) and which `signal.alarm` kills if it runs too long (reported as a
hang, naming the case that was running). Batching many cases per fork keeps the test fast.

API (the same for every file format):
    byte_mutations(valid_bytes)         strategy of Mutation: flips, truncation, splices, ints
    Mutation(name, data)                a corrupted file and how it was made
    run_batch(load_fn, mutations, own_errors, check=None, ...) -> list of failure strings
    fuzz_loader(load_fn, valid_bytes, own_errors, mutations=(), check=None, ...)
"""
import json
import os
import resource
import select
import signal
import struct
import tempfile
import traceback
import warnings
from dataclasses import dataclass

import numpy as np
from hypothesis import given, strategies as st

MEMORY_BUDGET = 512 * 1024 * 1024      # bytes a batch may add to the forked child's address space
BATCH_TIMEOUT = 20                     # seconds a whole batch may take (a hang kills it)
CASES_PER_BATCH = 40


@dataclass
class Mutation:
    """One corrupted file: `data` (bytes) and `name`, how it was made (for failure messages)."""
    name: str
    data: bytes


# ---------------------------------------------------------------- generic byte-level corruption
_INTERESTING_U64 = [0, 1, 7, 8, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def byte_mutations(draw, valid):
    """A strategy of `Mutation`s of `valid` (bytes) that knows nothing of the format.

    Kinds: flip bits of random bytes, truncate, delete or duplicate a span, insert random bytes,
    and overwrite 1/2/4/8 bytes at any offset with a boundary integer (length and count fields of
    any little-endian format sit at such offsets).
    """
    n = len(valid)
    kind = draw(st.sampled_from(["flip", "truncate", "delete", "duplicate", "insert", "int"]))
    data = bytearray(valid)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, max(n - 1, 0)))
            if n:
                data[i] ^= 1 << draw(st.integers(0, 7))
        return Mutation("flip bits", bytes(data))
    if kind == "truncate":
        cut = draw(st.integers(0, max(n - 1, 0)))
        return Mutation(f"truncate to {cut} bytes", bytes(data[:cut]))
    i = draw(st.integers(0, n))
    j = draw(st.integers(i, min(n, i + 64)))
    if kind == "delete":
        return Mutation(f"delete [{i}, {j})", bytes(data[:i] + data[j:]))
    if kind == "duplicate":
        return Mutation(f"duplicate [{i}, {j})", bytes(data[:j] + data[i:j] + data[j:]))
    if kind == "insert":
        extra = draw(st.binary(min_size=1, max_size=32))
        return Mutation(f"insert {len(extra)} bytes at {i}", bytes(data[:i] + extra + data[i:]))
    width = draw(st.sampled_from([1, 2, 4, 8]))
    value = draw(st.sampled_from(_INTERESTING_U64)) % (1 << (8 * width))
    i = draw(st.integers(0, max(n - width, 0)))
    data[i:i + width] = value.to_bytes(width, "little")[:max(n - i, 0)]
    return Mutation(f"write u{8 * width} {value} at {i}", bytes(data))


# ---------------------------------------------------------------- running cases in a fork
def _finite_arrays(result, path="result"):
    """Failure strings for non-array or non-finite values in a (nested) loader result."""
    if isinstance(result, dict):
        return [f for k, v in result.items() for f in _finite_arrays(v, f"{path}[{k!r}]")]
    if isinstance(result, (list, tuple)):
        return [f for i, v in enumerate(result) for f in _finite_arrays(v, f"{path}[{i}]")]
    if isinstance(result, np.ndarray):
        if np.issubdtype(result.dtype, np.floating) and not np.isfinite(result).all():
            return [f"{path} holds non-finite values"]
        return []
    return [f"{path} is a {type(result).__name__}, not an ndarray"]


def _run_one(load_fn, mutation, own_errors, check, directory, index):
    path = os.path.join(directory, f"case{index}.bin")
    with open(path, "wb") as f:
        f.write(mutation.data)
    try:
        result = load_fn(path)
    except MemoryError:
        return "allocated beyond the memory budget (MemoryError under RLIMIT_AS)"
    except own_errors:
        return None
    except Exception as e:                                     # the failure we hunt
        return f"foreign {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    finally:
        os.unlink(path)
    problems = _finite_arrays(result)
    if check is not None and not problems:
        problems = list(check(result, mutation.data) or [])
    return "; ".join(problems) or None


def _child(write_fd, load_fn, mutations, own_errors, check, budget, timeout, directory):
    """Runs in the fork: limit memory and time, run every case, report one JSON line each."""
    used = _address_space()
    resource.setrlimit(resource.RLIMIT_AS, (used + budget, used + budget))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)      # a hang inside C code still ends
    signal.alarm(timeout)
    with os.fdopen(write_fd, "w") as out:
        for i, m in enumerate(mutations):
            out.write(json.dumps({"start": i}) + "\n")
            out.flush()
            failure = _run_one(load_fn, m, own_errors, check, directory, i)
            out.write(json.dumps({"done": i, "failure": failure}) + "\n")
            out.flush()


def _address_space():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read VmSize from /proc/self/status")


def run_batch(load_fn, mutations, own_errors, check=None, budget=MEMORY_BUDGET,
              timeout=BATCH_TIMEOUT):
    """Run `load_fn(path)` on each mutation's bytes in one forked, memory- and time-limited child.

    Args:
        load_fn: callable(path) -> result (a dict/list/tuple of ndarrays, or an ndarray).
        mutations: list of Mutation.
        own_errors: exception class or tuple of them that the format may raise.
        check: optional callable(result, data) -> list of problem strings (e.g. shapes against
            the header); called only when `load_fn` succeeded with finite arrays.
        budget: bytes the child may allocate beyond its size at fork time.
        timeout: seconds for the whole batch.
    Returns:
        list of failure strings, each naming the mutation; empty when every case behaved.
    """
    with tempfile.TemporaryDirectory() as directory:    # removed even if the child is killed
        return _run_batch_in(directory, load_fn, mutations, own_errors, check, budget, timeout)


def _run_batch_in(directory, load_fn, mutations, own_errors, check, budget, timeout):
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():                 # numpy's idle BLAS threads: fork is safe
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                                    # child
        os.close(read_fd)
        code = 0
        try:
            _child(write_fd, load_fn, mutations, own_errors, check, budget, timeout, directory)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    lines = _read_all(read_fd, pid, timeout + 5)
    _, status = os.waitpid(pid, 0)
    failures, started = [], None
    for line in lines:
        try:
            msg = json.loads(line)
        except ValueError:                          # the child died in the middle of a line
            continue
        if "start" in msg:
            started = msg["start"]
        elif msg["failure"]:
            failures.append(f"case {msg['done']} ({mutations[msg['done']].name}): "
                            f"{msg['failure']}")
        else:
            started = None
    if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
        why = (f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
               if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}")
        where = (f"while running case {started} ({mutations[started].name})"
                 if started is not None else "outside any case")
        hint = " (SIGALRM: a hang)" if os.WIFSIGNALED(status) and \
            os.WTERMSIG(status) == signal.SIGALRM else ""
        failures.append(f"child {why}{hint} {where}")
    return failures


def _read_all(fd, pid, timeout):
    """Lines the child writes until it closes the pipe; kill it if it outlives `timeout`."""
    chunks = []
    with os.fdopen(fd, "rb") as f:
        while True:
            ready, _, _ = select.select([f], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode().splitlines()


# ---------------------------------------------------------------- the hypothesis driver
def fuzz_loader(load_fn, valid_bytes, own_errors, mutations=(), check=None,
                cases=CASES_PER_BATCH, budget=MEMORY_BUDGET, timeout=BATCH_TIMEOUT):
    """Hypothesis test: batches of corrupted `valid_bytes` must load cleanly or raise own errors.

    Call it from a test function; it runs `settings`' max_examples batches of `cases` each.

    Args:
        load_fn: callable(path) -> arrays, as the format's users call it.
        valid_bytes: a valid file of the format (small: every case writes a copy).
        own_errors: the format's exception class(es).
        mutations: extra format-aware strategies of Mutation (header fields, length fields);
            mixed with `byte_mutations(valid_bytes)`.
        check: optional callable(result, data) -> list of problems, for successful loads.
        cases, budget, timeout: per batch (see `run_batch`).
    """
    if run_batch(load_fn, [Mutation("unchanged", valid_bytes)], own_errors, check, budget,
                 timeout):
        raise AssertionError("the valid file itself does not load cleanly")
    strategy = st.one_of(byte_mutations(valid_bytes), *mutations)

    @given(st.lists(strategy, min_size=cases, max_size=cases))
    def batches(batch):
        failures = run_batch(load_fn, batch, own_errors, check, budget, timeout)
        assert not failures, "\n".join(failures)

    batches()


def u64_prefixed(blob):
    """8-byte little-endian length + blob: the framing of safetensors' header (and others)."""
    return struct.pack("<Q", len(blob)) + blob
