"""Each tutorial runs headless in quick mode (tutorials that nothing runs rot), shows what it
claims to show, draws its figures (matplotlib is in the test extra: a missing one fails, it does
not skip), and converts to a notebook and back (jupytext)."""
import os
import re
import struct
import subprocess
import sys
import zlib

import pytest

import minitx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_FIGURE_BYTES = 10_000      # a titled plot with axes and data; an empty 640x480 canvas is ~2 kB
MIN_FIGURE_PIXELS = 300        # the shorter side


def png_pixels(data):
    """Width, height and the decompressed scanlines of a PNG file's bytes (IHDR + IDAT)."""
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return width, height, zlib.decompress(idat)


def assert_figures(out_dir, names):
    """Each figure exists, is a PNG of a sensible size, and is not a blank canvas."""
    for name in names:
        path = out_dir / name
        assert path.exists(), f"{name} was not written (is matplotlib installed? pip install .[test])"
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE, f"{name} is not a PNG: starts {data[:8]!r}"
        assert len(data) >= MIN_FIGURE_BYTES, f"{name} has only {len(data)} bytes"
        width, height, pixels = png_pixels(data)
        assert min(width, height) >= MIN_FIGURE_PIXELS, f"{name} is {width}x{height}"
        assert len(set(pixels[::7])) > 8, f"{name} looks blank (almost one colour)"


def run_tutorial(name, tmp_path, timeout=600, out_dir=None):
    """Run tutorials/<name> with --quick, its figures going to `out_dir` (default tmp_path); return
    its stdout. Fails with the tutorial's output."""
    path = os.path.join(ROOT, "tutorials", name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not in this checkout")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.fail("matplotlib is missing: the tutorial tests draw every figure; "
                    "install the test extra: pip install '.[test]'")
    env = dict(os.environ, MINITX_TUTORIAL_OUT=str(out_dir or tmp_path),
               PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    env.pop("MPLBACKEND", None)                      # the tutorial itself selects Agg headless
    r = subprocess.run([sys.executable, path, "--quick"], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def run_with_figures(name, tmp_path):
    """run_tutorial into a directory that does not exist yet (the tutorial must create it);
    returns (stdout, that directory)."""
    figures = tmp_path / "figures" / "nested"
    return run_tutorial(name, tmp_path, out_dir=figures), figures


def test_01_autograd_and_gpt(tmp_path):
    out, figs = run_with_figures("01_autograd_and_gpt.py", tmp_path)
    assert "caught: gradient of input 0" in out
    assert "validation loss" in out
    assert_figures(figs, ["01_loss_curve.png"])


def test_02_flash_attention(tmp_path):
    out, figs = run_with_figures("02_flash_attention.py", tmp_path)
    for name in ("flash1", "flash2"):                          # FA-1/FA-2 equal naive in float64
        m = re.search(rf"max \|{name} - naive\| = ([0-9.e+-]+)", out)
        assert m and float(m.group(1)) < 1e-10, out
    assert "online softmax" in out
    assert "naive memory grows x" in out
    if "skipping the Cython kernel" not in out:
        assert "rule: cython <= 2 x naive: met" in out, out
    assert re.search(r"16384 \|\s+1\.078e\+09", out), "IO table missing the naive count"
    assert_figures(figs, ["02_flash_attention.png"])


def test_03_gemm(tmp_path):
    out, figs = run_with_figures("03_gemm.py", tmp_path)
    for step in ("1 triple loop", "4 BLIS loop nest", "OpenBLAS np.matmul", "memory bandwidth"):
        assert step in out, f"missing {step!r} in:\n{out[-2000:]}"
    assert_figures(figs, ["03_gemm.png"])


def test_04_quantization(tmp_path):
    out, figs = run_with_figures("04_quantization.py", tmp_path)
    for title in ("Weight MSE / variance", "PTQ: validation loss", "PTQ vs QAT",
                  "PB-LLM salient-fraction sweep", "Mixed precision", "Compensation"):
        assert title in out, f"missing table {title!r}"
    assert "NF4 beats int4 on Gaussian weights, block 64" in out and "-> met" in out
    w8 = [line for line in out.splitlines() if line.startswith("Target: W8 per-channel")]
    assert w8 and w8[0].endswith("-> met"), w8
    assert_figures(figs, ["04_quantization.png"])


TUTORIALS = sorted(f for f in os.listdir(os.path.join(ROOT, "tutorials"))
                   if re.match(r"\d\d_\w+\.py$", f))


@pytest.mark.parametrize("name", TUTORIALS)
def test_notebook_round_trip(name, tmp_path):
    """The documented conversion (jupytext percent script -> .ipynb) keeps every cell, and the
    notebook converts back to the same script (up to jupytext's version stamp)."""
    jupytext = pytest.importorskip("jupytext")
    path = os.path.join(ROOT, "tutorials", name)
    text = open(path, encoding="utf-8").read()
    script = jupytext.read(path)                       # the command: jupytext --to notebook
    ipynb = tmp_path / name.replace(".py", ".ipynb")
    jupytext.write(script, str(ipynb))
    notebook = jupytext.read(str(ipynb))
    cells = [(c.cell_type, c.source) for c in notebook.cells]
    assert cells == [(c.cell_type, c.source) for c in script.cells]
    assert sum(kind == "markdown" for kind, _ in cells) >= 3, "a tutorial explains as it goes"
    assert sum(kind == "code" for kind, _ in cells) >= 3
    back = jupytext.writes(notebook, fmt="py:percent")
    stamp = re.compile(r"^#\s+(format_version|jupytext_version):.*\n", re.M)
    assert stamp.sub("", back) == stamp.sub("", text)
