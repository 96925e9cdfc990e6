"""`python -m minitx export-hf`: write a checkpoint as a Hugging Face model directory."""
from minitx.hf import export_checkpoint


def add_parser(sub):
    p = sub.add_parser("export-hf", help="export a checkpoint as a Hugging Face GPT2LMHeadModel "
                                         "or LlamaForCausalLM directory")
    p.add_argument("--ckpt", required=True, help="minitx checkpoint (run or step directory)")
    p.add_argument("--out", required=True, help="new or empty output directory")
    p.add_argument("--with-optimizer", action="store_true",
                   help="also write the AdamW state (optimizer.safetensors + optimizer.json)")
    return p


def run(args):
    config, model = export_checkpoint(args.ckpt, args.out, args.with_optimizer)
    print(f"exported {model.num_params():,} parameters as {config['architectures'][0]} to "
          f"{args.out}{' (with AdamW state)' if args.with_optimizer else ''}")
    return 0
