"""Models: `gpt` (decoder LM), `bert` (encoder); `from_hf` reads a Hugging Face GPT-2 or Llama
directory into a GPT (see minitx.hf)."""


def from_hf(hf_dir):
    """A minitx GPT (eval mode) from a GPT2LMHeadModel or LlamaForCausalLM directory; see
    `minitx.hf.from_hf` (imported here lazily: minitx.hf itself imports minitx.models.gpt)."""
    from minitx.hf import from_hf as _from_hf
    return _from_hf(hf_dir)
