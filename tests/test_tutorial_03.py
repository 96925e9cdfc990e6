"""Tutorial 03 (GEMM) runs headless in quick mode and prints its GFLOP/s table."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tutorial_03_gemm_quick(tmp_path):
    env = dict(os.environ, MINITX_TUTORIAL_OUT=str(tmp_path))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tutorials", "03_gemm.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for step in ("1 triple loop", "4 BLIS loop nest", "OpenBLAS np.matmul", "memory bandwidth"):
        assert step in out, f"missing {step!r} in:\n{out[-2000:]}"
