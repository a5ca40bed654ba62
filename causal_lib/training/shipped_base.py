"""The shipped embedded base: a pre-trained input of the book, as the instruction-tuned LLM is for the plan.

`python -m causal_lib.training.derive_base --params params/base.yaml` trains it with the project's own recipe from
training text only and writes the folder `causal_lib/base_model/` (a checkpoint written by save_checkpoint, so
its files carry sizes and sha256, plus manifest.json):
    recipe, recipe_hash   the params file and the hash of every key that shapes the base (base_recipe)
    world_fingerprint     data.build.world_fingerprint() of the code that generated its training text
    data_hash             the hash of its data params (data.build.data_hash)
    tokenizer_sha256      of tokenizer.json (the tokenizer is trained on the same training text)
    training              steps and seconds per stage, versions of torch and transformers
    metrics               its benign accuracy and ASR on the test split (per task, goal and held-out axis)
Chapter 04 (base.source: shipped) checks the manifest against the current world and model shape and copies the
folder into the run (`install`); a mismatch is a one-line error saying how to re-derive it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from causal_lib.book.run_folder import copy_folder_atomic, file_sha256, replace_folder, write_json
from causal_lib.config import PROJECT_ROOT, Config
from causal_lib.data.build import world_fingerprint

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "base_model"
MANIFEST = "manifest.json"
RECIPE = "params/base.yaml"
REDERIVE = f"python -m causal_lib.training.derive_base --params {RECIPE}"
MANIFEST_FORMAT = 1
TRAIN_KEYS = ("batch_size", "warmup_ratio", "max_grad_norm", "weight_decay")  # besides every train.base_* key


class ShippedBaseError(ValueError):
    """The shipped base cannot be used with this code or params; the message says how to re-derive it."""


def base_recipe(cfg: Config) -> dict:
    """Every params key that shapes the embedded base: the run seed, the data, the model and the base's
    training keys (not the defenses', the evaluation's or the run's name)."""
    train = dataclasses.asdict(cfg.train)
    # attacks_per_clean only adds attacked variants to the test split: no training text changes with it
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "attacks_per_clean"}
    # a base_* key added after a base was shipped enters the hash only when set: the recipes that do not use it
    # keep their hash (and their shipped base)
    unset_later_keys = {k for k in ("base_boost_tasks",) if not train.get(k)}
    # likewise model.source (added with the real-model track): absent from the hash at its default, "path"
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if not (k == "source" and v == "path")}
    return {"seed": cfg.run.seed, "data": data, "model": model,
            "train": {k: v for k, v in sorted(train.items())
                      if (k.startswith("base_") or k in TRAIN_KEYS) and k not in unset_later_keys}}


def recipe_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(base_recipe(cfg), sort_keys=True).encode()).hexdigest()[:16]


def shipped_dir(cfg: Config | None = None) -> Path:
    """base.path (relative to the working folder or the project), else causal_lib/base_model."""
    path = getattr(getattr(cfg, "base", None), "path", None)
    if not path:
        return SHIPPED_DIR
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT_ROOT / p


def read_manifest(folder: Path) -> dict:
    mp = Path(folder) / MANIFEST
    if not mp.is_file():
        raise ShippedBaseError(f"no shipped base at {_display(folder)} (manifest.json missing): derive it with `{REDERIVE}` "
                               f"or set base.source: pretrain")
    try:
        m = json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise ShippedBaseError(f"{mp} is not valid JSON ({e.msg}): re-derive the base with `{REDERIVE}`") from None
    if m.get("format") != MANIFEST_FORMAT:
        raise ShippedBaseError(f"{mp} has format {m.get('format')!r}, this code reads {MANIFEST_FORMAT}: "
                               f"re-derive the base with `{REDERIVE}`")
    return m


_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def check_shipped_base(cfg: Config, folder: Path | None = None) -> dict:
    """The manifest of the shipped base after checking it fits this code and these params: the same world
    (fingerprint), the same tiny-model shape, an unmodified tokenizer. Raises ShippedBaseError naming the fix."""
    folder = Path(folder or shipped_dir(cfg))
    m = read_manifest(folder)
    fp = world_fingerprint()
    if m.get("world_fingerprint") != fp:
        raise ShippedBaseError(
            f"the shipped base at {_display(folder)} was trained on world {m.get('world_fingerprint')}, but this code "
            f"generates world {fp} (the world changed): re-derive it with `{REDERIVE}` and commit the folder, "
            f"or set base.source: pretrain")
    shape = {k: getattr(cfg.model.tiny, k) for k in _SHAPE_KEYS}
    shipped = {k: m.get("model", {}).get("tiny", {}).get(k) for k in _SHAPE_KEYS}
    if shape != shipped:
        diff = ", ".join(f"{k} {shape[k]} vs {shipped[k]}" for k in _SHAPE_KEYS if shape[k] != shipped[k])
        raise ShippedBaseError(f"model.tiny differs from the shipped base ({diff}): use the shipped shape "
                               f"({m.get('recipe', RECIPE)}) or set base.source: pretrain")
    tok = folder / "tokenizer.json"
    if not tok.is_file() or file_sha256(tok) != m.get("tokenizer_sha256"):
        raise ShippedBaseError(f"the shipped tokenizer {_display(tok)} is missing or differs from its manifest: restore it "
                               f"(git checkout {_display(folder)}) or re-derive the base with `{REDERIVE}`")
    return m


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def install(cfg: Config, tokenizer_dest: Path, checkpoint_dest: Path, metrics_dir: Path) -> dict:
    """Check the shipped base and copy it into the run: its tokenizer to `tokenizer_dest`, the checkpoint to
    `checkpoint_dest` (each atomically; an existing copy of the same files is kept), its manifest to
    metrics/base_manifest.json. Returns the manifest."""
    folder = shipped_dir(cfg)
    m = check_shipped_base(cfg, folder)
    if not (tokenizer_dest / "tokenizer.json").is_file() or \
            file_sha256(tokenizer_dest / "tokenizer.json") != m["tokenizer_sha256"]:
        copy_folder_atomic(folder, tokenizer_dest,
                     ignore=lambda d, names: [n for n in names if n not in TOKENIZER_FILES])
    ckpt = checkpoint_dest / "checkpoint.json"
    if not ckpt.is_file() or file_sha256(ckpt) != file_sha256(folder / "checkpoint.json"):
        copy_folder_atomic(folder, checkpoint_dest, ignore=lambda d, names: [MANIFEST] if MANIFEST in names else [])
    write_json(Path(metrics_dir) / "base_manifest.json", {**m, "installed_from": _display(folder)})
    return m


def _display(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


def write_shipped(checkpoint: Path, out: Path, manifest: dict) -> Path:
    """The shipped folder from a finished base checkpoint: its files and manifest.json, written to a temporary
    folder and renamed over `out` (a crash never leaves half a base)."""
    tok = Path(checkpoint) / "tokenizer.json"
    manifest = {"format": MANIFEST_FORMAT, **manifest, "tokenizer_sha256": file_sha256(tok),
                "files": {f.name: {"size": f.stat().st_size, "sha256": file_sha256(f)}
                          for f in sorted(Path(checkpoint).iterdir()) if f.is_file()}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint, tmp)
    write_json(tmp / MANIFEST, manifest)
    return replace_folder(tmp, out)
