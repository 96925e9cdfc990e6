"""Make tests/data/hf_reference.npz and tests/data/hf/{gpt2,llama}/ with Hugging Face transformers.

Run in a throwaway virtualenv OUTSIDE the repo (transformers and torch are never minitx
dependencies):
    python -m venv /work/venvs/hf16
    /work/venvs/hf16/bin/pip install torch==2.13.0 transformers safetensors numpy
    PYTHONPATH=. /work/venvs/hf16/bin/python benchmarks/make_hf_reference.py

What it checks and stores (every model tiny, every seed fixed):
1. export: minitx models of both flavours (plus a tied Llama with biases and GQA) with random
   weights are exported by minitx.hf.export_hf and loaded with AutoModelForCausalLM; their logits
   on fixed ids are stored beside the minitx weights ("<case>/w/<name>", "<case>/ids",
   "<case>/hf_logits", and "<case>/hf_sha256": each parameter's hash as transformers loaded
   it). The tokenizer files are loaded with AutoTokenizer and checked to encode
   text to its UTF-8 bytes and decode back.
2. import: randomly initialised GPT2LMHeadModel / LlamaForCausalLM written by save_pretrained to
   tests/data/hf/<flavour>/, with their logits ("saved_<flavour>/logits", "saved_<flavour>/ids").
3. optimizer: a 3-step run of minitx's main training job per flavour, exported with its AdamW
   state, loaded by the README's ten-line snippet into torch.optim.AdamW, and one step taken in
   PyTorch on the batch minitx's next step draws; the parameters and moments after that step
   are stored ("opt_<flavour>/...") for tests/test_hf.py to compare with minitx's own next step.
"""
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file as torch_load_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)

import minitx
from minitx.checkpoint import load_checkpoint
from minitx.data import default_corpus
from minitx.hf import export_checkpoint, export_hf, to_hf_state
from minitx.models import from_hf
from minitx.models.gpt import GPT, GPTConfig, get_config
from minitx.tokenizer import ByteTokenizer
from minitx.train import Trainer, TrainConfig, prepare_data, train

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
OUT = os.path.join(ROOT, "hf_reference.npz")

# export cases: vocab 64 keeps the stored weights small (ids < 64)
EXPORT_CASES = {
    "gpt2": dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16),
    "llama": dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2, head_dim=8,
                  n_embd=16, ffn_hidden=24, norm="rmsnorm", pos="rope", mlp="swiglu",
                  bias=False, tie_weights=False, fused_qkv=False, rope_base=500.0),
    "gpt2_untied_split": dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16,
                              tie_weights=False, fused_qkv=False, norm_eps=1e-6),
    "llama_bias_tied": dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_kv_head=1,
                            n_embd=16, ffn_hidden=20, norm="rmsnorm", pos="rope", mlp="swiglu",
                            bias=True, tie_weights=True, fused_qkv=False, norm_eps=1e-5),
}
# optimizer cases: byte vocabulary (the main job trains on text)
OPT_CASES = {
    "gpt2": dict(block_size=8, n_layer=1, n_head=2, n_embd=8),
    "llama": dict(block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=8, ffn_hidden=12,
                  norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_weights=False,
                  fused_qkv=False),
}
OPT_TRAIN = dict(max_steps=3, batch_size=2, lr=1e-2, min_lr=1e-2, warmup=1, eval_interval=100,
                 eval_iters=1,
                 ckpt_interval=100, log_interval=100, seed=7)


def random_weights(model, seed):
    """Every parameter N(0, 0.5), norm gains 1 + N(0, 0.1): biases and gains must matter."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        gain = ".ln" in name or name.startswith("ln_f")
        p.data[...] = (1.0 if gain and name.endswith("weight") else 0.0) + rng.normal(
            0.0, 0.1 if gain else 0.5, p.shape)


def sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def hf_logits(directory, ids, hashes=None):
    """transformers' logits on `ids`; `hashes` (a dict) receives the sha256 of every parameter
    as transformers loaded it, so the test can check today's exporter writes the same."""
    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                       output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{directory}: transformers did not load every tensor: {bad}"
    model.eval()
    if hashes is not None:
        hashes.update({n: sha256(p.detach().numpy()) for n, p in model.named_parameters()})
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def export_cases(store):
    for seed, (case, kw) in enumerate(EXPORT_CASES.items()):
        minitx.manual_seed(seed)
        model = GPT(GPTConfig(**kw))
        random_weights(model, seed)
        ids = np.random.default_rng(100 + seed).integers(0, kw["vocab_size"], (2, 11))
        with tempfile.TemporaryDirectory() as d:
            export_hf(model, d)
            hashes = {}
            ref = hf_logits(d, ids, hashes)
        ours = model(ids)[0].data
        print(f"export {case:16s} max |minitx - transformers| logits = "
              f"{np.abs(ours - ref).max():.3e} (max |logit| {np.abs(ref).max():.2f})")
        store[f"{case}/config"] = np.array(json.dumps(kw))
        store[f"{case}/ids"], store[f"{case}/hf_logits"] = ids, ref
        store[f"{case}/hf_sha256"] = np.array(json.dumps(hashes, sort_keys=True))
        for k, v in model.state_dict().items():
            store[f"{case}/w/{k}"] = v


def check_tokenizer():
    minitx.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        export_hf(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8)), d)
        tok = AutoTokenizer.from_pretrained(d)
        text = "Grüße, 世界! \n\t  x=1 \x00\x7f ✓"
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode("utf-8")), (ids, list(text.encode("utf-8")))
        assert tok.decode(ids) == text, tok.decode(ids)
        cut = list("世".encode("utf-8"))[:2] + [65]           # a character cut mid-way
        assert tok.decode(cut) == ByteTokenizer().decode(cut), (tok.decode(cut), cut)
        print(f"tokenizer: {type(tok).__name__} encodes to UTF-8 bytes and decodes back "
              f"({len(ids)} ids)")
        model = AutoModelForCausalLM.from_pretrained(d)
        out = model.generate(torch.as_tensor([ids[:3]]), max_new_tokens=4)
        print(f"generate with generation_config.json: {out.shape[1] - 3} new tokens")


def saved_dirs(store):
    configs = {
        "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2,
                                             n_head=2, bos_token_id=0, eos_token_id=0)),
        "llama": (LlamaForCausalLM, LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=16, rope_theta=1000.0, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=0)),
    }
    for seed, (name, (cls, config)) in enumerate(configs.items()):
        torch.manual_seed(seed)
        model = cls(config).eval()
        with torch.no_grad():                  # biases and gains away from 0 and 1
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        directory = os.path.join(ROOT, "hf", name)
        model.save_pretrained(directory)
        ids = np.random.default_rng(200 + seed).integers(0, 64, (2, 9))
        with torch.no_grad():
            store[f"saved_{name}/logits"] = model(torch.as_tensor(ids)).logits.numpy()
        store[f"saved_{name}/ids"] = ids
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        print(f"save_pretrained {name}: {directory} ({size / 1024:.0f} KiB)")


def load_optimizer(model, directory):
    """The README's snippet: the exported AdamW state into torch.optim.AdamW."""
    state = torch_load_file(os.path.join(directory, "optimizer.safetensors"))
    with open(os.path.join(directory, "optimizer.json")) as f:
        groups = json.load(f)["param_groups"]
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([dict(g, params=[params[n] for n in g["params"]]) for g in groups],
                            foreach=False)
    for name, p in params.items():
        if f"{name}.step" in state:
            opt.state[p] = {k: state[f"{name}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")}
    return opt


def optimizer_cases(store):
    text = default_corpus()[:20000]
    store["opt_train"] = np.array(json.dumps(OPT_TRAIN))
    for case, kw in OPT_CASES.items():
        tc = TrainConfig(**OPT_TRAIN)
        with tempfile.TemporaryDirectory() as d:
            ckpt, hf_dir = os.path.join(d, "ckpt"), os.path.join(d, "hf")
            train(GPTConfig(**kw), tc, text, ckpt, log=lambda *a: None)
            export_checkpoint(ckpt, hf_dir, with_optimizer=True)
            x, y, after = minitx_next_step(ckpt, tc, text)
            trained = load_checkpoint(ckpt)[0].eval()
            xs = np.asarray(x)
            diff = np.abs(trained(xs)[0].data - hf_logits(hf_dir, xs)).max()
            print(f"trained {case:6s}: max |minitx - transformers| logits = {diff:.3e}")
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
            model.train()
            before = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
            opt = load_optimizer(model, hf_dir)
            loss = model(torch.as_tensor(x), labels=None).logits
            loss = torch.nn.functional.cross_entropy(loss.reshape(-1, loss.shape[-1]),
                                                     torch.as_tensor(y).reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            ours = to_hf_state(after.state_dict(), after.config)
            worst = max(float(np.abs(p.detach().numpy() - ours[n]).max())
                        for n, p in model.named_parameters())
            C = kw["n_embd"]          # the key bias's gradient is 0 in exact arithmetic (noise)
            worst_signal = max(float(np.abs(np.delete(p.detach().numpy() - ours[n], np.s_[
                C:2 * C]) if n.endswith("c_attn.bias") else p.detach().numpy() - ours[n]).max())
                for n, p in model.named_parameters())
            update = max(float(np.abs(p.detach().numpy() - before[n]).max())
                         for n, p in model.named_parameters())
            print(f"optimizer {case:6s}: max |torch AdamW step - minitx step| over parameters "
                  f"= {worst:.3e} ({worst_signal:.3e} without the key bias); largest update "
                  f"{update:.3e} (lr "
                  f"{opt.param_groups[0]['lr']:.2e})")
            model.save_pretrained(os.path.join(d, "back"))     # ... and back to minitx
            back = to_hf_state(from_hf(os.path.join(d, "back")).state_dict(), after.config)
            same = all(np.array_equal(back[n], p.detach().numpy())
                       for n, p in model.named_parameters())
            print(f"back    {case:6s}: from_hf(save_pretrained after the torch step) equals it "
                  f"bit for bit: {same}")
            store[f"opt_{case}/config"] = np.array(json.dumps(kw))
            store[f"opt_{case}/x"], store[f"opt_{case}/y"] = x, y
            for n, p in model.named_parameters():
                store[f"opt_{case}/param/{n}"] = p.detach().numpy().copy()
                store[f"opt_{case}/exp_avg/{n}"] = opt.state[p]["exp_avg"].numpy().copy()


def minitx_next_step(ckpt, tc, text):
    """minitx's own next step from the checkpoint: (x, y, model after the step)."""
    model, step, opt_state, state, _ = load_checkpoint(ckpt)
    model.train()
    train_ids, val_ids = prepare_data(text, tc, model.config.block_size)
    trainer = Trainer(model, tc, train_ids, val_ids, None, log=lambda *a: None)
    trainer.load_state(step, opt_state, state)
    seen = []
    draw = trainer.sampler.next_batch
    trainer.sampler.next_batch = lambda t: seen.append(draw(t)) or seen[-1]
    trainer.train_step()
    x, y, _ = seen[0]
    return np.asarray(x), np.asarray(y), trainer.model


def main_job_sizes():
    """The named configs the CLI trains ("default", "llama"), 20 steps, logits compared."""
    text = default_corpus()[:200000]
    for name in ("default", "llama"):
        tc = TrainConfig(max_steps=20, batch_size=4, warmup=2, eval_interval=100, eval_iters=1,
                         ckpt_interval=100, log_interval=100)
        with tempfile.TemporaryDirectory() as d:
            train(get_config(name), tc, text, os.path.join(d, "ck"), log=lambda *a: None)
            export_checkpoint(os.path.join(d, "ck"), os.path.join(d, "hf"))
            model = load_checkpoint(os.path.join(d, "ck"))[0].eval()
            ids = ByteTokenizer().encode(text[:128])[None, :].astype(np.int64)
            ref = hf_logits(os.path.join(d, "hf"), ids)
            print(f"main job '{name}' after 20 steps: max |minitx - transformers| logits = "
                  f"{np.abs(model(ids)[0].data - ref).max():.3e} (max |logit| "
                  f"{np.abs(ref).max():.2f}, {model.num_params():,} parameters, T=128)")


def main():
    store = {}
    torch.set_num_threads(1)
    main_job_sizes()
    export_cases(store)
    check_tokenizer()
    saved_dirs(store)
    optimizer_cases(store)
    np.savez_compressed(OUT, **store)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
