"""What the two T5 experiments of SPEC §10 share, :mod:`genlab.experiments.t5_finetune` and
:mod:`genlab.experiments.t5_pretrain`: the optimiser and the teacher-forced loss of a Hugging Face
``T5ForConditionalGeneration`` on token-id lists.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


def build_optimizer(model: torch.nn.Module, config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (``config.lr``, ``config.weight_decay``) with a linear warm-up over
    ``config.warmup_steps``, then constant (for t5-finetune and t5-pretrain)."""
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))


def collate(src: list[list[int]], tgt: list[list[int]], idx: list[int], pad_id: int, device: torch.device):
    """input_ids, attention_mask (B, S) and labels (B, T) with -100 at padding (ignored by the loss), int64."""
    input_ids = pad_sequence([torch.tensor(src[i]) for i in idx], batch_first=True, padding_value=pad_id)
    labels = pad_sequence([torch.tensor(tgt[i]) for i in idx], batch_first=True, padding_value=-100)
    return input_ids.to(device), (input_ids != pad_id).long().to(device), labels.to(device)


def batch_nll(model: torch.nn.Module, src: list[list[int]], tgt: list[list[int]], idx: list[int],
              pad_id: int) -> tuple[torch.Tensor, int]:
    """T5's teacher-forced loss on the pairs ``idx`` (it shifts the labels right, decoder start = pad):
    (mean NLL per summary token, a scalar in nats; the number of summary tokens)."""
    input_ids, attention_mask, labels = collate(src, tgt, idx, pad_id, next(model.parameters()).device)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss, int((labels != -100).sum())
