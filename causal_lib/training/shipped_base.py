"""The shipped embedded base: a pre-trained input of the book, as the instruction-tuned LLM is for the plan.

`python -m causal_lib.training.derive_base --params params/base.yaml` trains it with the project's own recipe from
training text only and writes the folder `causal_lib/base_model/` (a checkpoint written by save_checkpoint, so
its files carry sizes and sha256, plus manifest.json):
    recipe, recipe_hash   the params file and the hash of every key that shapes the base (base_recipe)
    world_fingerprint     data.build.world_fingerprint() of the code that derived it (the whole world, test content
                          included: a record, not checked)
    training_fingerprint  data.build.training_fingerprint() of that code: the base corpus and the pools it draws
                          from, what the check compares (test content may change without a base re-derived)
    data_hash             the hash of its data params (data.build.data_hash)
    tokenizer_sha256      of tokenizer.json (the tokenizer is trained on the same training text)
    training              steps and seconds per stage, versions of torch and transformers
    metrics               its benign accuracy and ASR on the test split (per task, goal and held-out axis)
Chapter 04 (base.source: shipped) checks the manifest against the current world and model shape and copies the
folder into the run (`install`); a mismatch is a one-line error saying how to re-derive it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from causal_lib.core.hashing import file_sha256, json_hash
from causal_lib.core.run_folder import copy_folder_atomic, replace_folder, write_json
from causal_lib.config import PROJECT_ROOT, Config
from causal_lib.data import realistic
from causal_lib.data.build import REALISTIC_KEYS, training_fingerprint

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
    # the realistic items (added after bases were shipped) enter only when used, with the vendored files' content
    # (not the injection recipe: the base trains on clean items only)
    if any(data.get(k) for k in REALISTIC_KEYS):
        data["realistic_fingerprint"] = realistic.base_fingerprint()
    else:
        for k in REALISTIC_KEYS:
            data.pop(k, None)
    # a base_* key added after a base was shipped enters the hash only when set: the recipes that do not use it
    # keep their hash (and their shipped base)
    unset_later_keys = {k for k in ("base_boost_tasks",) if not train.get(k)}
    # likewise model.source (added with the real-model track): absent from the hash at its default, "path"
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if not (k == "source" and v == "path")}
    if cfg.model.kind == "hf":  # the embedded model's shape does not shape a real model's base
        model.pop("tiny", None)
    return {"seed": cfg.run.seed, "data": data, "model": model,
            "train": {k: v for k, v in sorted(train.items())
                      if (k.startswith("base_") or k in TRAIN_KEYS) and k not in unset_later_keys}}


def recipe_hash(cfg: Config) -> str:
    return json_hash(base_recipe(cfg))


def shipped_dir(cfg: Config | None = None, default: Path = SHIPPED_DIR) -> Path:
    """base.path (relative to the working folder or the project), else `default` (causal_lib/base_model)."""
    path = getattr(getattr(cfg, "base", None), "path", None)
    if not path:
        return default
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT_ROOT / p


def read_manifest(folder: Path, rederive: str = REDERIVE) -> dict:
    mp = Path(folder) / MANIFEST
    if not mp.is_file():
        raise ShippedBaseError(f"no shipped base at {_display(folder)} (manifest.json missing): derive it with `{rederive}` "
                               f"or set base.source: pretrain")
    try:
        m = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ShippedBaseError(f"{_display(mp)} is not valid JSON ({type(e).__name__}): re-derive the base with "
                               f"`{rederive}`") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise ShippedBaseError(f"{_display(mp)} has format {m.get('format') if isinstance(m, dict) else None!r}, this "
                               f"code reads {MANIFEST_FORMAT}: re-derive the base with `{rederive}`")
    return m


def check_files(folder: Path, m: dict, rederive: str = REDERIVE) -> None:
    """Every file the manifest lists has its recorded size and sha256 (a tampered or truncated base is caught before
    it is installed, with the advice to restore or re-derive it - not to delete a run's copy)."""
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise ShippedBaseError(f"{_display(Path(folder) / MANIFEST)} lists no files: re-derive the base with `{rederive}`")
    for name, info in sorted(files.items()):
        f = Path(folder) / str(name)
        ok = isinstance(info, dict) and f.is_file() and f.stat().st_size == info.get("size") \
            and file_sha256(f) == info.get("sha256")
        if not ok:
            raise ShippedBaseError(f"the shipped base file {_display(f)} is missing or differs from its manifest (size or "
                                   f"sha256): restore it with `git checkout -- {_display(folder)}` (or reinstall the "
                                   f"project) or re-derive the base with `{rederive}`")


def check_world(m: dict, folder: Path, what: str = "the shipped base", rederive: str = REDERIVE) -> None:
    """The manifest `m` names the training text this code generates (data.build.training_fingerprint: what a base
    learns from; the test split's held-out content may change without it)."""
    fp = training_fingerprint()
    if m.get("training_fingerprint") != fp:
        raise ShippedBaseError(
            f"{what} at {_display(folder)} was trained on training text {m.get('training_fingerprint')}, but this "
            f"code generates {fp} (the world's training text changed): re-derive it with `{rederive}` and commit the "
            f"folder, or set base.source: pretrain")


_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def check_shipped_base(cfg: Config, folder: Path | None = None) -> dict:
    """The manifest of the shipped base after checking it fits this code and these params: the same world
    (fingerprint), the same tiny-model shape, an unmodified tokenizer. Raises ShippedBaseError naming the fix."""
    folder = Path(folder or shipped_dir(cfg))
    m = read_manifest(folder)
    check_world(m, folder)
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
    check_files(folder, m)
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


def check_out(out: Path) -> Path:
    """`out` may receive a shipped base: a new or empty folder, or a previous shipped base (manifest.json present and
    nothing but plain files beside it). Anything else - `outputs`, the project, a folder of someone's files - is
    refused before any training, so that writing the base can never delete what the project did not write."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ShippedBaseError(f"--out {out}: not a folder (a file or a link); name a new or empty folder, or a previous "
                               f"shipped base")
    if out.is_dir() and any(out.iterdir()):
        entries = list(out.iterdir())
        if not (out / MANIFEST).is_file() or any(e.is_dir() or e.is_symlink() for e in entries):
            raise ShippedBaseError(f"--out {out} is a non-empty folder that is not a shipped base (no manifest.json, or "
                                   f"sub-folders): refused, nothing written; name a new or empty folder")
    resolved = out.resolve()
    if resolved in (PROJECT_ROOT, PROJECT_ROOT / "outputs", Path.home(), Path("/")) or resolved in PROJECT_ROOT.parents:
        raise ShippedBaseError(f"--out {out}: refused (the project, outputs/, a home or a root folder); name a new folder")
    return out


def prepare_out(out: Path) -> Path:
    """check_out, then a fresh temporary folder beside `out` to write the new base into -> that folder."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an earlier call of this process id
    tmp.mkdir()
    return tmp


def swap_in(tmp: Path, out: Path) -> Path:
    """Rename the finished `tmp` over `out` (checked again: nothing but a previous shipped base is replaced)."""
    check_out(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    return replace_folder(tmp, out)


def write_shipped(checkpoint: Path, out: Path, manifest: dict) -> Path:
    """The shipped folder from a finished base checkpoint: its files and manifest.json, written beside `out` and
    swapped in (a crash never leaves half a base; check_out refuses any folder but a previous shipped base)."""
    tok = Path(checkpoint) / "tokenizer.json"
    manifest = {"format": MANIFEST_FORMAT, **manifest, "tokenizer_sha256": file_sha256(tok),
                "files": {f.name: {"size": f.stat().st_size, "sha256": file_sha256(f)}
                          for f in sorted(Path(checkpoint).iterdir()) if f.is_file()}}
    tmp = prepare_out(Path(out))
    for f in sorted(Path(checkpoint).iterdir()):
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    write_json(tmp / MANIFEST, manifest)
    return swap_in(tmp, Path(out))
