"""Sentence-embedding throughput of all-MiniLM-L6-v2: minitx (NumPy and Cython backends, and
with int8 / int4 QuantLinear weights) against PyTorch + sentence-transformers when importable.

Run:  python benchmarks/bert_encode.py [--repeats 3] [--batch-size 32]
PyTorch is never a minitx dependency; to include it, run this file with an interpreter that has
torch and sentence-transformers (e.g. the /tmp/refvenv of make_minilm_reference.py) and
PYTHONPATH pointing at the repository. Prints the best of --repeats runs.
"""
import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_minilm import SENTENCES  # noqa: E402

from minitx import backend  # noqa: E402
from minitx.nn import Linear  # noqa: E402
from minitx.models.bert import SentenceEncoder, minilm_path  # noqa: E402
from minitx.quant.linear import QuantLinear, quantize_model  # noqa: E402

LONG = ("Quantization encodes the weights of a neural network in fewer bits, cutting memory "
        "and compute at some cost in accuracy. ") * 8


def linear_bytes(model):
    """Resident bytes of the Linear weights (float32 arrays or packed QuantLinear codes)."""
    return sum(m.weight_nbytes if isinstance(m, QuantLinear) else m.weight.data.nbytes
               for m in model.modules() if isinstance(m, (QuantLinear, Linear)))


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    sentences = SENTENCES + [LONG] * 16
    enc = SentenceEncoder.from_pretrained(minilm_path())
    n_tokens = sum(len(enc.tokenizer.encode(s, enc.max_seq_length)) for s in sentences)
    rows = []
    for name in backend.available():
        with backend.using(name):
            t, emb = best_time(lambda: enc.encode(sentences, args.batch_size), args.repeats)
        rows.append((f"minitx ({name})", t, emb, linear_bytes(enc.model)))
    for scheme, kwargs in (("int8", {}), ("int4", {"block_size": 64})):
        qenc = SentenceEncoder.from_pretrained(minilm_path())
        quantize_model(qenc.model, scheme, **kwargs)
        t, emb = best_time(lambda: qenc.encode(sentences, args.batch_size), args.repeats)
        rows.append((f"minitx QuantLinear {scheme}", t, emb, linear_bytes(qenc.model)))
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("(torch / sentence-transformers not importable: PyTorch row skipped)")
    else:
        model = SentenceTransformer(minilm_path(), device="cpu")
        with torch.no_grad():
            t, emb = best_time(lambda: model.encode(sentences, batch_size=args.batch_size),
                               args.repeats)
        rows.append((f"PyTorch {torch.__version__} ({torch.get_num_threads()} thr)", t, emb,
                     rows[0][3]))
    base = rows[0][1]
    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences, {n_tokens} tokens, batch "
          f"{args.batch_size}, best of {args.repeats}")
    print(f"| {'implementation':<28} | seconds | sentences/s | tokens/s | vs numpy | "
          f"min cos | Linear weight MB |")
    print(f"|{'-' * 30}|--------:|------------:|---------:|---------:|--------:|---------:|")
    for name, t, emb, nbytes in rows:
        cos = float(((emb * rows[0][2]).sum(1)).min())
        print(f"| {name:<28} | {t:7.3f} | {len(sentences) / t:11.1f} | {n_tokens / t:8.0f} | "
              f"{base / t:7.2f}x | {cos:.5f} | {nbytes / 1e6:8.2f} |")


if __name__ == "__main__":
    main()
