"""Each tutorial runs headless in quick mode (tutorials that nothing runs rot)."""
import os
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
