"""An encoder-decoder Transformer for summarisation, with cached incremental decoding.

The model is the one of Vaswani et al. 2017 ("Attention is all you need", §3) with three
changes that are standard today: pre-LayerNorm residual blocks (Xiong et al. 2020, "On
layer normalization in the Transformer architecture", fig. 1b) with a final LayerNorm on
each stack; one embedding matrix shared by the encoder input, the decoder input and the
output projection (Press & Wolf 2017; Vaswani et al. §3.4), scaled by sqrt(d_model); and
sinusoidal positions (Vaswani et al. §3.5).

Generation (:func:`greedy_decode`, :func:`beam_search`) runs the encoder once per source,
computes each decoder layer's cross-attention keys and values once from the encoder output
(:meth:`Transformer.cross_kv`), and keeps the decoder self-attention keys and values of the
tokens already generated in a :class:`KVCache`, so that step t costs one token's work
instead of t tokens'. ``use_cache=False`` runs the same search by re-decoding the whole
prefix (and recomputing the cross-attention projections) at every step: the reference the
cache is tested and benchmarked against.

Conventions: token ids are int64; ``pad_id`` marks padding; a padding mask is a bool
tensor that is True at padding positions; the decoder input starts with
``decoder_start_id`` (T5's convention: the pad id) and generation stops at ``eos_id``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TransformerConfig", "Transformer", "KVCache", "greedy_decode", "beam_search", "sinusoidal_positions",
           "label_smoothed_nll"]


@dataclass
class TransformerConfig:
    """Sizes of the encoder-decoder Transformer (defaults: a small model for a CPU)."""

    vocab_size: int = 32000
    d_model: int = 256
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 1024
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al. §3.5).

    Returns: float32 (length, d_model).
    """
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)[:, : d_model // 2]
    return pe.float()


class KVCache:
    """Decoder self-attention keys and values of the tokens decoded so far.

    One preallocated buffer per layer, (R, n_heads, max_len, head_dim) for keys and for
    values, R = rows being decoded (batch x beams); ``length`` positions are filled.
    """

    def __init__(self, n_layers: int, rows: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (rows, n_heads, max_len, head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (R, h, 1, hd) at position ``length``; return keys, values so far (R, h, length+1, hd)."""
        t = self.length
        self.k[layer][:, :, t:t + 1] = k
        self.v[layer][:, :, t:t + 1] = v
        return self.k[layer][:, :, :t + 1], self.v[layer][:, :, :t + 1]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (int64 (R,)), in that order: beam search's parent pointers."""
        t = self.length
        for layer in range(len(self.k)):
            self.k[layer][:, :, :t] = self.k[layer][rows, :, :t]
            self.v[layer][:, :, :t] = self.v[layer][rows, :, :t]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over n_heads heads (Vaswani et al. §3.2.2).

    ``attend_mask`` is a bool tensor broadcastable to (B, n_heads, Tq, Tk), True where a
    query may attend to a key; ``None`` means everything may be attended to.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, T, hd)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of x (B, T, d): two (B, h, T, hd) tensors."""
        return self.heads(self.k(x)), self.heads(self.v(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attend_mask: torch.Tensor | None) -> torch.Tensor:
        """Queries from x (B, Tq, d) against given keys/values (B, h, Tk, hd) -> (B, Tq, d)."""
        q = self.heads(self.q(x))  # (B, h, Tq, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, Tq, hd)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))  # (B, Tq, d)

    def forward(self, x: torch.Tensor, source: torch.Tensor, attend_mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.project_kv(source)
        return self.attend(x, k, v, attend_mask)


class FeedForward(nn.Sequential):
    """Linear(d, d_ff) -> ReLU -> dropout -> Linear(d_ff, d) (Vaswani et al. §3.3)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    """Pre-LN: x + SelfAttn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, attend_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, attend_mask))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-LN: x + CausalSelfAttn(LN(x)), x + CrossAttn(LN(x), memory), x + FF(LN(x))."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, cross_kv: tuple[torch.Tensor, torch.Tensor],
                cross_mask: torch.Tensor, cache: KVCache | None = None, index: int = 0) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). With a ``cache`` (T = 1): this position's self-attention
        keys/values are appended to layer ``index`` of the cache and the query attends to all
        cached positions (none of them is in its future)."""
        h = self.norm1(x)
        k, v = self.self_attn.project_kv(h)  # (B, h, T, hd)
        if cache is not None:
            k, v = cache.append(index, k, v)  # (B, h, t + 1, hd)
        x = x + self.drop(self.self_attn.attend(h, k, v, self_mask))
        x = x + self.drop(self.cross_attn.attend(self.norm2(x), *cross_kv, cross_mask))
        return x + self.drop(self.ff(self.norm3(x)))


class Transformer(nn.Module):
    """Encoder-decoder Transformer: source ids (B, S) and decoder input ids (B, T) -> logits (B, T, V)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[c.pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(c.max_len, c.d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)

    # -- pieces --------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids (B, T) -> sqrt(d) * E[ids] + PE[start:start+T], (B, T, d)."""
        t = ids.shape[1]
        if start + t > self.config.max_len:
            raise ValueError(f"sequence of {start + t} tokens is longer than max_len {self.config.max_len}")
        return self.drop(self.embed(ids) * math.sqrt(self.config.d_model) + self.positions[start:start + t])

    def encode(self, src: torch.Tensor, src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """src ids (B, S) -> memory (B, S, d). ``src_padding`` (B, S) bool, default ``src == pad_id``."""
        if src_padding is None:
            src_padding = src == self.config.pad_id
        mask = ~src_padding[:, None, None, :]  # (B, 1, 1, S): no query attends to a padding key
        x = self.embed_tokens(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def cross_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory`` (B, S, d),
        computed once per source: a list of (B, h, S, hd) pairs."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, T, d) -> logits (B, T, V) through the shared embedding."""
        return F.linear(self.decoder_norm(x), self.embed.weight)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_padding: torch.Tensor,
               tgt_padding: torch.Tensor | None = None, cross: list | None = None) -> torch.Tensor:
        """Teacher-forced decoder: tgt_in (B, T), memory (B, S, d) -> states (B, T, d).

        Query t attends to keys 0..t that are not padding (``tgt_padding`` (B, T) bool; None:
        no decoder padding) and to every non-padding source position.
        """
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()  # (T, T)
        self_mask = causal[None, None]  # (1, 1, T, T)
        if tgt_padding is not None:
            self_mask = self_mask & ~tgt_padding[:, None, None, :]  # (B, 1, T, T)
        cross_mask = ~src_padding[:, None, None, :]  # (B, 1, 1, S)
        cross = self.cross_kv(memory) if cross is None else cross
        x = self.embed_tokens(tgt_in)
        for layer, kv in zip(self.decoder, cross):
            x = layer(x, self_mask, kv, cross_mask)
        return x

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, src_padding: torch.Tensor | None = None,
                tgt_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) of the next token at each decoder position."""
        if src_padding is None:
            src_padding = src == self.config.pad_id
        memory = self.encode(src, src_padding)
        return self.logits(self.decode(tgt_in, memory, src_padding, tgt_padding))

    def decode_step(self, token: torch.Tensor, cache: KVCache, cross: list, src_padding: torch.Tensor) -> torch.Tensor:
        """One cached step: the last tokens (R, 1) at position ``cache.length`` -> logits (R, V).

        Appends this position's self-attention keys/values to ``cache`` and advances it.
        """
        x = self.embed_tokens(token, start=cache.length)  # (R, 1, d)
        cross_mask = ~src_padding[:, None, None, :]  # (R, 1, 1, S)
        for i, layer in enumerate(self.decoder):
            x = layer(x, None, cross[i], cross_mask, cache=cache, index=i)  # (R, 1, d)
        cache.length += 1
        return self.logits(x)[:, -1]


def label_smoothed_nll(logits: torch.Tensor, labels: torch.Tensor, pad_id: int, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over non-padding labels, with label smoothing eps (Szegedy et al.
    2016, §7; Vaswani et al. §5.4): the target is (1 - eps) one-hot + eps / V uniform.

    Args: logits (B, T, V), labels (B, T) int64. Returns a scalar in nats per token.
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=pad_id,
                           label_smoothing=smoothing)


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------

def _ban_repeated_ngrams(logp: torch.Tensor, prefixes: list[list[int]], n: int) -> None:
    """Set to -inf, in place, every token that would complete an n-gram already present in
    its row's prefix (the no-repeat n-gram rule; logp (R, V), prefixes: R token lists)."""
    if n <= 0:
        return
    for r, seq in enumerate(prefixes):
        if len(seq) < n:
            continue
        tail = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail]
        if banned:
            logp[r, banned] = float("-inf")


class _Stepper:
    """Next-token log-probabilities for R rows, cached or by re-decoding the prefix."""

    def __init__(self, model: Transformer, memory: torch.Tensor, src_padding: torch.Tensor, max_len: int,
                 use_cache: bool):
        self.model, self.memory, self.src_padding, self.use_cache = model, memory, src_padding, use_cache
        c = model.config
        if use_cache:
            self.cross = model.cross_kv(memory)  # once per source
            self.cache = KVCache(c.n_decoder_layers, memory.shape[0], c.n_heads, max_len + 1,
                                 c.d_model // c.n_heads, memory.device, memory.dtype)

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (R, t) ids, decoder start included -> log-probabilities (R, V) float32."""
        if self.use_cache:
            logits = self.model.decode_step(prefix[:, -1:], self.cache, self.cross, self.src_padding)
        else:  # everything again: the whole prefix and the cross-attention projections
            x = self.model.decode(prefix, self.memory, self.src_padding)
            logits = self.model.logits(x[:, -1:])[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def reorder(self, rows: torch.Tensor) -> None:
        """Rows of the cache become ``rows``. Beams never leave their source's block of rows,
        so the source-side tensors (memory, cross-attention keys/values) stay as they are."""
        if self.use_cache:
            self.cache.reorder(rows)


def _strip(seq: list[int], eos_id: int | None) -> list[int]:
    return seq[:seq.index(eos_id) + 1] if eos_id is not None and eos_id in seq else seq


@torch.no_grad()
def greedy_decode(model: Transformer, src: torch.Tensor, max_new_tokens: int = 64, use_cache: bool = True,
                  no_repeat_ngram_size: int = 0, src_padding: torch.Tensor | None = None,
                  stop_at_eos: bool = True) -> list[list[int]]:
    """Greedy decoding: at each step the most probable next token.

    Args:
        src: source ids (B, S) int64. max_new_tokens: tokens generated at most per row.
        use_cache: cached keys/values (True) or the whole prefix re-decoded each step (False);
            both give the same tokens.
        stop_at_eos: False generates exactly ``max_new_tokens`` per row (benchmarks).
    Returns: B lists of generated ids (decoder start excluded, EOS included when produced).
    """
    model.eval()
    c = model.config
    src_padding = src == c.pad_id if src_padding is None else src_padding
    memory = model.encode(src, src_padding)
    step = _Stepper(model, memory, src_padding, max_new_tokens, use_cache)
    b = src.shape[0]
    prefix = torch.full((b, 1), c.decoder_start_id, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(max_new_tokens):
        logp = step(prefix)
        _ban_repeated_ngrams(logp, prefix[:, 1:].tolist(), no_repeat_ngram_size)
        token = logp.argmax(-1)  # (B,)
        if stop_at_eos:
            token = token.masked_fill(done, c.pad_id)
            done |= token == c.eos_id
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        if stop_at_eos and bool(done.all()):
            break
    return [_strip(row, c.eos_id if stop_at_eos else None) for row in prefix[:, 1:].tolist()]


@torch.no_grad()
def beam_search(model: Transformer, src: torch.Tensor, beam_size: int = 4, max_new_tokens: int = 64,
                length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, use_cache: bool = True,
                src_padding: torch.Tensor | None = None) -> list[list[int]]:
    """Beam search with a length penalty (Wu et al. 2016, §7, in the simple form of Hugging
    Face's generate): a finished hypothesis y scores log p(y | x) / |y|^alpha, |y| counting
    the EOS. Each source keeps ``beam_size`` live hypotheses; at each step the 2 x beam best
    extensions are taken, those ending in EOS are set aside as finished, and the best
    ``beam_size`` others continue. A source is done when it has ``beam_size`` finished
    hypotheses (early stopping) or after ``max_new_tokens`` steps, when its live beams count
    as finished. With beam_size 1 this is greedy decoding.

    Args: as :func:`greedy_decode`; length_penalty alpha (0: none; > 0 favours longer).
    Returns: B lists of ids, the best finished hypothesis of each source.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    model.eval()
    c = model.config
    dev = src.device
    src_padding = src == c.pad_id if src_padding is None else src_padding
    b, k = src.shape[0], beam_size
    memory = model.encode(src, src_padding)
    rows = torch.arange(b, device=dev).repeat_interleave(k)  # (B*K,): row -> source
    step = _Stepper(model, memory[rows], src_padding[rows], max_new_tokens, use_cache)
    prefix = torch.full((b * k, 1), c.decoder_start_id, dtype=torch.long, device=dev)
    scores = torch.zeros(b, k, device=dev)
    scores[:, 1:] = float("-inf")  # at the start all beams are the same: keep one
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b

    def norm(score: float, length: int) -> float:
        return score / (length ** length_penalty)

    for t in range(1, max_new_tokens + 1):
        logp = step(prefix)  # (B*K, V)
        _ban_repeated_ngrams(logp, prefix[:, 1:].tolist(), no_repeat_ngram_size)
        v = logp.shape[-1]
        cand = (scores.unsqueeze(-1) + logp.view(b, k, v)).view(b, k * v)  # (B, K*V)
        top_scores, top_idx = cand.topk(min(2 * k, k * v), dim=-1)  # (B, 2K)
        parent, token = top_idx // v, top_idx % v
        new_rows, new_tokens, new_scores = [], [], []
        ts, par, tok = top_scores.tolist(), parent.tolist(), token.tolist()
        for i in range(b):
            keep = []
            if not done[i]:
                for s, p, w in zip(ts[i], par[i], tok[i]):
                    if s == float("-inf"):
                        break
                    if w == c.eos_id:
                        finished[i].append((norm(s, t), prefix[i * k + p, 1:].tolist() + [w]))
                        if len(finished[i]) >= k:
                            break
                    else:
                        keep.append((s, p, w))
                        if len(keep) == k:
                            break
                done[i] = len(finished[i]) >= k
            if done[i] or not keep:  # finished sources keep dummy beams (ignored)
                done[i] = True
                keep = [(float("-inf"), 0, c.pad_id)] * k
            keep += [(float("-inf"), keep[0][1], c.pad_id)] * (k - len(keep))
            new_rows += [i * k + p for _, p, _ in keep]
            new_tokens += [w for _, _, w in keep]
            new_scores += [s for s, _, _ in keep]
        if all(done):
            break
        idx = torch.tensor(new_rows, device=dev)
        prefix = torch.cat([prefix[idx], torch.tensor(new_tokens, device=dev)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=dev).view(b, k)
        step.reorder(idx)
    else:  # out of steps: live beams count as finished
        s_list = scores.tolist()
        for i in range(b):
            if not done[i]:
                for j in range(k):
                    if s_list[i][j] > float("-inf"):
                        finished[i].append((norm(s_list[i][j], prefix.shape[1] - 1), prefix[i * k + j, 1:].tolist()))
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]
