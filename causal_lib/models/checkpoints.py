"""Checkpoints: `save_checkpoint` writes model (or LoRA adapter), tokenizer and checkpoint.json
(fingerprint, file sizes and sha256) atomically; `load_checkpoint` refuses pickle weights, unfinished or
corrupt folders and checkpoints of another model; `checkpoint_json` reads the metadata for bookkeeping."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from causal_lib.core.hashing import file_sha256, json_hash
from causal_lib.core.run_folder import replace_folder
from causal_lib.config import ModelConfig
from causal_lib.models.load import (
    DTYPES,
    ModelLoadError,
    base_model_of,
    enable_gradient_checkpointing,
    is_peft_model,
    load_hf_base,
    resolved_dtype,
)


class CheckpointError(RuntimeError):
    """A checkpoint folder that is incomplete, corrupt, unsafe (pickle) or belongs to another model."""


# Config keys that do not change what the weights mean.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "quantization_config", "use_cache",
                         "architectures", "name_or_path", "_name_or_path", "output_hidden_states",
                         "output_attentions", "return_dict", "_attn_implementation", "_experts_implementation",
                         "pad_token_id", "bos_token_id", "eos_token_id"}


def _hash(obj) -> str:
    return json_hash(obj, default=str)


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


def _state_dict_without_lora(base) -> dict:
    """The base weights of a LoRA-wrapped model under their original names (the adapter's own tensors, LoRA
    matrices and trainable-token deltas, are in the adapter file)."""
    return {k.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", "."): v
            for k, v in base.state_dict().items() if "lora_" not in k and "trainable_tokens_delta" not in k}


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
    files = {str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": file_sha256(f)}
             for f in sorted(tmp.rglob("*")) if f.is_file()}
    meta = {"format": 1, "fingerprint": model_fingerprint(model, tokenizer), **_fingerprint_parts(model, tokenizer),
            "arch": _arch(model), "base_name_or_path": base_name, "base_saved": bool(peft and save_base),
            "files": files, "extra": extra or {}}
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return replace_folder(tmp, path)


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"incomplete or corrupt checkpoint at {path} ({why}); delete it and resume from an "
                           f"earlier one")


def checkpoint_json(path) -> dict | None:
    """The checkpoint.json of a checkpoint folder as written, None when there is none or it is not a readable
    JSON object (no other checks: for bookkeeping such as cache keys and epoch numbers; loading goes through
    read_checkpoint_meta, which says what is wrong)."""
    meta_file = Path(path) / "checkpoint.json"
    if not meta_file.is_file() or meta_file.stat().st_size > MAX_META_BYTES:
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # unreadable: as good as unfinished (loading says why)
        return None
    return meta if isinstance(meta, dict) else None


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
    if meta_file.stat().st_size > MAX_META_BYTES:
        raise _corrupt(path, f"checkpoint.json is {meta_file.stat().st_size:,} bytes, over the "
                             f"{MAX_META_BYTES // 2**20} MiB a checkpoint's metadata takes")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _corrupt(path, f"checkpoint.json is not valid JSON: {e}") from None
    except (RecursionError, ValueError) as e:  # nested thousands deep, not UTF-8, a 5001-digit number
        why = "nested too deeply" if isinstance(e, RecursionError) else f"{type(e).__name__}: {str(e)[:100]}"
        raise _corrupt(path, f"checkpoint.json cannot be read ({why})") from None
    problem = meta_problem(meta)
    if problem:
        raise _corrupt(path, f"checkpoint.json: {problem}")
    return meta


MAX_META_BYTES = 16 * 1024 * 1024  # checkpoint.json: a fingerprint and one entry per file, a few KiB


def meta_problem(meta) -> str | None:
    """What makes `meta` (a parsed checkpoint.json) unusable, or None: an object whose `files` maps relative
    file names inside the folder to {"size": bytes, "sha256": hex} (as save_checkpoint writes it)."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    files = meta.get("files", {})
    if not isinstance(files, dict):
        return f"'files' must map file names to their size and sha256, got {type(files).__name__}"
    for name, info in files.items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts:
            return f"file name {name[:80]!r} is not a path inside the checkpoint folder"
        if not (isinstance(info, dict) and type(info.get("size")) is int and info["size"] >= 0
                and isinstance(info.get("sha256"), str)):
            return f"'files'[{name[:80]!r}] must be {{\"size\": bytes, \"sha256\": hex}}"
    for key in ("extra", "arch"):
        if key in meta and not isinstance(meta[key], dict):
            return f"{key!r} must be a JSON object, got {type(meta[key]).__name__}"
    return None


def verify_checkpoint_files(path, meta: dict, hashes: bool = True) -> None:
    path = Path(path)
    problem = meta_problem(meta)
    if problem:
        raise _corrupt(path, f"checkpoint.json: {problem}")
    for name, info in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise _corrupt(path, f"{name} is missing")
        if f.stat().st_size != info["size"]:
            raise _corrupt(path, f"{name} has {f.stat().st_size} bytes, {info['size']} were written")
        if hashes and file_sha256(f) != info["sha256"]:
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
                base = AutoModelForCausalLM.from_pretrained(str(path / "base"), dtype=DTYPES[resolved_dtype(cfg)],
                                                            use_safetensors=True, **kw)
            else:
                base, _ = load_hf_base(cfg)
            if cfg.gradient_checkpointing and is_trainable:
                enable_gradient_checkpointing(base)
                base.enable_input_require_grads()
            model = PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[resolved_dtype(cfg)], use_safetensors=True, **kw)
            if cfg.gradient_checkpointing and is_trainable:
                enable_gradient_checkpointing(model)
    except (CheckpointError, ModelLoadError):
        raise
    except Exception as e:  # noqa: BLE001 - a truncated safetensors file, a broken config, ...
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    model.eval()
    if model_fingerprint(model, tok) != meta.get("fingerprint"):
        raise _corrupt(path, f"loaded model has fingerprint {model_fingerprint(model, tok)}, "
                             f"checkpoint.json says {meta.get('fingerprint')}")
    return model, tok
