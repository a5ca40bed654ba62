"""The params' names of the world's tasks and attack families, checked against the world (chapter 02's data).

config.py sits on the ground floor and cannot know what the floors above define; the entry points (the book runner,
the training and evaluation CLIs) run defenses.registry.check_params, which calls this, before anything else.
"""
from __future__ import annotations

import difflib

from causal_lib.config import Config, ConfigError, DataConfig, short_repr
from causal_lib.data.attacks import FAMILIES
from causal_lib.data.world import TASK_NAMES


def _did_you_mean(value, choices) -> str:
    close = difflib.get_close_matches(value if isinstance(value, str) else "", list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_params(cfg: Config) -> None:
    """ConfigError (one line naming the key and the choices) for a task or attack family the world does not have."""
    for where, stage in [(f"base_curriculum[{i}]", st) for i, st in enumerate(cfg.train.base_curriculum)] + \
            ([("base_boost_tasks", cfg.train.base_boost_tasks)] if cfg.train.base_boost_tasks else []):
        if not stage:
            raise ConfigError(f"train.{where}: a stage needs at least one task; choose from {TASK_NAMES}")
        for t in stage:
            if t not in TASK_NAMES:
                raise ConfigError(f"train.{where}: unknown task {t!r}{_did_you_mean(t, TASK_NAMES)}; "
                                  f"choose from {TASK_NAMES}")
    for i, fam in enumerate(cfg.data.held_out_families):
        if fam not in FAMILIES:
            raise ConfigError(f"data.held_out_families[{i}]: unknown attack family {short_repr(fam)}"
                              f"{_did_you_mean(fam, FAMILIES)}; choose from {list(FAMILIES)}")
    if set(FAMILIES) <= set(cfg.data.held_out_families):
        raise ConfigError(f"data.held_out_families: holds every attack family; leave at least one for training "
                          f"(the default holds out {list(DataConfig().held_out_families)})")
