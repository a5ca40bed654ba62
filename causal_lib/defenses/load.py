"""A defense's model in a run, by name: where it lives, loading it, and the records as it reads them (through the
registry; the implementations themselves start from training.pretrain.load_base_model)."""
from __future__ import annotations

from pathlib import Path

from causal_lib.core.run_folder import RunPaths
from causal_lib.config import Config
from causal_lib.defenses import registry
from causal_lib.models.checkpoints import CheckpointError, load_checkpoint
from causal_lib.training.pretrain import base_checkpoint, load_base_model


def model_dir(paths: RunPaths, defense: str) -> Path:
    """Where a defense's model lives: checkpoints/<name>/best_model for a trained defense, the base's else."""
    name = defense if registry.get(defense).trains else "base"
    return paths.checkpoints / name / "best_model"


def load_model(cfg: Config, paths: RunPaths, defense: str = "none", trainable: bool = False):
    """(model, tokenizer) of one defense in this run, from its safetensors checkpoint."""
    d = model_dir(paths, defense)
    if d == base_checkpoint(paths):
        return load_base_model(cfg, paths, trainable=trainable)
    if not d.exists():
        raise CheckpointError(f"no model for defense {defense!r} at {d}: run chapter 05_train (defense={defense}) "
                              f"first (python -m causal_lib.book run --params ... --from 05)")
    return load_checkpoint(d, cfg.model, is_trainable=trainable)


def records_for(defense: str, records: list, tokenizer) -> list:
    """The records as this defense's model reads them (StruQ/SecAlign: their structured prompt)."""
    return registry.get(defense).view_records(records, tokenizer)


def block_for(cfg: Config, paths: RunPaths, defense: str, model, tokenizer):
    """The defense's input filter `block(records) -> list[bool]`, or None when it filters nothing."""
    return registry.get(defense).input_blocker(cfg, paths, model, tokenizer)
