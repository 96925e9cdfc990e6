"""The course grader (`python -m minitx grade`): it passes minitx's own functions, fails wrong ones
with an llm.c-style message, reports stubs as not attempted, and says plainly what is missing."""
import inspect
import os
import sys
import textwrap

import numpy as np
import pytest

import minitx.exercises  # noqa: F401  (registers the exercises)
from minitx import grade
from minitx.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS = os.path.join(ROOT, "tutorials", "exercises")
EXAMPLES = 10                   # random inputs per exercise here (the grader's default is 25)
NAMES = list(grade.EXERCISES)

# A deliberately wrong solution: minitx's answer with its last output's last element nudged (by
# 1e-3 relative + 1e-3 absolute for floats, by one for integers, flipped for booleans): the
# smallest mistake the grader must still see.
PERTURB = '''
import numpy as np


def perturb(out):
    many = isinstance(out, tuple)
    outs = list(out) if many else [out]
    a = np.array(outs[-1], copy=True)
    if a.dtype == bool:
        a.flat[-1] = not a.flat[-1]
    elif a.dtype.kind in "iu":
        a.flat[-1] = a.flat[-1] + 1 if a.flat[-1] < np.iinfo(a.dtype).max else a.flat[-1] - 1
    else:
        a.flat[-1] = a.flat[-1] * 1.001 + 1e-3
    outs[-1] = a
    return tuple(outs) if many else outs[0]
'''


def perturb(out):
    namespace = {}
    exec(PERTURB, namespace)    # the same code the generated files run
    return namespace["perturb"](out)


def fill(directory, how):
    """Write every exercise file into `directory` with each function answered `how`:
    "reference" (minitx's own), "wrong" (perturbed), or "stub" (NotImplementedError)."""
    os.makedirs(directory, exist_ok=True)
    files = {}
    for ex in grade.EXERCISES.values():
        params = list(inspect.signature(ex.reference).parameters)
        call = f"EXERCISES[{ex.name!r}].reference({', '.join(f'{p}={p}' for p in params)})"
        body = {"reference": f"return {call}", "wrong": f"return perturb({call})",
                "stub": "raise NotImplementedError"}[how]
        files.setdefault(ex.file, []).append(
            f"\n\ndef {ex.function}({', '.join(params)}):\n    {body}\n")
    for name, funcs in files.items():
        head = "import minitx.exercises  # noqa: F401\nfrom minitx.grade import EXERCISES\n" + PERTURB
        with open(os.path.join(directory, name), "w") as f:
            f.write(head + "".join(funcs))
    return directory


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes_and_wrong_version_fails(name):
    ex = grade.EXERCISES[name]
    ok = grade.check(ex, ex.reference, EXAMPLES)
    assert ok.status == "pass", ok.message
    bad = grade.check(ex, lambda **kw: perturb(ex.reference(**kw)), EXAMPLES)
    assert bad.status == "fail", f"{name}: a wrong answer passed"
    for part in ("differ", "worst at", "yours", "vs minitx", "max |diff|", "inputs:"):
        assert part in bad.message, bad.message


def test_the_stubs_match_the_answer_key():
    """Every exercise has a stub in tutorials/exercises/ with minitx's signature, a docstring
    with Args and Returns, and a body that raises NotImplementedError."""
    for ex in grade.EXERCISES.values():
        module, error = grade.load_file(STUBS, ex.file)
        assert module is not None, error
        fn = getattr(module, ex.function)
        assert list(inspect.signature(fn).parameters) == \
            list(inspect.signature(ex.reference).parameters), ex.name
        assert "Args:" in fn.__doc__ and "Returns:" in fn.__doc__, ex.name
        assert grade.check(ex, fn, 1).status == "not attempted", ex.name


def test_central_differences_pass_and_one_sided_fail():
    """The numerical-gradient tolerance separates the right method from a plausible wrong one."""
    ex = grade.EXERCISES["01.numerical_gradient"]

    def differences(f, x, eps, central):
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[i] += eps
            down[i] -= eps if central else 0
            g[i] = (f(up) - f(down)) / (2 * eps if central else eps)
        return g

    assert grade.check(ex, lambda f, x, eps: differences(f, x, eps, True), EXAMPLES).status == "pass"
    assert grade.check(ex, lambda f, x, eps: differences(f, x, eps, False), EXAMPLES).status == "fail"


def test_cli_reference_stub_and_wrong(tmp_path, capsys):
    assert main(["grade", "--dir", fill(str(tmp_path / "ref"), "reference"),
                 "--examples", "3"]) == 0
    out = capsys.readouterr().out
    assert f"grade: {len(NAMES)} of {len(NAMES)} pass, 0 fail, 0 not attempted" in out, out

    assert main(["grade", "--dir", STUBS, "--examples", "3"]) == 0
    out = capsys.readouterr().out
    assert f"0 of {len(NAMES)} pass, 0 fail, {len(NAMES)} not attempted" in out, out

    assert main(["grade", "03", "--dir", fill(str(tmp_path / "wrong"), "wrong"),
                 "--examples", "3"]) == 1
    out = capsys.readouterr().out
    assert "03.pack_a" in out and "FAIL" in out and "max |diff|" in out and "01." not in out


def test_learner_errors_are_reported(tmp_path, capsys):
    d = tmp_path / "ex"
    d.mkdir()
    (d / "ex03_gemm.py").write_text(textwrap.dedent("""
        def pack_a(A_blk):
            return A_blk[100]
        def pack_b(B_blk):
            return B_blk
    """))
    (d / "ex04_quantization.py").write_text("def binarize(w:\n")
    assert main(["grade", "pack_a", "pack_b", "micro_kernel", "binarize", "--dir", str(d),
                 "--examples", "3"]) == 1
    out = capsys.readouterr().out
    assert "raised IndexError" in out and "A_blk (1, 1) float32" in out, out
    assert "output 'Bp' has shape (1, 1), expected (1, 1, 16)" in out, out
    assert "defines no function 'micro_kernel'" in out, out
    assert "could not import" in out and "SyntaxError" in out, out


def test_selection_and_usage_errors(tmp_path, capsys, monkeypatch):
    assert [ex.name for ex in grade.select(["02.online_softmax", "pack_a", "ex04_quantization"])] \
        == ["02.online_softmax", "03.pack_a", "04.quantize_int8_per_channel",
            "04.quantize_asymmetric", "04.nf4_quantize_block", "04.binarize"]
    assert main(["grade", "no_such_exercise", "--dir", STUBS]) == 2
    assert "no exercise matches 'no_such_exercise'" in capsys.readouterr().err
    monkeypatch.chdir(os.path.join(ROOT, "tutorials"))           # from inside the checkout
    assert grade.find_exercises_dir() == STUBS
    monkeypatch.setitem(sys.modules, "hypothesis", None)           # hypothesis not installed
    assert main(["grade"]) == 2
    err = capsys.readouterr().err
    assert "needs hypothesis" in err and "pip install -e '.[test]'" in err, err



def test_a_wrong_dtype_fails_with_its_name():
    """A float64 answer where the reference gives int8 codes (or float32) fails, naming both."""
    ex = grade.EXERCISES["04.quantize_int8_per_channel"]
    codes = np.zeros((2, 3), np.int8)
    scale = np.ones(2, np.float32)
    assert grade.compare(ex, (codes.astype(np.float64), scale), (codes, scale)) == \
        "output 'codes' is float64, expected int8"
