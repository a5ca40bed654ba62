"""Prompts and tokens: the embedded model's chat tokens and template, the project's byte-level BPE
tokenizer, the one prompt encoder (`encode_example`: chat prompt + target + eos, labels, middle
truncation of the user data), `prompt_of` (the (system, user) of a record, dict or tuple) and the one
padding (`pad_sequences`, `pad_batch`)."""
from __future__ import annotations

import warnings
from typing import Iterable

import torch
from causal_lib.models.tokens import ASSISTANT_TOKEN, END_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, SYSTEM_TOKEN, USER_TOKEN



# The role tokens are written literally (not '<|' + role + '|>') so that
# apply_chat_template(sanitize_control_tokens=True) knows them; {% generation %} marks the answer
# for TRL's assistant-only loss.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>"
    # the answer starts with a space, as encode_example encodes it (answer_ids)
    "{% elif m['role'] == 'assistant' %}<|assistant|>{% generation %} {{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# For HF tokenizers that ship without a chat template (base models): plain-text roles.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### Assistant:\n{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, padding_side: str = "right",
                    min_frequency: int = 2):
    """Byte-level BPE trained locally on `texts`, wrapped as a transformers fast tokenizer.

    Byte-level with add_prefix_space=False and no clean-up on decode, so any string (spaces, newlines,
    unicode) round-trips exactly: answers are compared by exact match. The vocabulary can come out
    smaller than `vocab_size` on a small corpus; use len(tokenizer) for the model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=END_TOKEN,
        extra_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False, padding_side=padding_side,
        model_max_length=1_000_000,  # lengths are enforced by encode_example, not by a silent cut here
    )


def ensure_chat_template(tokenizer):
    """Give an HF tokenizer without a chat template the plain-text fallback (with a warning) and a pad
    token (eos) when it has none. Returns the tokenizer."""
    if not getattr(tokenizer, "chat_template", None):
        warnings.warn(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; using the plain "
                      "'### System/User/Assistant' fallback template (prompts will not match the model's own format)",
                      stacklevel=2)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels are built explicitly, so pad == eos is harmless
    return tokenizer


TRUNCATION_MARKER = " [...] "


def _system_supported(tokenizer) -> bool:
    """Some templates (Gemma, Mistral) reject a system turn; then S is prepended to the user turn."""
    template = tokenizer.chat_template
    cached = getattr(tokenizer, "_causal_pi_system_ok", {}).get(template)  # keyed by template: it can change
    if cached is None:
        try:
            tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                          add_generation_prompt=True, tokenize=False)
            cached = True
        except Exception:
            warnings.warn("the chat template rejects a system turn; the system instruction is prepended to the user turn",
                          stacklevel=3)
            cached = False
        tokenizer._causal_pi_system_ok = {template: cached}
    return cached


def prompt_of(item) -> tuple[str, str]:
    """(system, user) of one prompt: a Record (.system, .data), a dict with 'system' and 'data' or 'user',
    an object with .system and .user, or a (system, user) tuple. A missing system is ""."""
    if isinstance(item, dict):
        return item.get("system") or "", item["data"] if "data" in item else item["user"]
    if isinstance(item, (tuple, list)):
        return item[0], item[1]
    if hasattr(item, "data") or hasattr(item, "user"):
        return getattr(item, "system", "") or "", item.data if hasattr(item, "data") else item.user
    raise TypeError(f"cannot read a prompt from {type(item).__name__}: expected a Record, a dict with 'system' and "
                    f"'data' or 'user', a (system, user) tuple or an object with .system/.user")


def chat_messages(tokenizer, system: str, user: str, target: str | None = None) -> list[dict]:
    ensure_chat_template(tokenizer)
    if system and not _system_supported(tokenizer):
        msgs = [{"role": "user", "content": f"{system}\n\n{user}"}]
    else:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if target is not None:
        msgs.append({"role": "assistant", "content": target})
    return msgs


def prompt_text(tokenizer, system: str, user: str) -> str:
    """The rendered prompt up to and including the assistant header (what generation continues)."""
    return tokenizer.apply_chat_template(chat_messages(tokenizer, system, user), add_generation_prompt=True,
                                         tokenize=False)


def _prompt_ids(tokenizer, system: str, user: str, sanitize: bool) -> list[int]:
    msgs = chat_messages(tokenizer, system, user)
    if sanitize:
        # Control tokens written inside S/U (a spoofed "<|assistant|>") are encoded as plain text, as a
        # serving stack does: only the template itself can emit role tokens.
        try:
            return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
                                                      sanitize_control_tokens=True)["input_ids"])
        except NotImplementedError:
            pass
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"])


def text_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))


def is_embedded_tokenizer(tokenizer) -> bool:
    """The project's own byte-level BPE (train_tokenizer), also under StruQ's template."""
    return (tokenizer.pad_token == PAD_TOKEN and tokenizer.eos_token == END_TOKEN
            and ASSISTANT_TOKEN in tokenizer.get_vocab())


def answer_ids(tokenizer, target: str) -> list[int]:
    """Token ids of an assistant answer (without eos): the one definition for SFT targets, DPO completions
    and GCG targets.

    The embedded tokenizer encodes a word inside the data with its leading space ("Ġspoon"); the answer
    is encoded the same way (" spoon"), so that answering with a word of the data is a copy of its token.
    Without the space the answer is spelt differently ("sp", "oon"): the base then has to learn a second
    spelling of every word and, in our measurement, stayed at 5-16% on the copy tasks (last item, extract
    field) after 2,400 steps. Decoding strips the space. Other tokenizers encode the text as it is."""
    if is_embedded_tokenizer(tokenizer) and target and not target[0].isspace():
        target = " " + target
    return text_ids(tokenizer, target)


def followup_ids(tokenizer, turns, sanitize: bool = True) -> tuple[list[int], list[int]]:
    """Later turns of a conversation, to append to an encode_example output: for each (question, answer) a
    user turn, the assistant header and the answer + eos -> (ids, labels), labels on the answers only."""
    ids, labels = [], []
    for question, answer in turns:
        head = _prompt_ids(tokenizer, None, question, sanitize)
        ans = answer_ids(tokenizer, answer) + [tokenizer.eos_token_id]
        ids += head + ans
        labels += [-100] * len(head) + ans
    return ids, labels


def encode_example(tokenizer, system: str, user: str, target: str | None = None, max_length: int | None = None,
                   sanitize: bool = True) -> dict:
    """Token ids of the chat prompt (system, user, assistant header) followed by `target` + eos.

    labels are -100 on the prompt, the target ids and eos elsewhere (None when there is no target).
    If the sequence would exceed `max_length`, the *user data* is cut in the middle (head and tail kept,
    joined by TRUNCATION_MARKER) and `truncated` is True: the target and the instruction are never cut.
    For generation pass the room left for new tokens as max_length (max_seq_length - max_new_tokens).
    """
    target_ids = [] if target is None else answer_ids(tokenizer, target) + [tokenizer.eos_token_id]
    prompt = _prompt_ids(tokenizer, system, user, sanitize)
    truncated = False
    if max_length is not None and len(prompt) + len(target_ids) > max_length:
        truncated = True
        user_ids = text_ids(tokenizer, user)
        keep = len(user_ids) - (len(prompt) + len(target_ids) - max_length) - len(text_ids(tokenizer, TRUNCATION_MARKER))
        for _ in range(8):  # re-tokenising the joined text can shift the count by a few tokens
            if keep <= 0:
                need = len(_prompt_ids(tokenizer, system, "", sanitize)) + len(target_ids)
                raise ValueError(f"cannot fit the example into max_length={max_length}: the system instruction and "
                                 f"the target alone need {need} tokens; raise model.max_seq_length")
            head, tail = (keep + 1) // 2, keep // 2
            cut_user = (tokenizer.decode(user_ids[:head]) + TRUNCATION_MARKER
                        + (tokenizer.decode(user_ids[-tail:]) if tail else ""))
            prompt = _prompt_ids(tokenizer, system, cut_user, sanitize)
            over = len(prompt) + len(target_ids) - max_length
            if over <= 0:
                break
            keep -= over
        else:
            raise ValueError(f"could not truncate the user data to fit max_length={max_length}")
    input_ids = prompt + target_ids
    labels = [-100] * len(prompt) + target_ids if target is not None else None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels,
            "prompt_length": len(prompt), "truncated": truncated}


def pad_sequences(seqs, value: int, side: str = "right") -> torch.Tensor:
    """The one padding: a long tensor [len(seqs), longest], each sequence padded with `value` on `side`
    ("right" or "left")."""
    n = max(len(s) for s in seqs)
    if side == "left":
        return torch.tensor([[value] * (n - len(s)) + list(s) for s in seqs], dtype=torch.long)
    return torch.tensor([list(s) + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def pad_batch(examples: list[dict], tokenizer, padding_side: str | None = None) -> dict:
    """Collate encode_example outputs to the batch's longest item: tensors input_ids, attention_mask,
    labels (when every example has them; padded with -100) and prompt_lengths."""
    side = padding_side or tokenizer.padding_side
    has_labels = all(e.get("labels") is not None for e in examples)
    out = {"input_ids": pad_sequences([e["input_ids"] for e in examples], tokenizer.pad_token_id, side),
           "attention_mask": pad_sequences([e["attention_mask"] for e in examples], 0, side),
           "prompt_lengths": torch.tensor([e["prompt_length"] for e in examples])}
    if has_labels:
        out["labels"] = pad_sequences([e["labels"] for e in examples], -100, side)
    return out
