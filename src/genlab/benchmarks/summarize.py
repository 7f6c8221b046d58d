"""Generation speed of the summariser: cached against uncached decoding, in the same run.

Cached: the encoder runs once per source, each decoder layer's cross-attention keys and
values are computed once, and the decoder self-attention keys/values of past tokens are kept
(:class:`genlab.transformer.KVCache`), so each step decodes one token. Uncached: every step
re-decodes the whole prefix and recomputes the cross-attention projections (the encoder
still runs once). Both generate exactly ``--new-tokens`` tokens per source (EOS ignored),
greedily, from the same model (``--size``: the ``genlab run summarize`` defaults or
t5-small's sizes; random weights: speed does not depend on the weights) on real XSum test
documents; the tokens are checked to be equal.

    genlab bench summarize --json
    genlab bench summarize --size t5-small --json
    python benchmarks/bench_summarize.py --new-tokens 64 --batch-size 8
"""

from __future__ import annotations

import time

import torch

from genlab.benchmarks.common import (add_device_argument, add_json_argument, device_name, machine_info,
                                     parser_for, report, sync)
from genlab.engine import resolve_device
from genlab.transformer import Transformer, greedy_decode


SIZES = {
    "default": {},  # the SummarizeConfig defaults: d_model 128, 4 heads, 2 + 2 layers, d_ff 512
    "t5-small": {"d_model": 512, "n_heads": 8, "n_layers": 6, "d_ff": 2048},  # t5-small config.json
}
"""Model sizes the benchmark can time (speed does not depend on the weights, so both are random)."""


def _sources(batch_size: int, max_source_len: int, tokenizer, device: torch.device) -> torch.Tensor:
    from genlab.experiments.summarize import SummarizeConfig, pad
    from genlab.summarizer import load_data

    parts = load_data(SummarizeConfig())
    docs = [p.document for p in parts["test"][:batch_size]]
    return pad(tokenizer.encode(docs, max_source_len), tokenizer.pad_id, device)


def time_generation(model: Transformer, src: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int):
    """Best-of-``repeats`` seconds of one greedy generation of ``new_tokens`` per source, and the tokens."""
    best, tokens = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = greedy_decode(model, src, new_tokens, use_cache=use_cache, stop_at_eos=False)
        sync(src.device)
        best = min(best, time.perf_counter() - start)
    return best, tokens


def main(argv: list[str] | None = None) -> dict:
    from genlab.experiments.summarize import SummarizeConfig, model_config
    from genlab.summaries import SentencePieceTokenizer, tokenizer_dir

    parser = parser_for("summarize", __doc__)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per source")
    parser.add_argument("--batch-size", type=int, default=8, help="sources decoded together")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (best one kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--size", default="default", choices=sorted(SIZES),
                        help="model sizes: the `genlab run summarize` defaults, or t5-small's "
                             "(d_model 512, 8 heads, 6 + 6 layers, d_ff 2048)")
    add_device_argument(parser, default="cpu")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = SummarizeConfig(**SIZES[args.size])
    tokenizer = SentencePieceTokenizer(tokenizer_dir(None, config.data_dir))
    torch.manual_seed(0)
    model = Transformer(model_config(config, tokenizer)).to(device).eval()
    src = _sources(args.batch_size, config.max_source_len, tokenizer, device)
    time_generation(model, src, 4, True, 1)  # warm-up
    cached_s, cached_tokens = time_generation(model, src, args.new_tokens, True, args.repeats)
    plain_s, plain_tokens = time_generation(model, src, args.new_tokens, False, args.repeats)
    n = src.shape[0] * args.new_tokens
    result = {
        "tokens_per_s_cached": round(n / cached_s, 1),
        "tokens_per_s_uncached": round(n / plain_s, 1),
        "speedup": round(plain_s / cached_s, 2),
        "same_tokens": cached_tokens == plain_tokens,
        "new_tokens": args.new_tokens,
        "batch_size": src.shape[0],
        "source_tokens": src.shape[1],
        "size": args.size,
        "model": {k: getattr(config, k) for k in ("d_model", "n_heads", "n_layers", "d_ff")},
        "device": device_name(device),
        **machine_info(),
    }
    return report(result, args.json,
                  f"cached   {result['tokens_per_s_cached']:9.1f} tokens/s\n"
                  f"uncached {result['tokens_per_s_uncached']:9.1f} tokens/s\n"
                  f"speed-up {result['speedup']:9.2f}x (same tokens: {result['same_tokens']})")
