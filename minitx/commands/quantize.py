"""`python -m minitx quantize`: write a quantized copy of a GPT checkpoint (see minitx.quant.cli)."""
from minitx.quant.cli import add_quantize_parser as add_parser   # noqa: F401
from minitx.quant.cli import run_quantize as run                  # noqa: F401
