"""Tokenizer, prompt encoding, models (embedded tiny Llama or a real HF model, LoRA/QLoRA), checkpoints
and the memory estimate.

One prompt encoding for everything (`encode_example`): training, DPO data, generation, representations
and metrics all see exactly the same tokens for the same (system, user) pair.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from causal_lib.config import ModelConfig
from causal_lib.models.prompts import ensure_chat_template


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded as configured; the message says which and how to fix it."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 in the CPU's flags (Linux): bf16 matrix products run natively, ~1.9x faster than fp32
    for SmolLM2's LoRA steps (DESIGN.md s.9); without them they are emulated and far slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolved_dtype(cfg: ModelConfig) -> str:
    """model.dtype with `auto` decided for this machine: bfloat16 on a CUDA GPU that supports it or a CPU with native
    bf16, else float32 (float16 is never chosen automatically)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


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


def enable_gradient_checkpointing(model) -> None:
    # use_reentrant=False: works with frozen inputs (LoRA) and is what torch recommends.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # the KV cache is useless (and warned about) while checkpointing


def apply_lora(model, cfg: ModelConfig, trainable_tokens: list[int] | None = None):
    """LoRA adapters on cfg.lora.target_modules; `trainable_tokens`: embedding rows trained as well (peft's trainable
    tokens, tied output rows included), e.g. StruQ's new delimiters, which frozen embeddings would leave at their
    initialisation."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lc = cfg.lora
    peft_cfg = PeftLoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                              target_modules=list(lc.target_modules), task_type="CAUSAL_LM",
                              trainable_token_indices=list(trainable_tokens) if trainable_tokens else None)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, peft_cfg)


def _finish(model, cfg: ModelConfig):
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.use_lora:
        model = apply_lora(model, cfg)
    return model


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_local(name_or_path: str) -> Path:
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


def model_folder(cfg: ModelConfig) -> Path:
    """The local folder of a real model: SmolLM2 from the PyPI extra (converted once) for model.source: smollm2,
    else model.name_or_path resolved locally (resolve_local). Never downloads."""
    if cfg.source == "smollm2":
        from causal_lib.models import smollm2

        try:
            return smollm2.ensure_converted()
        except smollm2.Smollm2Missing as e:
            raise ModelLoadError(str(e)) from None
    return resolve_local(cfg.name_or_path)


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
        return None, DTYPES[resolved_dtype(cfg)]
    if not torch.cuda.is_available():
        raise ModelLoadError("model.load_in_4bit: 4-bit QLoRA needs CUDA; set model.load_in_4bit: false to run LoRA "
                             "in fp32 on CPU (bitsandbytes 4-bit on CPU runs with no memory or speed benefit)")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                             bnb_4bit_use_double_quant=True)
    return bnb, compute


def load_hf_base(cfg: ModelConfig):
    """Base HF model (quantised and prepared for k-bit training when asked) and its tokenizer; no LoRA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bnb, dtype = _quantization_config(cfg)  # fail fast, before touching the disk
    folder = model_folder(cfg)
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


def forget_pristine_base(model) -> None:
    """Drop load_hf_base's mark from a model whose weights or vocabulary no longer are those of model.name_or_path
    (a merged adapter, grown embeddings): save_checkpoint then stores its base instead of naming it."""
    base = base_model_of(model)
    if hasattr(base, "causal_pi_base"):
        del base.causal_pi_base


def load_hf_model(cfg: ModelConfig):
    """A real model from a local folder or the local HF cache (never downloads): fp32/bf16/fp16 as
    cfg.dtype, 4-bit NF4 on CUDA when cfg.load_in_4bit (QLoRA), LoRA when cfg.use_lora. -> (model, tokenizer)"""
    model, tokenizer = load_hf_base(cfg)
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
