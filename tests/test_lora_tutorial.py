"""Tutorial 07 (LoRA and QLoRA) runs headless in quick mode and shows what it claims."""
import re

from test_tutorials import assert_figures, run_with_figures


def test_07_lora_qlora(tmp_path):
    out, figures = run_with_figures("07_lora_qlora.py", tmp_path)
    assert "fresh adapter changes the output by 0.0" in out
    assert "rank of s B A = 2" in out
    m = re.search(r"full16 static = (\d+) GB \(> 780 GB\), QLoRA total = ([0-9.]+) GB", out)
    assert m and int(m.group(1)) > 780 and float(m.group(2)) < 48, out
    assert "LoRA parameters 26 MB" in out
    for label in ("full", "LoRA", "QLoRA", "QLoRA+ckpt"):
        assert re.search(rf"^{re.escape(label)} +measured", out, re.M), label
    m = re.search(r"validation loss ([0-9.]+) -> ([0-9.]+)", out)
    assert m and float(m.group(2)) < float(m.group(1)), out
    assert "['adapter_config.json', 'adapter_model.safetensors']" in out
    assert_figures(figures, ["07_low_rank.png", "07_memory.png"])
