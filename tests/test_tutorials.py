"""Each tutorial runs headless in quick mode (tutorials that nothing runs rot), and shows what
it claims to show."""
import os
import re
import subprocess
import sys

import pytest

import minitx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tutorial(name, tmp_path, timeout=600):
    """Run tutorials/<name> with --quick; return its stdout. Fails with the tutorial's output."""
    path = os.path.join(ROOT, "tutorials", name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not in this checkout")
    env = dict(os.environ, MINITX_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg",
               PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    r = subprocess.run([sys.executable, path, "--quick"], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_01_autograd_and_gpt(tmp_path):
    out = run_tutorial("01_autograd_and_gpt.py", tmp_path)
    assert "caught: gradient of input 0" in out
    assert "validation loss" in out


def test_02_flash_attention(tmp_path):
    out = run_tutorial("02_flash_attention.py", tmp_path)
    for name in ("flash1", "flash2"):                          # FA-1/FA-2 equal naive in float64
        m = re.search(rf"max \|{name} - naive\| = ([0-9.e+-]+)", out)
        assert m and float(m.group(1)) < 1e-10, out
    assert "online softmax" in out
    assert "naive memory grows x" in out
    if "skipping the Cython kernel" not in out:
        assert "rule: cython <= 2 x naive: met" in out, out
    assert re.search(r"16384 \|\s+1\.078e\+09", out), "IO table missing the naive count"
    if "plot written to" in out:                               # matplotlib is optional
        assert (tmp_path / "02_flash_attention.png").stat().st_size > 0


def test_03_gemm(tmp_path):
    out = run_tutorial("03_gemm.py", tmp_path)
    for step in ("1 triple loop", "4 BLIS loop nest", "OpenBLAS np.matmul", "memory bandwidth"):
        assert step in out, f"missing {step!r} in:\n{out[-2000:]}"


def test_04_quantization(tmp_path):
    out = run_tutorial("04_quantization.py", tmp_path)
    for title in ("Weight MSE / variance", "PTQ: validation loss", "PTQ vs QAT",
                  "PB-LLM salient-fraction sweep", "Mixed precision", "Compensation"):
        assert title in out, f"missing table {title!r}"
    assert "NF4 beats int4 on Gaussian weights, block 64" in out and "-> met" in out
    w8 = [line for line in out.splitlines() if line.startswith("Target: W8 per-channel")]
    assert w8 and w8[0].endswith("-> met"), w8
