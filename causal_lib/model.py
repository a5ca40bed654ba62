"""Tokenizer, prompt encoding, models (embedded tiny Llama or a real HF model, LoRA/QLoRA), checkpoints
and the memory estimate.

One prompt encoding for everything (`encode_example`): training, DPO data, generation, representations
and metrics all see exactly the same tokens for the same (system, user) pair.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import torch

from .config import ModelConfig

# ---------------------------------------------------------------------------------------------
# errors


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded as configured; the message says which and how to fix it."""


class CheckpointError(RuntimeError):
    """A checkpoint folder that is incomplete, corrupt, unsafe (pickle) or belongs to another model."""


# ---------------------------------------------------------------------------------------------
# tokenizer of the embedded model

SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN = "<|system|>", "<|user|>", "<|assistant|>"
END_TOKEN = "<|end|>"  # end of turn = eos: TRL appends eos to completions, so it must close the answer
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN]

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


# ---------------------------------------------------------------------------------------------
# prompt encoding: the one definition

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


def _text_ids(tokenizer, text: str) -> list[int]:
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
    return _text_ids(tokenizer, target)


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
        user_ids = _text_ids(tokenizer, user)
        keep = len(user_ids) - (len(prompt) + len(target_ids) - max_length) - len(_text_ids(tokenizer, TRUNCATION_MARKER))
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


def pad_batch(examples: list[dict], tokenizer, padding_side: str | None = None) -> dict:
    """Collate encode_example outputs to the batch's longest item: tensors input_ids, attention_mask,
    labels (when every example has them) and prompt_lengths."""
    side = padding_side or tokenizer.padding_side
    T = max(len(e["input_ids"]) for e in examples)
    has_labels = all(e.get("labels") is not None for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        n = T - len(e["input_ids"])
        pad = lambda seq, v: ([v] * n + list(seq)) if side == "left" else (list(seq) + [v] * n)  # noqa: E731
        ids.append(pad(e["input_ids"], tokenizer.pad_token_id))
        mask.append(pad(e["attention_mask"], 0))
        if has_labels:
            labels.append(pad(e["labels"], -100))
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
           "prompt_lengths": torch.tensor([e["prompt_length"] for e in examples])}
    if has_labels:
        out["labels"] = torch.tensor(labels)
    return out


# ---------------------------------------------------------------------------------------------
# models

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_llama_config(cfg: ModelConfig, tokenizer):
    from transformers import LlamaConfig

    t = cfg.tiny
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_attention_heads, max_position_embeddings=cfg.max_seq_length,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, use_cache=True,
    )


def build_tiny_model(cfg: ModelConfig, tokenizer, seed: int = 0):
    """The embedded model: a small Llama built from cfg.tiny, fp32, initialised from `seed` (without
    touching the global RNG). LoRA on top when cfg.use_lora (used by tests; full fine-tuning is the default)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(cfg, tokenizer)).float()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return _finish(model, cfg)


def _enable_gradient_checkpointing(model) -> None:
    # use_reentrant=False: works with frozen inputs (LoRA) and is what torch recommends.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # the KV cache is useless (and warned about) while checkpointing


def apply_lora(model, cfg: ModelConfig):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    lc = cfg.lora
    peft_cfg = PeftLoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                              target_modules=list(lc.target_modules), task_type="CAUSAL_LM")
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, peft_cfg)


def _finish(model, cfg: ModelConfig):
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if cfg.use_lora:
        model = apply_lora(model, cfg)
    return model


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _resolve_local(name_or_path: str) -> Path:
    """A local folder holding the model: the path itself, or the snapshot of a hub name in the local
    cache. Never downloads."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    how = (f"download it once on a connected machine (`huggingface-cli download {name_or_path}`, then copy the "
           f"cache ~/.cache/huggingface/hub here) or set model.name_or_path to a local folder")
    if p.exists():
        raise ModelLoadError(f"model {name_or_path!r}: {p} is a file, not a model folder; {how}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any failure here means: not available locally
        mode = "HF_HUB_OFFLINE=1" if _offline() else "downloads are never started by causal_lib"
        raise ModelLoadError(f"model {name_or_path!r} is not in the local cache / not a folder ({mode}; "
                             f"{type(e).__name__}); {how}") from None


def _require_safetensors(folder: Path, what: str) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = [f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
               and f.name != "training_args.bin"]
    detail = f"only pickle weights ({', '.join(sorted(pickles))})" if pickles else "no *.safetensors weights"
    raise ModelLoadError(f"{what} at {folder} has {detail}: only safetensors are loaded (pickle files can run code). "
                         f"Convert it once with a trusted tool, e.g. `model.save_pretrained(out, safe_serialization=True)`")


def _quantization_config(cfg: ModelConfig):
    if not cfg.load_in_4bit:
        return None, _DTYPES[cfg.dtype]
    if not torch.cuda.is_available():
        raise ModelLoadError("model.load_in_4bit: 4-bit QLoRA needs CUDA; set model.load_in_4bit: false to run LoRA "
                             "in fp32 on CPU (bitsandbytes 4-bit on CPU runs with no memory or speed benefit)")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                             bnb_4bit_use_double_quant=True)
    return bnb, compute


def _load_hf_base(cfg: ModelConfig):
    """Base HF model (quantised and prepared for k-bit training when asked) and its tokenizer; no LoRA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bnb, dtype = _quantization_config(cfg)  # fail fast, before touching the disk
    folder = _resolve_local(cfg.name_or_path)
    _require_safetensors(folder, f"model {cfg.name_or_path!r}")
    kw = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kw)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, use_safetensors=True, quantization_config=bnb,
            device_map={"": int(os.environ.get("LOCAL_RANK", 0))} if bnb is not None else None, **kw)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model {cfg.name_or_path!r} at {folder} could not be loaded: {type(e).__name__}: {e}") from e
    ensure_chat_template(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if bnb is not None:
        from peft import prepare_model_for_kbit_training

        # Freezes the base and upcasts norms to fp32; checkpointing is switched on by _finish, through the
        # non-deprecated v5 API, with use_reentrant=False (so no input-grad hack is needed).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # Marks a pristine base that can be reloaded from cfg.name_or_path: a LoRA checkpoint on top of it
    # then stores only the adapter (a module attribute, so it is never serialised into config.json).
    model.causal_pi_base = cfg.name_or_path
    return model, tokenizer


def load_hf_model(cfg: ModelConfig):
    """A real model from a local folder or the local HF cache (never downloads): fp32/bf16/fp16 as
    cfg.dtype, 4-bit NF4 on CUDA when cfg.load_in_4bit (QLoRA), LoRA when cfg.use_lora. -> (model, tokenizer)"""
    model, tokenizer = _load_hf_base(cfg)
    return _finish(model, cfg), tokenizer


def build_model(cfg: ModelConfig, tokenizer=None, seed: int = 0):
    """-> (model, tokenizer) for cfg.kind: 'tiny' needs the project's tokenizer, 'hf' loads its own."""
    if cfg.kind == "tiny":
        if tokenizer is None:
            raise ValueError("build_model(kind='tiny') needs the trained tokenizer (train_tokenizer / the base checkpoint)")
        return build_tiny_model(cfg, tokenizer, seed=seed), tokenizer
    if cfg.kind == "hf":
        return load_hf_model(cfg)
    raise ValueError(f"model.kind {cfg.kind!r}: expected 'tiny' or 'hf'")


def base_model_of(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable); 4-bit packed weights count as the parameters they hold."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # two 4-bit values per stored byte
            n *= 2 * getattr(getattr(p, "quant_storage", None), "itemsize", 1)
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


# ---------------------------------------------------------------------------------------------
# fingerprints and checkpoints

# Config keys that do not change what the weights mean.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "quantization_config", "use_cache",
                         "architectures", "name_or_path", "_name_or_path", "output_hidden_states",
                         "output_attentions", "return_dict", "_attn_implementation", "_experts_implementation",
                         "pad_token_id", "bos_token_id", "eos_token_id"}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(model) -> str:
    d = base_model_of(model).config.to_dict()
    return _hash({k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")})


def tokenizer_hash(tokenizer) -> str:
    return _hash({"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map,
                  "extra": [str(t) for t in getattr(tokenizer, "extra_special_tokens", []) or []],
                  "template": tokenizer.chat_template})


def _fingerprint_parts(model, tokenizer) -> dict:
    base = base_model_of(model)
    return {"model_class": type(base).__name__, "model_type": getattr(base.config, "model_type", ""),
            "config_hash": config_hash(model), "tokenizer_hash": tokenizer_hash(tokenizer),
            "adapter": is_peft_model(model)}


def model_fingerprint(model, tokenizer) -> str:
    """What a checkpoint must agree with to be used in place of `model`: architecture, config and
    tokenizer (not the weights)."""
    p = _fingerprint_parts(model, tokenizer)
    return (f"{p['model_class']}-cfg{p['config_hash']}-tok{p['tokenizer_hash']}"
            + ("-lora" if p["adapter"] else ""))


def _arch(model) -> dict:
    c = base_model_of(model).config.get_text_config()
    return {k: getattr(c, k, None) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                             "num_attention_heads", "intermediate_size")}


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_dict_without_lora(base) -> dict:
    """The base weights of a LoRA-wrapped model under their original names."""
    return {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}


def save_checkpoint(model, tokenizer, path, extra: dict | None = None, save_base: bool | None = None) -> Path:
    """Write model (or LoRA adapter), tokenizer and checkpoint.json atomically to `path`.

    Everything goes into `<path>.tmp-<pid>` first; checkpoint.json (fingerprint, file sizes and sha256,
    `extra`) is written last, then the folder is renamed over `path` (the old one is moved to
    `<path>.old-<pid>` for the instant between two renames, then deleted). A crash never leaves a
    half-written `path`; load_checkpoint refuses any folder without checkpoint.json. For a LoRA model the adapter is saved;
    the base weights too unless the base is the pristine model of model.name_or_path (loaded by
    load_hf_model), e.g. the tiny model or a fine-tuned base (`save_base` overrides).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    base = base_model_of(model)
    base_name = getattr(base, "causal_pi_base", "")  # set only on a base loaded by load_hf_model
    peft = is_peft_model(model)
    if save_base is None:
        save_base = peft and not base_name
    if peft and save_base and getattr(base, "is_loaded_in_4bit", False):
        raise CheckpointError("cannot save the 4-bit base weights of a QLoRA model; save the adapter only "
                              "(save_base=False) and reload the base from model.name_or_path")
    model.save_pretrained(str(tmp), safe_serialization=True)
    if peft and save_base:
        base.save_pretrained(str(tmp / "base"), state_dict=_state_dict_without_lora(base), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    files = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": _file_hash(f)}
             for f in sorted(tmp.rglob("*")) if f.is_file()}
    meta = {"format": 1, "fingerprint": model_fingerprint(model, tokenizer), **_fingerprint_parts(model, tokenizer),
            "arch": _arch(model), "base_name_or_path": base_name, "base_saved": bool(peft and save_base),
            "files": files, "extra": extra or {}}
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    old = path.parent / f"{path.name}.old-{os.getpid()}"
    if path.exists():
        os.replace(path, old)  # a folder cannot be renamed over a non-empty one: move the old aside first
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"incomplete or corrupt checkpoint at {path} ({why}); delete it and resume from an "
                           f"earlier one")


def read_checkpoint_meta(path) -> dict:
    """checkpoint.json of a checkpoint folder, after the safety and completeness checks."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path} (not a folder)")
    pickles = sorted(f.name for f in path.rglob("*") if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
                     and f.name != "training_args.bin")
    if pickles and not any(path.rglob("*.safetensors")):
        raise CheckpointError(f"checkpoint at {path} has only pickle weights ({', '.join(pickles)}): refused, only "
                              f"safetensors are loaded (pickle files can run code)")
    meta_file = path / "checkpoint.json"
    if not meta_file.exists():
        raise _corrupt(path, "no checkpoint.json: it was never finished")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise _corrupt(path, f"checkpoint.json is not valid JSON: {e}") from None
    return meta


def verify_checkpoint_files(path, meta: dict, hashes: bool = True) -> None:
    path = Path(path)
    for name, info in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise _corrupt(path, f"{name} is missing")
        if f.stat().st_size != info["size"]:
            raise _corrupt(path, f"{name} has {f.stat().st_size} bytes, {info['size']} were written")
        if hashes and _file_hash(f) != info["sha256"]:
            raise _corrupt(path, f"{name} does not match its sha256")


def load_checkpoint(path, cfg: ModelConfig, tokenizer=None, expected_fingerprint: str | None = None,
                    is_trainable: bool = True, verify_hashes: bool = True):
    """Load a folder written by save_checkpoint -> (model, tokenizer); the model is in eval mode.

    Refuses: pickle-only weights, a folder without checkpoint.json (unfinished), files whose size/sha256
    differ from those recorded, a tokenizer different from `tokenizer` (when given), a model kind or
    architecture different from `cfg`, a fingerprint different from `expected_fingerprint` (when given).
    trust_remote_code comes from cfg only.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    meta = read_checkpoint_meta(path)
    verify_checkpoint_files(path, meta, hashes=verify_hashes)
    if tokenizer is not None and tokenizer_hash(tokenizer) != meta.get("tokenizer_hash"):
        raise CheckpointError(f"checkpoint at {path} was trained with another tokenizer (vocab/template hash "
                              f"{meta.get('tokenizer_hash')} != {tokenizer_hash(tokenizer)}): refused")
    if expected_fingerprint is not None and expected_fingerprint != meta.get("fingerprint"):
        raise CheckpointError(f"checkpoint at {path} has fingerprint {meta.get('fingerprint')}, expected "
                              f"{expected_fingerprint}: refused")
    arch = meta.get("arch", {})
    if cfg.kind == "tiny":
        want = {k: getattr(cfg.tiny, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "intermediate_size")}
        got = {k: arch.get(k) for k in want}
        if meta.get("base_name_or_path") or got != want:
            raise CheckpointError(f"checkpoint at {path} is not a tiny model of this config (model.kind=tiny, "
                                  f"model.tiny={want}; checkpoint: {got}, base {meta.get('base_name_or_path')!r})")
    elif meta.get("adapter") and not meta.get("base_saved") and meta.get("base_name_or_path") != cfg.name_or_path:
        raise CheckpointError(f"checkpoint at {path} is a LoRA adapter for {meta.get('base_name_or_path')!r}, "
                              f"but model.name_or_path is {cfg.name_or_path!r}: refused")

    kw = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kw)
        if meta.get("adapter"):
            from peft import PeftModel

            if meta.get("base_saved"):
                base = AutoModelForCausalLM.from_pretrained(str(path / "base"), dtype=_DTYPES[cfg.dtype],
                                                            use_safetensors=True, **kw)
            else:
                base, _ = _load_hf_base(cfg)
            if cfg.gradient_checkpointing and is_trainable:
                _enable_gradient_checkpointing(base)
                base.enable_input_require_grads()
            model = PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[cfg.dtype], use_safetensors=True, **kw)
            if cfg.gradient_checkpointing and is_trainable:
                _enable_gradient_checkpointing(model)
    except (CheckpointError, ModelLoadError):
        raise
    except Exception as e:  # noqa: BLE001 - a truncated safetensors file, a broken config, ...
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    model.eval()
    if model_fingerprint(model, tok) != meta.get("fingerprint"):
        raise _corrupt(path, f"loaded model has fingerprint {model_fingerprint(model, tok)}, "
                             f"checkpoint.json says {meta.get('fingerprint')}")
    return model, tok


# ---------------------------------------------------------------------------------------------
# memory estimate (chapter 01 checks it against run.memory_limit_gb)

def _arch_from_config(cfg: ModelConfig) -> dict:
    if cfg.kind == "tiny":
        t = cfg.tiny
        return {"vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_attention_heads,
                "intermediate_size": t.intermediate_size, "head_dim": t.hidden_size // t.num_attention_heads,
                "tie_word_embeddings": True}
    from transformers import AutoConfig

    folder = _resolve_local(cfg.name_or_path)
    try:
        c = AutoConfig.from_pretrained(str(folder), trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model {cfg.name_or_path!r}: config.json at {folder} unreadable: {e}") from e
    tie = getattr(c, "tie_word_embeddings", False)
    c = c.get_text_config()
    H, heads = c.hidden_size, c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or H // heads
    return {"vocab_size": c.vocab_size, "hidden_size": H, "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": heads, "num_key_value_heads": getattr(c, "num_key_value_heads", None) or heads,
            "intermediate_size": getattr(c, "intermediate_size", None) or 4 * H, "head_dim": head_dim,
            "tie_word_embeddings": bool(tie)}


_LORA_SHAPES = {  # module name -> (in, out) in terms of the architecture
    "q_proj": lambda a: (a["hidden_size"], a["num_attention_heads"] * a["head_dim"]),
    "k_proj": lambda a: (a["hidden_size"], a["num_key_value_heads"] * a["head_dim"]),
    "v_proj": lambda a: (a["hidden_size"], a["num_key_value_heads"] * a["head_dim"]),
    "o_proj": lambda a: (a["num_attention_heads"] * a["head_dim"], a["hidden_size"]),
    "gate_proj": lambda a: (a["hidden_size"], a["intermediate_size"]),
    "up_proj": lambda a: (a["hidden_size"], a["intermediate_size"]),
    "down_proj": lambda a: (a["intermediate_size"], a["hidden_size"]),
}


def parameter_count_from_arch(a: dict) -> tuple[int, int]:
    """(total, of which embeddings + lm_head) for a Llama-style decoder (SwiGLU MLP, RMSNorm, GQA)."""
    H, L, F, V = a["hidden_size"], a["num_hidden_layers"], a["intermediate_size"], a["vocab_size"]
    q = a["num_attention_heads"] * a["head_dim"]
    kv = a["num_key_value_heads"] * a["head_dim"]
    per_layer = H * q + 2 * H * kv + q * H + 3 * H * F + 2 * H
    emb = V * H * (1 if a["tie_word_embeddings"] else 2)
    return L * per_layer + emb + H, emb


def lora_parameter_count(a: dict, cfg: ModelConfig) -> int:
    r = cfg.lora.r
    n = 0
    for m in cfg.lora.target_modules:
        i, o = _LORA_SHAPES.get(m, lambda a: (a["hidden_size"], a["hidden_size"]))(a)
        n += r * (i + o)
    return n * a["num_hidden_layers"]


def estimate_peak_memory(cfg, n_params: int | None = None, batch_size: int | None = None,
                         seq_len: int | None = None, passes_with_grad: int = 1,
                         clean_pass_no_grad: bool | None = None) -> dict:
    """Approximate peak training memory (GB) from the configuration alone (nothing is built or loaded).

    `cfg` is a Config (model + train.batch_size) or a ModelConfig (then pass batch_size). seq_len
    defaults to model.max_seq_length. passes_with_grad: forward passes whose activations are kept for
    one backward (1 for plain SFT and for the causal step with the clean pass under no_grad, 2 when both
    passes of a pair carry gradient). clean_pass_no_grad adds what the causal step's no_grad clean pass
    keeps alive (its logits for the KL and its hidden states); default: when train.defenses has "causal".
    Terms:
    - weights: fp32/bf16 per cfg.dtype; QLoRA: NF4 0.5 byte/param + double-quant constants (~0.127 bit)
      for the linear layers, embeddings and lm_head in the compute dtype;
    - gradients and Adam (2 fp32 moments; + an fp32 master copy is not used): trainable params only
      (LoRA: adapters, fp32);
    - activations kept for backward, per layer and token ~ (6H + 2*kv + 4F) values + 2*heads*T attention
      scores (eager attention; SDPA keeps less), or one layer input per layer plus one layer's
      activations with gradient checkpointing; plus fp32 logits (x3: logits, softmax, grad); x1.2 for
      backward transients;
    - 0.4 GB for the Python/torch runtime.
    An estimate for a go/no-go check, not a measurement: chapter 03's dry run measures the real peak.
    """
    mcfg = cfg.model if hasattr(cfg, "model") else cfg
    if batch_size is None:
        if not hasattr(cfg, "train"):
            raise ValueError("estimate_peak_memory(ModelConfig, ...) needs batch_size")
        batch_size = cfg.train.batch_size
    T = seq_len or mcfg.max_seq_length
    a = _arch_from_config(mcfg)
    total, emb = parameter_count_from_arch(a)
    if n_params is not None:
        emb = min(emb, n_params)
        total = n_params
    H, L, F = a["hidden_size"], a["num_hidden_layers"], a["intermediate_size"]
    kv = a["num_key_value_heads"] * a["head_dim"]
    GB = 1024 ** 3
    if mcfg.load_in_4bit:
        compute_bytes = 2
        weights = (total - emb) * (0.5 + 0.127 / 8) + emb * 2
    else:
        compute_bytes = 4 if mcfg.dtype == "float32" else 2
        weights = total * compute_bytes
    trainable = lora_parameter_count(a, mcfg) if mcfg.use_lora else total
    grad_bytes = 4 if (mcfg.use_lora or mcfg.dtype == "float32") else 2
    gradients = trainable * grad_bytes
    optimizer = trainable * 8  # Adam m and v in fp32
    lora_weights = trainable * 4 if mcfg.use_lora else 0
    per_layer = batch_size * T * (6 * H + 2 * kv + 4 * F + 2 * a["num_attention_heads"] * T) * compute_bytes
    if mcfg.gradient_checkpointing:
        layers = L * batch_size * T * H * compute_bytes + per_layer
    else:
        layers = L * per_layer
    logits = batch_size * T * a["vocab_size"] * 4 * 3
    # x1.2: backward transients (activation gradients, allocator slack); calibrated on the tiny model at
    # batch 32 / 2 threads: measured peak RSS 0.61 GB (T=64) and 1.18 GB (T=192) vs 0.64 and 1.16 estimated.
    activations = 1.2 * passes_with_grad * (layers + logits)
    if clean_pass_no_grad is None:
        clean_pass_no_grad = "causal" in getattr(getattr(cfg, "train", None), "defenses", [])
    if clean_pass_no_grad:
        activations += batch_size * T * (a["vocab_size"] * 4 + (L + 1) * H * compute_bytes)
    runtime = 0.4 * GB
    peak = weights + lora_weights + gradients + optimizer + activations + runtime
    return {
        "n_params": int(total), "n_trainable": int(trainable), "batch_size": batch_size, "seq_len": T,
        "weights_gb": (weights + lora_weights) / GB, "gradients_gb": gradients / GB, "optimizer_gb": optimizer / GB,
        "activations_gb": activations / GB, "runtime_gb": runtime / GB, "total_gb": peak / GB,
        "assumptions": ("4-bit NF4 weights (QLoRA)" if mcfg.load_in_4bit else f"{mcfg.dtype} weights")
        + ("; LoRA adapters trainable only" if mcfg.use_lora else "; full fine-tuning")
        + ("; gradient checkpointing" if mcfg.gradient_checkpointing else "")
        + f"; Adam; {passes_with_grad} pass(es) with gradient"
        + ("; + the causal step's no_grad clean pass" if clean_pass_no_grad else ""),
    }


__all__ = [
    "ModelLoadError", "CheckpointError", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "train_tokenizer", "ensure_chat_template",
    "chat_messages", "prompt_text", "encode_example", "pad_batch", "build_tiny_model", "tiny_llama_config",
    "apply_lora", "load_hf_model", "build_model", "base_model_of", "is_peft_model", "count_parameters",
    "model_fingerprint", "tokenizer_hash", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta",
    "estimate_peak_memory", "parameter_count_from_arch", "lora_parameter_count",
]
