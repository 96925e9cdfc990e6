"""Tutorial 05 (curriculum) runs headless in quick mode and shows what it claims."""
import re

from test_tutorials import assert_figures, run_with_figures


def test_05_curriculum(tmp_path):
    out, figures = run_with_figures("05_curriculum.py", tmp_path)
    assert re.search(r"truncate: x \(2, 16\) -> \(2, 4\), 8 tokens.*aligned: True", out), out
    assert re.search(r"reshape : x \(2, 16\) -> \(8, 4\), 32 tokens.*aligned: True", out), out
    assert re.search(r"^ 150 \|\s+64 \|\s+88 \|\s+104 \|\s+8$", out, re.M), out    # DeepSpeed's
    assert re.search(r"^ 151 \|\s+64 \|\s+88 \|\s+104 \|\s+128$", out, re.M), out  # formula
    assert "baseline" in out and "seq-len warmup" in out and "hardest 10% hold" in out
    assert_figures(figures, ["05_pacing.png", "05_stability.png", "05_hard_examples.png"])
