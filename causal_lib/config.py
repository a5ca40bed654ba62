"""The one typed configuration that every chapter and function reads.

A params file (YAML) is a nested mapping whose sections mirror the dataclasses below. Loading checks
everything before any work starts: an unknown key names itself and the closest valid key, a wrong
type or an out-of-range value says which field and why (`ConfigError`).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from causal_lib.data.world import TASK_NAMES
from causal_lib.defenses import registry


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=1")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message says what and how to fix it."""


def _range(lo=None, hi=None, **kw):
    return {"min": lo, "max": hi, **kw}


@dataclass
class RunConfig:
    name: str = "default"
    seed: int = 0
    # Seed replicas: chapters 04-06 and 08 run again for each of these seeds (same data, same test set:
    # data.seed stays at run.seed) under outputs/<run>/seeds/seed_<s>/, and 08 reports mean and spread
    # over `seed` and these. Empty = one seed.
    seeds: list[int] = field(default_factory=list)
    output_root: str = "outputs"
    memory_limit_gb: float = field(default=5.5, metadata=_range(0.1))
    chapter_timeout_s: int = field(default=3600, metadata=_range(10))
    torch_threads: int = field(default=2, metadata=_range(1))


@dataclass
class DataConfig:
    seed: int | None = None  # seed of the generated world; None = run.seed
    n_train: int = field(default=6000, metadata=_range(10))  # counterfactual pairs for defense training
    n_val: int = field(default=400, metadata=_range(4))
    n_test: int = field(default=600, metadata=_range(4))
    n_base_corpus: int = field(default=20000, metadata=_range(10))  # instruction-following examples for the base
    n_benign_lookalikes: int = field(default=300, metadata=_range(0))
    n_sep_probes: int = field(default=300, metadata=_range(0))
    held_out_families: list[str] = field(default_factory=lambda: ["role_authority", "multi_injection", "obfuscation"])
    attack_files: list[str] = field(default_factory=list)  # external JSONL attack templates (README)


@dataclass
class TinyModelConfig:
    vocab_size: int = field(default=2048, metadata=_range(64))
    hidden_size: int = field(default=192, metadata=_range(8))
    num_hidden_layers: int = field(default=4, metadata=_range(1))
    num_attention_heads: int = field(default=4, metadata=_range(1))
    intermediate_size: int = field(default=512, metadata=_range(8))


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata=_range(1))
    alpha: int = field(default=32, metadata=_range(1))
    dropout: float = field(default=0.05, metadata=_range(0.0, 1.0))
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    kind: Literal["tiny", "hf"] = "tiny"
    name_or_path: str = ""  # for kind=hf: a hub name (must be cached when offline) or a local folder
    max_seq_length: int = field(default=192, metadata=_range(16))
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    load_in_4bit: bool = False
    use_lora: bool = False
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    repr_layer: int = -1  # hidden_states index used for R (negative counts from the end)
    repr_pooling: Literal["last", "mean"] = "last"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TrainConfig:
    # pre-training of the undefended base (tiny model only)
    base_epochs: float = field(default=3.0, metadata=_range(0.0))
    base_learning_rate: float = field(default=1e-3, metadata=_range(0.0, 1.0))
    # further questions on the same document, asked as later user turns of the base's plain examples
    # (world.followup_turns): more supervised answers per sequence; 0 = one question per example
    base_followups: int = field(default=0, metadata=_range(0))
    # a curriculum: stages run in order before the whole base corpus, each base_curriculum_epochs epochs over
    # the plain examples of its tasks alone. The copy mechanism (answer = a token of the data) forms within
    # ~400 steps on first/last item alone but stalls for thousands of steps in the 7-task mixture
    # (README, "The base model"); [] or 0 epochs = no curriculum
    base_curriculum: list[list[str]] = field(default_factory=list)
    base_curriculum_epochs: float = field(default=0.0, metadata=_range(0.0))
    # defense training (05_train)
    defenses: list[str] = field(default_factory=lambda: ["causal", "struq", "secalign"])
    epochs: float = field(default=2.0, metadata=_range(0.0))
    learning_rate: float = field(default=3e-4, metadata=_range(0.0, 1.0))
    batch_size: int = field(default=32, metadata=_range(1))
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1))
    warmup_ratio: float = field(default=0.05, metadata=_range(0.0, 1.0))
    max_grad_norm: float = field(default=1.0, metadata=_range(0.0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    lambda_causal: float = field(default=0.5, metadata=_range(0.0))
    lambda_spurious: float = field(default=0.5, metadata=_range(0.0))
    kl_weight: float = field(default=0.0, metadata=_range(0.0))  # optional KL term inside L_causal
    dpo_beta: float = field(default=0.1, metadata=_range(0.0))
    # SecAlign's DPO learning rate; 0 = train.learning_rate (LoRA-DPO needs a higher lr than full FT)
    dpo_learning_rate: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # SecAlign's DPO epochs; 0 = train.epochs. One by default: a DPO step costs ~2-3 SFT steps on CPU
    # (chosen + rejected) and reward accuracy passes 0.95 within the first epoch on the embedded world
    dpo_epochs: float = field(default=1.0, metadata=_range(0.0))
    # weight of an NLL term on the chosen answer next to the DPO loss (RPO, Pang et al. 2024); 0 = plain
    # DPO as in SecAlign. Plain DPO on injected prompts alone can erode the answers on clean inputs
    dpo_sft_weight: float = field(default=0.0, metadata=_range(0.0))
    # share of training pairs whose injected side is the clean item itself: keeps a task gradient on
    # clean inputs, since the clean pass of a pair is the no-grad target of L_causal
    clean_pair_fraction: float = field(default=0.25, metadata=_range(0.0, 1.0))
    val_pairs: int = field(default=200, metadata=_range(2))  # validation pairs scored at each epoch
    debug: bool = False
    debug_samples: int = field(default=100, metadata=_range(1))
    dry_run_steps: int = field(default=10, metadata=_range(1))
    dry_run_samples: int = field(default=100, metadata=_range(1))
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"


@dataclass
class EvalConfig:
    batch_size: int = field(default=64, metadata=_range(1))
    max_new_tokens: int = field(default=16, metadata=_range(1))
    n_attacked: int = field(default=0, metadata=_range(0))  # 0 = every attacked test item
    pass_k: int = field(default=1, metadata=_range(1))
    gcg_items: int = field(default=20, metadata=_range(0))
    gcg_steps: int = field(default=30, metadata=_range(0))
    gcg_suffix_tokens: int = field(default=10, metadata=_range(1))
    gcg_topk: int = field(default=64, metadata=_range(1))
    gcg_candidates: int = field(default=64, metadata=_range(1))


@dataclass
class StatsConfig:
    alpha: float = field(default=0.05, metadata=_range(0.0, 1.0))
    n_independence: int = field(default=1000, metadata=_range(20))  # fixed n of the d-separation test
    repr_dim: int = field(default=32, metadata=_range(1))  # documented PCA reduction of R before HSIC
    n_permutations: int = field(default=500, metadata=_range(10))
    n_bootstrap: int = field(default=1000, metadata=_range(10))
    calibration_repetitions: int = field(default=200, metadata=_range(10))
    discovery_bootstrap: int = field(default=20, metadata=_range(1))


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def params_hash(self) -> str:
        """Hash of everything that changes results (the run name does not)."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("name", "output_root", "chapter_timeout_s")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def run_dir(self) -> Path:
        root = Path(self.run.output_root)
        if not root.is_absolute():
            root = PROJECT_ROOT / root
        return root / self.run.name


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def _build(cls, data: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {(where + '.' if where else '') + str(key)!r}{hint} "
                              f"(valid keys here: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        path = f"{where}.{f.name}" if where else f.name
        value = _coerce(data[f.name], hints[f.name], path)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"{path}: {value!r} is out of range, must be >= {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{path}: {value!r} is out of range, must be <= {hi}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _check_consistency(cfg: Config) -> None:

    for d in cfg.train.defenses:
        if d not in registry.trained_names():
            close = difflib.get_close_matches(d, registry.trained_names(), n=1)
            raise ConfigError(f"train.defenses: unknown defense {d!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "") + f"; choose from the trained defenses {registry.trained_names()}")

    for i, stage in enumerate(cfg.train.base_curriculum):
        if not stage:
            raise ConfigError(f"train.base_curriculum[{i}]: a stage needs at least one task; choose from {TASK_NAMES}")
        for t in stage:
            if t in TASK_NAMES:
                continue
            close = difflib.get_close_matches(t, TASK_NAMES, n=1)
            raise ConfigError(f"train.base_curriculum[{i}]: unknown task {t!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "") + f"; choose from {TASK_NAMES}")
    seeds = cfg.run.seeds
    if cfg.run.seed in seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"run.seeds: {seeds} must be distinct extra seeds, without run.seed ({cfg.run.seed}), "
                          f"e.g. run.seeds: [1, 2] for three seeds in all")
    m = cfg.model
    if m.kind == "hf" and not m.name_or_path:
        raise ConfigError("model.name_or_path: required when model.kind is 'hf' (a hub name or a local folder)")
    if m.kind == "tiny" and m.tiny.hidden_size % m.tiny.num_attention_heads:
        raise ConfigError(f"model.tiny.hidden_size ({m.tiny.hidden_size}) must be divisible by "
                          f"model.tiny.num_attention_heads ({m.tiny.num_attention_heads})")
    if m.load_in_4bit and not m.use_lora:
        raise ConfigError("model.load_in_4bit: 4-bit weights cannot be trained directly; set model.use_lora: true (QLoRA)")


def _set_dotted(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    d[keys[-1]] = value


def config_from_dict(data: dict | None, overrides: dict | None = None) -> Config:
    data = json.loads(json.dumps(data or {}))  # deep copy, plain types
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    cfg = _build(Config, data)
    _check_consistency(cfg)
    return cfg


def resolve_params_path(path: str | Path) -> Path:
    """A params path as given, or relative to the project root (notebooks run from notebooks/)."""
    p = Path(path)
    if p.exists():
        return p.resolve()
    if not p.is_absolute() and (PROJECT_ROOT / p).exists():
        return PROJECT_ROOT / p
    raise ConfigError(f"params file not found: {path} (looked in {Path.cwd()} and {PROJECT_ROOT}); "
                      f"available: {', '.join(sorted(x.name for x in (PROJECT_ROOT / 'params').glob('*.yaml')))}")


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Read and validate a params file; `overrides` maps dotted keys ("train.epochs") to values."""
    p = resolve_params_path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{p.name}: {e}") from None
