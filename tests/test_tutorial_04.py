"""Run tutorials/04_quantization.py in quick mode, headless, and check its stated targets."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tutorial_04_quick(tmp_path):
    env = dict(os.environ, MINITX_TUTORIAL_OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tutorials", "04_quantization.py"),
                           "--quick"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for title in ("Weight MSE / variance", "PTQ: validation loss", "PTQ vs QAT",
                  "PB-LLM salient-fraction sweep", "Mixed precision", "Compensation"):
        assert title in out, f"missing table {title!r}"
    assert "NF4 beats int4 on Gaussian weights, block 64" in out and "-> met" in out
    w8 = [line for line in out.splitlines() if line.startswith("Target: W8 per-channel")]
    assert w8 and w8[0].endswith("-> met"), w8
