"""The constant-sentence baseline of SPEC §10 (``genlab.summaries.constant_sentence``): the
vectorised mean ROUGE-1 F (``mean_unigram_f``) against the plain Counter loop
(``mean_unigram_f_plain``), side by side on the same real XSum training summaries.

    python benchmarks/bench_constant_sentence.py [--n 3566] [--sample 500] [--rounds 3]

Both compute the same floats (asserted here too); the table gives each one's median seconds over
``--rounds`` alternating rounds, and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections import Counter

from rouge_score import tokenizers

from genlab.summaries import mean_unigram_f, mean_unigram_f_plain, shared_data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3566, help="training summaries (xsum_subset's non-test part has 3,566)")
    parser.add_argument("--sample", type=int, default=500, help="the others each one is scored against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines = (shared_data_dir() / "xsum" / "xsum_subset.jsonl").read_text().splitlines()[:args.n]
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=True)
    bags = [Counter(tokenizer.tokenize(json.loads(line)["summary"])) for line in lines]
    others = random.Random(0).sample(range(len(bags)), min(args.sample, len(bags)))
    seconds: dict[str, list[float]] = {"plain": [], "vectorised": []}
    for _ in range(args.rounds):
        results = {}
        for name, fn in (("plain", mean_unigram_f_plain), ("vectorised", mean_unigram_f)):
            start = time.perf_counter()
            results[name] = fn(bags, others)
            seconds[name].append(time.perf_counter() - start)
        assert results["plain"] == results["vectorised"]
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"{len(bags)} summaries x {len(others)} others, {cpu}, median of {args.rounds}:")
    plain, fast = (statistics.median(seconds[k]) for k in ("plain", "vectorised"))
    print(f"| plain Counter loop | {plain:.2f} s |\n| vectorised (scipy.sparse) | {fast:.3f} s |\n| speed-up | {plain / fast:.0f}x |")


if __name__ == "__main__":
    main()
