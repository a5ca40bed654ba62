"""Memory and size estimates before anything is loaded: parameter counts of the architecture (full and
LoRA) from the model config, and `estimate_peak_memory`, the peak training memory the setup check and
the dry run compare against the machine."""
from __future__ import annotations

from causal_lib.config import ModelConfig
from causal_lib.models.load import ModelLoadError, model_folder, resolved_dtype


def _arch_from_config(cfg: ModelConfig) -> dict:
    if cfg.kind == "tiny":
        t = cfg.tiny
        return {"vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_attention_heads,
                "intermediate_size": t.intermediate_size, "head_dim": t.hidden_size // t.num_attention_heads,
                "tie_word_embeddings": True}
    from transformers import AutoConfig

    folder = model_folder(cfg)
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
        compute_bytes = 4 if resolved_dtype(mcfg) == "float32" else 2
        weights = total * compute_bytes
    trainable = lora_parameter_count(a, mcfg) if mcfg.use_lora else total
    grad_bytes = 4 if (mcfg.use_lora or resolved_dtype(mcfg) == "float32") else 2
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
        "assumptions": ("4-bit NF4 weights (QLoRA)" if mcfg.load_in_4bit else f"{resolved_dtype(mcfg)} weights")
        + ("; LoRA adapters trainable only" if mcfg.use_lora else "; full fine-tuning")
        + ("; gradient checkpointing" if mcfg.gradient_checkpointing else "")
        + f"; Adam; {passes_with_grad} pass(es) with gradient"
        + ("; + the causal step's no_grad clean pass" if clean_pass_no_grad else ""),
    }
