"""Tutorial 09 (long context) runs headless in quick mode and shows what it claims."""
import re

from test_tutorials import assert_figures, run_with_figures


def test_09_long_context(tmp_path):
    out, figs = run_with_figures("09_long_context.py", tmp_path)
    for label in ("block-sparse", "parallel vs recurrent", "Transformer-XL segments",
                  "k = size gives"):
        m = re.search(re.escape(label) + r".*?([0-9.]+e[-+][0-9]+)", out)
        assert m and float(m.group(1)) < 1e-10, f"{label}: {m and m.group(0)}"
    assert "BigBird: window + global + random" in out and "| dense |" in out
    reach = {m.group(1): [float(x) for x in m.group(2).split()] for m in re.finditer(
        r"^(xl:mem=\d+) +logits moved per segment: ([0-9e.+\- ]+?) \|", out, re.M)}
    assert reach["xl:mem=0"][1:] == [0, 0, 0] and reach["xl:mem=0"][0] > 0   # no memory
    assert min(reach["xl:mem=16"][:3]) > 0 and reach["xl:mem=16"][3] == 0   # L x M = 2 segments
    assert "| knn | 131,908 |" in out                     # the study's table, gate counted
    assert_figures(figs, ["09_long_context.png"])
