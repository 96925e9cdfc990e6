"""Grade the course exercises: the learner's function against minitx's own, on random inputs.

Each exercise in `tutorials/exercises/exNN_topic.py` is a function with a docstring and
`raise NotImplementedError`. Its answer key is minitx itself: an `Exercise` names the learner's
function, the minitx reference with the same signature, and how to draw random arguments. The
grader runs a hypothesis property test, "yours == minitx's on every drawn input", and prints per
exercise `pass`, `not attempted`, or the smallest failing example it found, llm.c-style: the input
shapes, the first output that differs, its worst index, both values and the largest difference.

minitorch grades its assignments with the property tests its reference passes; here the reference
is the library the tutorials read, so an exercise can never drift from the code it teaches.
The answer key lives in `minitx/exercises.py`: adding an exercise is a stub in the learner's
file plus one `@exercise(...)` entry there (see tutorials/exercises/README.md). hypothesis comes with the test extra: `pip install -e ".[test]"`.
"""
import copy
import dataclasses
import importlib.util
import os

import numpy as np

# (atol, rtol) keyed by the reference output's dtype: |yours - minitx| <= atol + rtol * |minitx|.
# Integer and boolean outputs (codes, masks) must match exactly.
TOLERANCES = {"float64": (1e-10, 1e-9), "float32": (1e-6, 1e-5), "exact": (0, 0)}
EXAMPLES = 25                   # random inputs per exercise (the tests use fewer)
EXERCISES_DIR = os.path.join("tutorials", "exercises")


class GradeError(ValueError):
    """A problem the learner can fix (no hypothesis, no exercises directory, unknown name)."""


@dataclasses.dataclass
class Exercise:
    """One graded function.

    name: "NN.function" (NN = the tutorial); file: the learner's file in tutorials/exercises/;
    reference: minitx's answer, called with the same keyword arguments as the learner's function;
    inputs: inputs(g) -> dict of keyword arguments, g a `Draw`; outputs: a name per returned value;
    tolerances: per-exercise (atol, rtol) overrides keyed like TOLERANCES, with the reason.
    """
    name: str
    file: str
    reference: object
    inputs: object
    outputs: tuple = ("out",)
    tolerances: dict = dataclasses.field(default_factory=dict)

    @property
    def function(self):
        return self.name.split(".", 1)[1]


EXERCISES = {}                  # name -> Exercise, in registration (= course) order


def exercise(name, file, reference, outputs=("out",), tolerances=None):
    """Decorator: register `inputs(g)` as the argument generator of a new exercise."""
    def register(inputs):
        EXERCISES[name] = Exercise(name, file, reference, inputs, tuple(outputs), tolerances or {})
        return inputs
    return register


class Draw:
    """What an exercise's `inputs` draws with: a thin layer over hypothesis's `draw`, so that
    shrinking finds small sizes, simple flags and seed 0 first."""

    def __init__(self, draw, st):
        self._draw, self._st = draw, st

    def int(self, lo, hi):
        """An int in [lo, hi] (shrinks towards lo)."""
        return self._draw(self._st.integers(lo, hi))

    def flag(self):
        """A bool (shrinks towards False)."""
        return self._draw(self._st.booleans())

    def choice(self, options):
        """One of `options` (shrinks towards the first)."""
        return self._draw(self._st.sampled_from(list(options)))

    def array(self, shape, dtype=np.float64, scale=1.0):
        """Gaussian values times `scale` from a drawn seed (values without ties or overflow)."""
        rng = np.random.default_rng(self.int(0, 2 ** 32 - 1))
        return (rng.standard_normal(shape) * scale).astype(dtype)


# ---- running one exercise ----------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """The outcome of one exercise."""
    name: str
    status: str                 # "pass", "fail", "not attempted"
    message: str = ""


class _Fail(AssertionError):
    pass


class _NotAttempted(AssertionError):
    pass


def describe(kwargs):
    """One line naming each argument: arrays by shape and dtype (and values when small), the
    rest by value.

    Args:
        kwargs: dict of the exercise's arguments.
    Returns:
        str, e.g. "A_blk (1, 1) float32 = [[0.1257]]".
    """
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            small = " = " + np.array2string(v, precision=4, separator=", ") if v.size <= 8 else ""
            parts.append(f"{k} {v.shape} {v.dtype}{small}")
        else:
            parts.append(f"{k}={v!r}")
    return ", ".join(parts)


def _value(x):
    """A scalar for a message: 6 significant digits for floats, plain ints and bools."""
    x = np.asarray(x)
    return f"{float(x):.6g}" if x.dtype.kind == "f" else repr(x.item())


def compare(ex, got, want):
    """Compare the learner's outputs with the reference's, output by output.

    Args:
        ex: the Exercise; got: what the learner's function returned; want: the reference's.
    Returns:
        None when every output has the reference's shape and values within the tolerance of its
        dtype, else a message naming the output, the number of elements off, the worst index with
        both values, and the largest difference (llm.c style).
    """
    n = len(ex.outputs)
    if n == 1:
        got, want = (got,), (want,)
    elif not isinstance(got, (tuple, list)) or len(got) != n:
        return f"expected a tuple of {n} values {ex.outputs}, got {type(got).__name__}"
    for name, g, w in zip(ex.outputs, got, want):
        if isinstance(g, np.ndarray) and isinstance(w, np.ndarray) and g.dtype != w.dtype:
            return f"output {name!r} is {g.dtype}, expected {w.dtype}"        # e.g. int8 codes
        w = np.asarray(w)
        try:
            g = np.asarray(g, dtype=np.float64 if w.dtype.kind == "f" else None)
        except (TypeError, ValueError) as e:
            return f"output {name!r}: cannot read it as an array ({e})"
        if g.shape != w.shape:
            return f"output {name!r} has shape {g.shape}, expected {w.shape}"
        key = w.dtype.name if w.dtype.kind == "f" else "exact"
        atol, rtol = ex.tolerances.get(key, TOLERANCES.get(key, TOLERANCES["float64"]))
        gf, wf = g.astype(np.float64), w.astype(np.float64)
        diff = np.where(np.isnan(gf) & np.isnan(wf), 0.0, np.abs(gf - wf))
        diff = np.where(np.isnan(diff), np.inf, diff)                   # NaN where minitx has none
        bad = diff > atol + rtol * np.abs(np.nan_to_num(wf))
        if bad.any():
            k = np.unravel_index(np.argmax(np.where(bad, diff, -1.0)), w.shape) if w.ndim else ()
            where = f"index {tuple(int(i) for i in k)}" if w.ndim else "the value"
            return (f"output {name!r} {w.shape}: {int(bad.sum())} of {w.size} elements differ; "
                    f"worst at {where}: yours {_value(g[k])} vs minitx {_value(w[k])}, "
                    f"max |diff| {diff.max():.3g} (allowed {atol:g} + {rtol:g} * |minitx|)")
    return None


def check(ex, fn, max_examples=EXAMPLES):
    """Run the property "fn == ex.reference" on `max_examples` drawn inputs.

    Args:
        ex: an Exercise; fn: the learner's function.
    Returns:
        Result with status "pass", "fail" (message: the smallest failing example) or
        "not attempted" (fn raised NotImplementedError).
    """
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st

    @st.composite
    def arguments(draw):
        return ex.inputs(Draw(draw, st))

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), print_blob=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(arguments())
    def prop(kwargs):
        want = ex.reference(**copy.deepcopy(kwargs))
        try:
            got = fn(**copy.deepcopy(kwargs))
        except NotImplementedError:
            raise _NotAttempted() from None
        except Exception as e:  # the learner's bug, reported with its input
            raise _Fail(f"raised {type(e).__name__}: {e}\n  inputs: {describe(kwargs)}") from None
        problem = compare(ex, got, want)
        if problem:
            raise _Fail(f"{problem}\n  inputs: {describe(kwargs)}")

    try:
        prop()
    except _NotAttempted:
        return Result(ex.name, "not attempted")
    except _Fail as e:
        return Result(ex.name, "fail", str(e.args[0]))
    return Result(ex.name, "pass")


# ---- finding and loading the learner's files -------------------------------------------------

def find_exercises_dir(start=None):
    """The nearest tutorials/exercises directory at or above `start` (default: the working
    directory), else next to the minitx package (an editable install of a checkout)."""
    d = os.path.abspath(start or os.getcwd())
    candidates = []
    while True:
        candidates.append(os.path.join(d, EXERCISES_DIR))
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    candidates.append(os.path.join(os.path.dirname(os.path.dirname(__file__)), EXERCISES_DIR))
    for c in candidates:
        if os.path.isdir(c):
            return c
    raise GradeError(f"no {EXERCISES_DIR} directory at or above {os.getcwd()}: run the grader "
                     "from a minitx checkout, or pass --dir")


def load_file(directory, filename):
    """Import the learner's file; returns (module or None, error message or "")."""
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        return None, f"{path} does not exist"
    stem = os.path.splitext(filename)[0]
    spec = importlib.util.spec_from_file_location(f"minitx_exercise_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error or a failing import in the learner's file
        return None, f"could not import {path}: {type(e).__name__}: {e}"
    return module, ""


def select(patterns):
    """Exercises matching any pattern: a full name ("02.online_softmax"), a tutorial ("02"), a
    function name ("pack_a") or a file ("ex03_gemm"). No patterns: all of them."""
    import minitx.exercises  # noqa: F401  (registers the course's exercises)

    if not patterns:
        return list(EXERCISES.values())
    chosen = []
    for p in patterns:
        hits = [ex for ex in EXERCISES.values()
                if p in (ex.name, ex.name.split(".")[0], ex.function, ex.file,
                         os.path.splitext(ex.file)[0])]
        if not hits:
            raise GradeError(f"no exercise matches {p!r}; known: {', '.join(EXERCISES)}")
        chosen += [ex for ex in hits if ex not in chosen]
    return chosen


def grade(patterns=(), directory=None, max_examples=EXAMPLES, log=print):
    """Grade the selected exercises of `directory`; print a line per exercise and a summary.

    Returns:
        list of Result.
    """
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise GradeError("the grader needs hypothesis, which the test extra installs: "
                         "pip install -e '.[test]' (from your minitx checkout)") from None
    chosen = select(patterns)
    directory = directory or find_exercises_dir()
    log(f"grading {len(chosen)} exercise(s) in {directory} ({max_examples} random inputs each)")
    modules, results = {}, []
    for ex in chosen:
        if ex.file not in modules:
            modules[ex.file] = load_file(directory, ex.file)
        module, error = modules[ex.file]
        fn = getattr(module, ex.function, None) if module else None
        if module is None:
            result = Result(ex.name, "fail", error)
        elif fn is None:
            result = Result(ex.name, "fail", f"{ex.file} defines no function {ex.function!r}")
        else:
            try:
                result = check(ex, fn, max_examples)
            except Exception as e:  # a bug in the answer key: say so, don't blame the learner
                result = Result(ex.name, "fail", f"grader error (not your code): "
                                                 f"{type(e).__name__}: {e}")
        results.append(result)
        log(f"{ex.name:<34} {result.status.upper() if result.status == 'fail' else result.status}")
        if result.message:
            log("    " + result.message.replace("\n", "\n    "))
    count = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "not attempted")}
    log(f"grade: {count['pass']} of {len(results)} pass, {count['fail']} fail, "
        f"{count['not attempted']} not attempted")
    return results

