"""StruQ (Chen et al. 2025): a secure front-end (reserved delimiter tokens for the instruction, the data
and the response, which only the prompt template can emit and which are stripped from the data) plus
structured instruction tuning (SFT on clean and injected samples whose target is always O*).

How the front-end is built here. The base is a chat model: its template already frames S and U in role
turns. StruQ's delimiters are added *inside* that frame by the tokenizer's chat template (a prelude that
prefixes the system content with <|inst|>, the user content with <|data|>, and the generation prompt with
<|resp|>), so a StruQ prompt reads

    <|system|><|inst|>S<|end|><|user|><|data|>U'<|end|><|assistant|><|resp|>        (U' = strip_reserved(U))

Putting the delimiters in the template (not in the message text) means (1) the one prompt encoder
`models.prompts.encode_example` produces the StruQ format unchanged for training, DPO data, generation and metrics,
(2) the format travels with the checkpoint's tokenizer, and (3) the delimiters are control tokens: even an
unstripped copy written into U is encoded as plain text by encode_example's sanitising path. The filter
`strip_reserved` is StruQ's own front-end on top of that. The base's format is kept, so training starts
from a model that already follows it; the new embeddings start at the mean embedding of the words they
stand for ("instruction", "input", "response"), as in the paper.

Evaluation of a StruQ (or SecAlign) model: load its checkpoint (its tokenizer carries the template) and
feed `struq_prompt(record, tokenizer)` as (system, user) - `view_records` does exactly that.
"""
from __future__ import annotations

import dataclasses
import random
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from causal_lib.config import Config
from causal_lib.data import attacks, world
from causal_lib.data.records import REALISTIC, load_split
from causal_lib.data.injections import GOALS, POSITIONS
from causal_lib.defenses.cards import write_model_card
from causal_lib.models.checkpoints import load_checkpoint
from causal_lib.models.load import apply_lora, base_model_of, forget_pristine_base, is_peft_model
from causal_lib.models.prompts import ensure_chat_template, prompt_text
from causal_lib.models.tokens import SPECIAL_TOKENS
from causal_lib.training import selection
from causal_lib.training.examples import SFTDataset, make_pairs, training_slots
from causal_lib.training.pretrain import base_checkpoint, load_base_model
from causal_lib.training.trainer import SFTTrainer, run_training

INST_TOKEN, DATA_TOKEN, RESP_TOKEN = "<|inst|>", "<|data|>", "<|resp|>"


RESERVED_TOKENS = (INST_TOKEN, DATA_TOKEN, RESP_TOKEN)


# The words whose mean embedding initialises each new delimiter (StruQ initialises [INST]/[INPT]/[RESP]
# from the text delimiters they replace).
RESERVED_INIT_WORDS = {INST_TOKEN: "instruction", DATA_TOKEN: "input", RESP_TOKEN: "response"}


# Marks a template already converted, so loading a StruQ checkpoint and converting again is a no-op.
_TEMPLATE_MARK = "{#- causal-pi struq front-end -#}"


_PRELUDE = (
    _TEMPLATE_MARK
    + "{% set ns = namespace(m=[]) %}{% for m in messages %}"
    + "{% if m['role'] == 'system' %}{% set ns.m = ns.m + [dict(m, content='" + INST_TOKEN + "' + m['content'])] %}"
    + "{% elif m['role'] == 'user' %}{% set ns.m = ns.m + [dict(m, content='" + DATA_TOKEN + "' + m['content'])] %}"
    + "{% elif m['role'] == 'assistant' %}{% set ns.m = ns.m + [dict(m, content='" + RESP_TOKEN + "' + m['content'])] %}"
    + "{% else %}{% set ns.m = ns.m + [m] %}{% endif %}{% endfor %}{% set messages = ns.m %}"
)


_SUFFIX = "{% if add_generation_prompt %}" + RESP_TOKEN + "{% endif %}"


# StruQ's training mixture: half the samples clean, the injected half split naive / completion-style.
STRUQ_CLEAN_FRACTION = 0.5


STRUQ_COMPLETION_SHARE = 0.5


# Attack families of the world that count as each style (others are not trained on, as in the paper:
# ignore/escape/combined/... are test-time attacks).
NAIVE_FAMILIES = ("naive",)


def attack_style(family: str | None) -> str | None:
    """'naive', 'completion' (fake-completion style: a fake answer then a new instruction) or None."""
    f = (family or "").lower()
    if f in NAIVE_FAMILIES:
        return "naive"
    if "completion" in f:
        return "completion"
    return None


def struq_chat_template(base_template: str) -> str:
    """The base chat template with StruQ's delimiters added inside each turn (see the module docstring).
    Works on any template that renders `messages` (role/content dicts)."""
    if not isinstance(base_template, str) or not base_template:
        raise ValueError("StruQ needs a single chat template string on the tokenizer (models.prompts.ensure_chat_template)")
    if base_template.startswith(_TEMPLATE_MARK):
        return base_template
    return _PRELUDE + base_template + _SUFFIX


def is_struq_tokenizer(tokenizer) -> bool:
    if not str(getattr(tokenizer, "chat_template", "") or "").startswith(_TEMPLATE_MARK):
        return False
    ids = [tokenizer.convert_tokens_to_ids(t) for t in RESERVED_TOKENS]  # (get_vocab builds a dict: slow per call)
    return all(i is not None and i != tokenizer.unk_token_id for i in ids)


def reserved_token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in RESERVED_TOKENS}


@torch.no_grad()
def add_reserved_tokens(model, tokenizer):
    """Add <|inst|>, <|data|>, <|resp|> as special tokens, switch the tokenizer to the StruQ template, grow
    the embeddings and initialise each new row (input and, when untied, output) to the mean embedding of
    its word's tokens. -> (model, tokenizer); a no-op when the tokenizer is already a StruQ tokenizer.

    Call before wrapping the model with LoRA; prepare_struq_model then trains the new rows with the adapters."""
    from tokenizers import AddedToken


    if is_struq_tokenizer(tokenizer):
        return model, tokenizer
    ensure_chat_template(tokenizer)
    # Word pieces first, before the new tokens exist (a word must not map onto a delimiter).
    init_ids = {t: tokenizer.encode(w, add_special_tokens=False) for t, w in RESERVED_INIT_WORDS.items()}
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False)
                          for t in RESERVED_TOKENS], special_tokens=True)
    tokenizer.chat_template = struq_chat_template(tokenizer.chat_template)
    base = base_model_of(model)
    old_n = base.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_n:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if not getattr(base, "is_loaded_in_4bit", False):
            # its checkpoints must carry the grown base, since an adapter alone would be reloaded onto the original,
            # smaller embeddings (a 4-bit base cannot be saved: README "Real models on a GPU")
            forget_pristine_base(base)
    emb_in = base.get_input_embeddings().weight
    out = base.get_output_embeddings()
    emb_out = None if out is None or out.weight is emb_in else out.weight
    for t, ids in init_ids.items():
        new = tokenizer.convert_tokens_to_ids(t)
        emb_in[new] = emb_in[ids].mean(0)
        if emb_out is not None:
            emb_out[new] = emb_out[ids].mean(0)
    return model, tokenizer


def control_tokens(tokenizer=None) -> list[str]:
    """Every string that must never come from the data: StruQ's delimiters, the embedded model's role
    tokens, and the tokenizer's special tokens plus the added tokens its chat template writes."""

    toks = set(RESERVED_TOKENS) | set(SPECIAL_TOKENS)
    if tokenizer is not None:
        template = str(getattr(tokenizer, "chat_template", "") or "")
        for t in getattr(tokenizer, "added_tokens_decoder", {}).values():
            if t.content and not t.content.isspace() and (t.special or t.content in template):
                toks.add(t.content)
        toks |= {t for t in getattr(tokenizer, "all_special_tokens", []) if t and not t.isspace()}
    return sorted(toks, key=len, reverse=True)


def strip_reserved(text: str, tokenizer=None) -> str:
    """StruQ's front-end filter on the data: remove every occurrence of the reserved delimiters and of the
    chat template's control tokens. Repeats until nothing changes, since removing one occurrence can join
    two halves into a new one ("<|da<|data|>ta|>" -> "<|data|>")."""
    pattern = re.compile("|".join(re.escape(t) for t in control_tokens(tokenizer)))
    prev = None
    while prev != text:
        prev, text = text, pattern.sub("", text)
    return text


def struq_prompt(record, tokenizer) -> tuple[str, str]:
    """(system, user) that the evaluation feeds a StruQ or SecAlign model for `record` (a Record or a
    (system, data) pair): S as it is, the data filtered by `strip_reserved`. The delimiters themselves
    come from the StruQ tokenizer's template, so `tokenizer` must be the trained model's tokenizer."""
    if not is_struq_tokenizer(tokenizer):
        raise ValueError("struq_prompt needs the StruQ/SecAlign model's own tokenizer (with the reserved delimiters "
                         "and the StruQ chat template): load the defense's checkpoint, or call add_reserved_tokens")
    system, data = (record[0], record[1]) if isinstance(record, (tuple, list)) else (record.system, record.data)
    return system or "", strip_reserved(data or "", tokenizer)


def view_records(records, tokenizer) -> list:
    """The records as a StruQ-trained model reads them: its structured prompt (reserved delimiters, the
    delimiters stripped from the data) as (system, user)."""
    out = []
    for r in records:
        s, u = struq_prompt(r, tokenizer)
        out.append(dataclasses.replace(r, system=s, data=u))
    return out


def struq_format(system: str, data: str, tokenizer) -> str:
    """The rendered StruQ prompt text (what generation continues), for display and checks."""

    return prompt_text(tokenizer, *struq_prompt((system, data), tokenizer))


def _pools(records: Sequence) -> tuple[list, dict[str, list], list]:
    """(clean, {'naive': [...], 'completion': [...]}, other injected) among the records used for training
    (held-out families never)."""
    clean = [r for r in records if r.kind == "clean" and not r.held_out]
    inj = [r for r in records if r.kind == "injected" and not r.held_out]
    styles = {"naive": [r for r in inj if attack_style(r.family) == "naive"],
              "completion": [r for r in inj if attack_style(r.family) == "completion"]}
    return clean, styles, inj


def _pick(rng, pool: list, k: int) -> list:
    if k <= 0 or not pool:
        return []
    idx = rng.choice(len(pool), size=k, replace=k > len(pool))
    return [pool[i] for i in sorted(idx)]


def _world_can_inject(clean: Sequence) -> bool:
    """True when the records are the embedded world's (attacks.inject can rebuild an injection of them)."""
    try:
        pass
    except ImportError:
        return False
    if not clean or not attacks.templates_for("naive", "train") or not attacks.templates_for("fake_completion", "train"):
        return False
    try:
        world.parse_document(clean[0].clean_data)
        return True
    except Exception:  # noqa: BLE001 - not the world's documents (a custom data set): use its own injections
        return False


def _construct(clean: Sequence, styles: Sequence[str], seed: int, require=None) -> list:
    """One injection per clean record (style per record): a training template of the family, a random goal
    and position, built by attacks.inject exactly as the data set builds its own injected items - as StruQ
    and SecAlign inject every training sample with a fresh instruction."""
    rng = random.Random(seed)
    families = {"naive": "naive", "completion": "fake_completion"}
    out = []
    for k, (c, style) in enumerate(zip(clean, styles)):
        for _ in range(8):  # a goal whose O_inj equals O* would teach nothing: draw again
            r = attacks.inject(c, rng.choice(attacks.templates_for(families[style], "train")), rng.choice(GOALS),
                               rng.choice(POSITIONS), rng, id=f"{c.id}/{style}-{k}", held_out=False,
                               source="baseline")
            if require is None or require(r):
                out.append(r)
                break
    return out


def injected_mixture(records: Sequence, clean: Sequence, completion_share: float, seed: int,
                     require=None) -> tuple[list, dict]:
    """Injected training records, one per record of `clean` (a subset of the TRAIN clean items):
    `completion_share` of them completion-style, the rest naive. With the embedded world, each is a fresh
    injection of that clean item (attacks.inject with the families' training templates); with other data,
    they are drawn from the records' own naive / fake-completion items (with replacement only when a pool
    is smaller than needed; a missing style falls back to the other one, then to every seen family, with a
    warning). `require(record)` filters candidates (SecAlign needs an O_inj different from O*)."""
    real = [c for c in clean if c.task == REALISTIC]
    if real:  # realistic items (data/realistic.py) bring their own injected twin, built by the published recipe
        out, stats = (injected_mixture(records, [c for c in clean if c.task != REALISTIC], completion_share, seed,
                                       require) if len(real) < len(clean) else ([], {"source": "records"}))
        twin = {r.pair_id: r for r in records if r.kind == "injected" and r.task == REALISTIC
                and (require is None or require(r))}
        extra = [twin[c.pair_id] for c in real if c.pair_id in twin]
        stats = {**stats, "n_realistic": len(extra)}
        for style in ("naive", "completion"):
            stats[f"n_{style}"] = stats.get(f"n_{style}", 0) + sum(attack_style(r.family) == style for r in extra)
        stats["distinct_injected"] = stats.get("distinct_injected", 0) + len(extra)
        return out + extra, stats
    rng = np.random.default_rng(seed)
    n = len(clean)
    n_comp = int(round(n * completion_share))
    if _world_can_inject(clean):
        style_of = ["completion"] * n_comp + ["naive"] * (n - n_comp)
        style_of = [style_of[i] for i in rng.permutation(n)]
        out = _construct(clean, style_of, seed, require)
        stats = {"source": "constructed", "n_naive": sum(attack_style(r.family) == "naive" for r in out),
                 "n_completion": sum(attack_style(r.family) == "completion" for r in out)}
        stats["distinct_injected"] = len(out)
        return out, stats
    _, styles, inj = _pools(records)
    if require is not None:
        styles = {k: [r for r in v if require(r)] for k, v in styles.items()}
        inj = [r for r in inj if require(r)]
    want = {"naive": n - n_comp, "completion": n_comp}
    if not styles["naive"] and not styles["completion"]:
        warnings.warn("no naive or completion-style injections in the training records: using every seen attack family",
                      stacklevel=2)
        styles = {"naive": inj, "completion": []}
        want = {"naive": n, "completion": 0}
    for a, b in (("naive", "completion"), ("completion", "naive")):
        if want[a] and not styles[a]:
            warnings.warn(f"no {a}-style injections in the training records: using {b}-style ones instead", stacklevel=2)
            want[b] += want[a]
            want[a] = 0
    picked = {k: _pick(rng, styles[k], want[k]) for k in ("naive", "completion")}
    stats = {"source": "records", **{f"n_{k}": len(v) for k, v in picked.items()},
             **{f"pool_{k}": len(styles[k]) for k in styles}}
    stats["distinct_injected"] = len({r.id for v in picked.values() for r in v})
    return picked["naive"] + picked["completion"], stats


def struq_training_records(records: Sequence, seed: int = 0, clean_fraction: float = STRUQ_CLEAN_FRACTION,
                           completion_share: float = STRUQ_COMPLETION_SHARE) -> tuple[list, dict]:
    """StruQ's mixture over the TRAIN records: one sample per clean training item, `clean_fraction` of them
    kept clean, the others injected (half naive, half completion-style). Every target is O*."""
    rng = np.random.default_rng(seed)
    clean, _, _ = _pools(records)
    if not clean:
        raise ValueError("StruQ: no clean training records (kind='clean') in the records given")
    order = rng.permutation(len(clean))
    n_clean = int(round(len(clean) * clean_fraction))
    keep = [clean[i] for i in sorted(order[:n_clean])]
    to_inject = [clean[i] for i in sorted(order[n_clean:])]
    inj, stats = injected_mixture(records, to_inject, completion_share, seed + 1)
    stats.update({"n_clean": len(keep), "n_total": len(keep) + len(inj)})
    return keep + inj, stats


# Training data of a baseline: "matched" (the default rows, issue 30) = the training contract's examples, the very
# inputs and targets the causal method and adversarial SFT train on (training.examples.training_slots over every
# (clean, injected) pair of the train split: all its families, the realistic pairs, the same clean share), so that
# a difference between the defenses is the method, not the data; "paper" = the baseline's published 2-family recipe
# (StruQ: naive + completion-style injections; SecAlign likewise), the rows labelled "original recipe".
DATA_RECIPES = ("paper", "matched")


def matched_records(records: Sequence, clean_pair_fraction: float = 0.25, seed: int = 0) -> tuple[list, dict]:
    """The training contract's examples as a baseline's mixture: the `trained` record of each slot of
    training.examples.training_slots (the injected twin, or the clean item for a `clean_pair_fraction` share),
    in the slots' order, every target O*: one example per pair, as many optimiser steps as the causal method.
    -> (records, stats)."""
    pairs = make_pairs(records)
    if not pairs:
        raise ValueError("data-matched baseline: no (clean, injected) pairs in the training records")
    mix = [trained for _, trained in training_slots(pairs, clean_pair_fraction, seed)]
    inj = [r for r in mix if r.kind == "injected"]
    fams = sorted({r.family for r in inj if r.family})
    return mix, {"source": "matched", "n_clean": len(mix) - len(inj), "n_injected": len(inj),
                 "n_total": len(mix), "families": fams}


def check_data_recipe(data: str) -> None:
    if data not in DATA_RECIPES:
        raise ValueError(f"unknown training data {data!r} for a baseline; choose from {DATA_RECIPES}")


def struq_dataset(records: Sequence, tokenizer, max_length: int):
    """training.examples.SFTDataset over `records` in the StruQ format, target always O* (record.target)."""

    def fmt(r):
        s, u = struq_prompt(r, tokenizer)
        return s, u, r.target

    return SFTDataset(records, tokenizer, max_length, format_fn=fmt)


def load_base(cfg: Config, paths, base_model_dir=None):
    """(model, tokenizer, source) of the undefended base, trainable: `base_model_dir` when given, else
    the run's base (a real model from its folder/cache when model.kind is 'hf')."""

    if base_model_dir is not None:
        model, tok = load_checkpoint(Path(base_model_dir), cfg.model, is_trainable=True)
        source = str(base_model_dir)
    else:

        model, tok = load_base_model(cfg, paths, trainable=True)
        # relative to the run folder (a shared run stays readable); a hub name or folder when there is no base
        source = (base_checkpoint(paths).relative_to(paths.root).as_posix() if base_checkpoint(paths).exists()
                  else cfg.model.name_or_path)
    if cfg.model.kind == "tiny":
        # from_pretrained records the checkpoint folder as the model's name; the tiny base cannot be reloaded
        # by name, so clear it: save_checkpoint then stores the base weights next to a LoRA adapter.
        base_model_of(model).config._name_or_path = ""
    return model, tok, source


def prepare_struq_model(cfg: Config, model, tokenizer, train_delimiters: bool = True):
    """Reserved delimiters (before LoRA), then LoRA when model.use_lora; with `train_delimiters` the delimiters'
    embedding rows are trained beside the adapters (peft trainable tokens), as full fine-tuning trains them in the
    paper; without, they stay at their initialisation. Training mode."""

    model, tokenizer = add_reserved_tokens(model, tokenizer)
    if cfg.model.use_lora and not is_peft_model(model):
        rows = list(reserved_token_ids(tokenizer).values()) if train_delimiters else None
        model = apply_lora(model, cfg.model, trainable_tokens=rows)
    model.train()
    return model, tokenizer


def train_records(cfg: Config, paths, records=None) -> list:
    if records is None:

        records = load_split(paths.data, "train")
    records = list(records)
    if cfg.train.debug:
        records = records[: 2 * cfg.train.debug_samples]
    return records


def validation_score_fn(cfg: Config, paths, tokenizer, limit: int = 200):
    """Per-epoch score of the training contract's rule (training.selection): the loss on O* of the clean and
    injected validation items in the StruQ format. None when the run has no validation split (best = last epoch)."""
    try:
        val = load_split(paths.data, "val")
    except Exception:  # noqa: BLE001 - no data folder (tests, a custom records list): train without scores
        return None
    return selection.validation_score_fn(cfg, val, tokenizer, lambda rs: view_records(rs, tokenizer), limit)


def train(cfg: Config, paths, base_model_dir=None, records=None, resume: bool = False, name: str = "struq",
          data: str = "matched"):
    """Train StruQ on the same base: reserved delimiters + SFT on the StruQ mixture of the TRAIN records
    (default: the run's train split; data="matched": the training contract's examples, matched_records;
    data="paper": StruQ's own 2-family mixture).
    -> training.trainer.TrainResult; checkpoints/<name>/{epoch_N,best_model} (best: training.selection's rule),
    metrics/train_<name>_log.jsonl, best_model/model_card.json."""
    check_data_recipe(data)
    model, tok, source = load_base(cfg, paths, base_model_dir)
    model, tok = prepare_struq_model(cfg, model, tok)
    records = train_records(cfg, paths, records)
    mix, stats = (matched_records(records, cfg.train.clean_pair_fraction, seed=cfg.run.seed) if data == "matched"
                  else struq_training_records(records, seed=cfg.run.seed))
    ds = struq_dataset(mix, tok, cfg.model.max_seq_length)
    meta = {"defense": name, "base": source, "reserved_tokens": list(RESERVED_TOKENS), "mixture": stats, "data": data,
            "selection_rule": selection.SELECTION_RULE,
            "train_families": sorted({r.family for r in mix if r.kind == "injected" and r.family})}
    result = run_training(cfg, paths, name, model, tok, ds, trainer_cls=SFTTrainer, epochs=cfg.train.epochs,
                          learning_rate=cfg.train.learning_rate, score_fn=validation_score_fn(cfg, paths, tok),
                          select_by=selection.SELECT_BY, higher_is_better=False, resume=resume, extra_meta=meta)
    if result.best_epoch is not None:
        write_model_card(paths.checkpoints / name / "best_model", cfg, {
            **meta, "method": "StruQ (Chen et al. 2025): reserved delimiters stripped from data + SFT, target O*",
            "epochs": cfg.train.epochs, "learning_rate": cfg.train.learning_rate, "best_epoch": result.best_epoch,
            "train_seconds": result.train_seconds, "steps": result.steps, "n_train_examples": len(ds),
            "metrics": {"validation": result.epochs.get(result.best_epoch, {})}})
    return result
