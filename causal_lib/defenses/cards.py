"""A model card next to each trained model: what was trained, with which params, on which data."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from causal_lib.config import Config


def data_fingerprint(cfg: Config, data_dir: Path | None = None) -> dict:
    """sha256 of data/manifest.json (and its own hash field when it has one); {} when there is no manifest."""
    p = Path(data_dir or cfg.run_dir / "data") / "manifest.json"
    if not p.exists():
        return {}
    raw = p.read_bytes()
    try:  # relative to the run folder: a shared run stays readable
        where = p.resolve().relative_to(Path(cfg.run_dir).resolve()).as_posix()
    except ValueError:
        where = str(p)
    out = {"manifest": where, "manifest_sha256": hashlib.sha256(raw).hexdigest()}
    try:
        m = json.loads(raw)
        for k in ("hash", "data_hash", "sha256", "fingerprint"):
            if isinstance(m, dict) and k in m:
                out["data_hash"] = m[k]
                break
    except json.JSONDecodeError:
        pass
    return out


def write_model_card(model_dir, cfg: Config, extra: dict | None = None, data_dir: Path | None = None) -> Path:
    """Write `model_card.json` into `model_dir` (a checkpoint folder: best_model, epoch_N, ...).

    Holds the params hash and the sections that change what the weights mean (model, train, data sizes),
    the data fingerprint, the library versions and `extra` (defense name, what it was trained on, metrics
    when known). A card already there is updated: keys of `extra` overwrite, the rest is kept, so the
    evaluation chapter can add its metrics later. The file is not listed in checkpoint.json, so adding it
    never invalidates the checkpoint's file hashes."""
    import torch
    import transformers

    model_dir = Path(model_dir)
    path = model_dir / "model_card.json"
    card = json.loads(path.read_text()) if path.exists() else {}
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for mod in ("trl", "peft", "sklearn"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    card.update({
        "format": 1,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": cfg.run.name,
        "seed": cfg.run.seed,
        "params_hash": cfg.params_hash(),
        "params": {"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"], "data": cfg.to_dict()["data"]},
        "data": data_fingerprint(cfg, data_dir),
        "versions": versions,
    })
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k] = {**card[k], **v}
        else:
            card[k] = v
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def read_model_card(model_dir) -> dict:
    p = Path(model_dir) / "model_card.json"
    return json.loads(p.read_text()) if p.exists() else {}
