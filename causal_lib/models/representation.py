"""The representation R of DESIGN.md s.2: one definition, used by the causal losses and by every metric.

R = the hidden state of layer `layer` (an index into `output.hidden_states`: 0 = embeddings, -1 = the
last layer after the final norm) at the prompt's last token, i.e. the assistant header right before
the response starts (pooling="last"), or the mean over the prompt's tokens (pooling="mean"). The state
at the last prompt token is what the first answer token is computed from, and both sequences of a
counterfactual pair end their prompt with the same header, so R(clean) and R(injected) are comparable
although the prompts differ in length.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from causal_lib.models.prompts import encode_example, pad_batch, prompt_of


def prompt_positions(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Index of each row's last prompt token, for left or right padding.

    The k-th real token is where the running count of attention_mask first reaches k, whatever side the
    padding is on. Without prompt_lengths the rows hold only prompts, so k = number of real tokens.
    """
    mask = attention_mask.long()
    counts = mask.cumsum(dim=1)
    k = mask.sum(dim=1) if prompt_lengths is None else prompt_lengths.to(mask.device).long()
    hit = (counts == k[:, None]) & (mask == 1)
    if not bool(hit.any(dim=1).all()):
        raise ValueError("a prompt length exceeds its row's number of real tokens")
    return hit.float().argmax(dim=1)  # the first position where the count reaches k


def prompt_token_mask(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [B, T]: the real tokens that belong to the prompt."""
    mask = attention_mask.long()
    if prompt_lengths is None:
        return mask.bool()
    counts = mask.cumsum(dim=1)
    return (mask == 1) & (counts <= prompt_lengths.to(mask.device).long()[:, None])


RESPONSE_POSITIONS = 4  # pooling="response": the states of the first response tokens (teacher-forced along O*)
POOLINGS = ("last", "mean", "response")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "last",
         prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, H] -> [B, H] at the last prompt token ("last"), averaged over the prompt tokens ("mean"), or averaged
    over the first RESPONSE_POSITIONS response tokens ("response": rows hold prompt + O*, prompt_lengths given;
    O* is the same on both sides of a pair, so these states differ only through the prompt)."""
    if pooling == "response":
        if prompt_lengths is None:
            raise ValueError("pooling 'response' needs prompt_lengths (rows of prompt + response)")
        mask = attention_mask.long()
        counts = mask.cumsum(dim=1)
        k = prompt_lengths.to(mask.device).long()[:, None]
        m = ((mask == 1) & (counts > k) & (counts <= k + RESPONSE_POSITIONS)).to(hidden.device)
        m = m.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    if pooling == "last":
        pos = prompt_positions(attention_mask, prompt_lengths)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos.to(hidden.device)]
    if pooling == "mean":
        m = prompt_token_mask(attention_mask, prompt_lengths).to(hidden.device).unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pooling {pooling!r}: expected one of {POOLINGS}")


def representation(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int = -1,
                   pooling: str = "last", prompt_lengths: torch.Tensor | None = None,
                   hidden_states: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """R for a batch -> [B, H] (differentiable unless called under no_grad).

    input_ids may hold prompt + response (training; then pass prompt_lengths) or prompts only
    (generation-style, left padded). Pass `hidden_states` from a forward already run with
    output_hidden_states=True to avoid a second forward. Works with peft-wrapped models.
    """
    if hidden_states is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        hidden_states = out.hidden_states
    return pool(hidden_states[layer], attention_mask, pooling, prompt_lengths)


def _cfg_values(cfg):
    m = cfg.model if hasattr(cfg, "model") else cfg
    return m.repr_layer, m.repr_pooling, m.max_seq_length


def _pair_of(item):
    if isinstance(item, dict) and "clean" in item and "injected" in item:
        return item["clean"], item["injected"]
    if hasattr(item, "clean") and hasattr(item, "injected"):
        return item.clean, item.injected
    if isinstance(item, (tuple, list)) and len(item) == 2 and not all(isinstance(x, str) for x in item):
        return item[0], item[1]
    return None


@torch.no_grad()
def batched_representations(model, tokenizer, records_or_pairs, cfg, batch_size: int = 64) -> np.ndarray:
    """R for many prompts under no_grad, as float32 numpy: [N, H] for prompts, [N, 2, H] for pairs
    (clean, injected).

    A prompt is anything prompts.prompt_of reads (a Record, a dict, a (system, user) tuple);
    a pair is a dict/object with 'clean' and 'injected' prompts or a (clean, injected) tuple of prompts.
    cfg: Config or ModelConfig (repr_layer, repr_pooling, max_seq_length). Prompts are encoded with
    encode_example (same truncation as training) and left padded.
    """
    items = list(records_or_pairs)
    if not items:
        return np.zeros((0, 0), dtype=np.float32)
    pairs = [_pair_of(x) for x in items]
    if all(p is not None for p in pairs):
        clean = batched_representations(model, tokenizer, [p[0] for p in pairs], cfg, batch_size)
        injected = batched_representations(model, tokenizer, [p[1] for p in pairs], cfg, batch_size)
        return np.stack([clean, injected], axis=1)
    layer, pooling, max_len = _cfg_values(cfg)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(items), batch_size):
            enc = [encode_example(tokenizer, *prompt_of(x), max_length=max_len) for x in items[i:i + batch_size]]
            b = pad_batch(enc, tokenizer, padding_side="left")
            r = representation(model, b["input_ids"].to(device), b["attention_mask"].to(device), layer=layer,
                               pooling=pooling)
            out.append(r.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)
