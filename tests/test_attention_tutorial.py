"""Tutorial 09 (long context) runs headless in quick mode and shows what it claims."""
import os
import re
import subprocess
import sys

import minitx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_09_long_context(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tutorials", "09_long_context.py"),
                        "--quick"], capture_output=True, text=True, env=env, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    for label in ("block-sparse", "parallel vs recurrent", "Transformer-XL segments",
                  "k = size gives"):
        m = re.search(re.escape(label) + r".*?([0-9.]+e[-+][0-9]+)", out)
        assert m and float(m.group(1)) < 1e-10, f"{label}: {m and m.group(0)}"
    assert "BigBird: window + global + random" in out and "| dense |" in out
