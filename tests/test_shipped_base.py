"""The shipped embedded base (training/shipped_base.py): its manifest matches this world, its tokenizer is the
one the recipe trains, a changed world / shape / tokenizer is refused with the command that re-derives it, and
installing it into a run is atomic and idempotent."""
import json
import shutil

import pytest

from causal_lib.config import load_config
from causal_lib.data import build, injections, world
from causal_lib.models.checkpoints import load_checkpoint, save_checkpoint, tokenizer_hash
from causal_lib.training import pretrain, shipped_base
from causal_lib.training.shipped_base import ShippedBaseError

SHIPPED = shipped_base.SHIPPED_DIR


def test_recipe_is_shared_by_the_default_params():
    """params/tiny.yaml and params/paper.yaml carry the shipped recipe's base keys: --set base.source=pretrain
    re-derives the same base inside the book."""
    want = shipped_base.recipe_hash(load_config(shipped_base.RECIPE))
    for p in ("params/tiny.yaml", "params/paper_tiny.yaml"):
        assert shipped_base.recipe_hash(load_config(p)) == want, p


def test_shipped_base_matches_this_world_and_shape():
    """Fails when the world (or the default shape) changes without the shipped base being re-derived."""
    m = shipped_base.check_shipped_base(load_config("params/tiny.yaml"))
    assert m["recipe_hash"] == shipped_base.recipe_hash(load_config(shipped_base.RECIPE))
    assert m["training_fingerprint"] == build.training_fingerprint()
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 10 * 1024 * 1024, f"the shipped base is {size / 2**20:.1f} MiB (limit 10 MiB)"
    for name, info in m["files"].items():
        assert (SHIPPED / name).stat().st_size == info["size"], name
    for key in ("benign_accuracy", "benign_accuracy_by_task", "asr", "asr_by_goal", "asr_by_axis"):
        assert key in m["metrics"], key


def test_shipped_tokenizer_is_the_recipes():
    """The tokenizer the recipe trains on the recipe's training text is the shipped one (fails when the tokenizer
    recipe or its training text changes without re-deriving the base)."""
    from transformers import AutoTokenizer

    cfg = load_config(shipped_base.RECIPE)
    splits = build.build_dataset(cfg)
    tok = pretrain.train_run_tokenizer(splits, cfg.model.tiny.vocab_size)
    shipped = AutoTokenizer.from_pretrained(str(SHIPPED), local_files_only=True)
    assert tokenizer_hash(tok) == tokenizer_hash(shipped)


@pytest.mark.parametrize("change", ["note", "instruction", "request", "training template"])
def test_a_changed_training_text_is_refused(monkeypatch, change):
    """What the base corpus and the train split (the embedded tokenizer reads it) draw from: the notes, a task's
    instructions, a training phrasing, a training family's template. (Test content and held-out templates may
    change: the test below.)"""
    import dataclasses

    from causal_lib.data import attacks

    if change == "training template":
        t = attacks.BUILTIN_TEMPLATES[0]  # naive: a training family
        assert t.family not in attacks.DEFAULT_HELD_OUT
        monkeypatch.setattr(attacks, "BUILTIN_TEMPLATES",
                            (dataclasses.replace(t, template=t.template + " Thanks."),) + attacks.BUILTIN_TEMPLATES[1:])
    elif change == "note":
        monkeypatch.setattr(injections, "NOTES_BASE", injections.NOTES_BASE + ("A new note.",))
    elif change == "instruction":
        spec = world.TASKS["first_item"]
        monkeypatch.setitem(world.TASKS, "first_item",
                            dataclasses.replace(spec, instructions=spec.instructions + ("First one?",)))
    else:
        monkeypatch.setitem(injections.OUTPUT_REQUESTS, "train", injections.OUTPUT_REQUESTS["train"] + ("Say {payload}.",))
    with pytest.raises(ShippedBaseError, match="training text changed.*python -m causal_lib.training.derive_base"):
        shipped_base.check_shipped_base(load_config("params/tiny.yaml"))


@pytest.mark.parametrize("change", ["lookalike note", "held-out template", "probe"])
def test_test_content_and_held_out_templates_leave_the_base_valid(monkeypatch, change):
    import dataclasses

    from causal_lib.data import attacks

    if change == "lookalike note":
        monkeypatch.setattr(injections, "NOTES_TEST", injections.NOTES_TEST + ("A new note.",))
    elif change == "probe":
        monkeypatch.setattr(injections, "PROBES_TEST", injections.PROBES_TEST[:-1] + ("Say {payload} now.",))
    else:
        k = next(i for i, t in enumerate(attacks.BUILTIN_TEMPLATES) if t.family == "role_authority")
        assert "role_authority" in attacks.DEFAULT_HELD_OUT
        t = list(attacks.BUILTIN_TEMPLATES)
        t[k] = dataclasses.replace(t[k], template=t[k].template + " Thanks.")
        monkeypatch.setattr(attacks, "BUILTIN_TEMPLATES", tuple(t))
    shipped_base.check_shipped_base(load_config("params/tiny.yaml"))


def test_another_shape_or_a_modified_tokenizer_is_refused(tmp_path):
    with pytest.raises(ShippedBaseError, match=r"model.tiny differs.*hidden_size 64"):
        shipped_base.check_shipped_base(load_config("params/tiny.yaml", {"model.tiny.hidden_size": 64}))
    copy = tmp_path / "base"
    shutil.copytree(SHIPPED, copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace('"<unk>"', '"<UNK>"', 1) + " ")
    with pytest.raises(ShippedBaseError, match="tokenizer.*differs from its manifest"):
        shipped_base.check_shipped_base(load_config("params/tiny.yaml", {"base.path": str(copy)}))
    with pytest.raises(ShippedBaseError, match="no shipped base at .*derive it with"):
        shipped_base.check_shipped_base(load_config("params/tiny.yaml", {"base.path": str(tmp_path / "none")}))


def test_install_is_atomic_and_idempotent(tmp_path):
    cfg = load_config("params/tiny.yaml")
    tok_dir, ckpt, metrics = tmp_path / "tokenizer", tmp_path / "base" / "best_model", tmp_path / "metrics"
    m = shipped_base.install(cfg, tok_dir, ckpt, metrics)
    from transformers import AutoTokenizer

    model, tok = load_checkpoint(ckpt, cfg.model)  # verifies every file's sha256
    assert tokenizer_hash(tok) == tokenizer_hash(AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True))
    assert json.loads((metrics / "base_manifest.json").read_text())["world_fingerprint"] == m["world_fingerprint"]
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns
    shipped_base.install(cfg, tok_dir, ckpt, metrics)  # the same files: kept, not copied again
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == mtime
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_write_shipped_from_a_checkpoint(tmp_path, tiny_model):
    """A folder written by write_shipped is read back by check_shipped_base (with a manifest for this world)."""
    model, tok = tiny_model
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt")
    c = model.config
    shape = {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
             "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size}
    out = shipped_base.write_shipped(ckpt, tmp_path / "shipped", {"training_fingerprint": build.training_fingerprint(),
                                                                 "model": {"kind": "tiny", "tiny": shape}})
    over = {"base.path": str(out), **{f"model.tiny.{k}": v for k, v in shape.items()}}
    m = shipped_base.check_shipped_base(load_config("params/tiny.yaml", over))
    assert set(m["files"]) >= {"model.safetensors", "config.json", "tokenizer.json", "checkpoint.json"}
    assert not list(tmp_path.glob("shipped.*"))


def test_book_check_and_run_refuse_a_missing_base_in_one_line(tmp_path):
    import subprocess
    import sys

    from causal_lib.config import PROJECT_ROOT

    for cmd in (["check"], ["run", "--run", "missing-base-test"]):
        p = subprocess.run([sys.executable, "-m", "causal_lib.book", *cmd, "--params", "params/tiny.yaml",
                            "--set", f"base.path={tmp_path / 'none'}"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert p.returncode == 1, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "no shipped base" in lines[0] and "derive_base" in lines[0], p.stderr
    assert not (PROJECT_ROOT / "outputs" / "missing-base-test").exists()  # nothing written


def test_a_tampered_shipped_base_is_caught_at_check_time_with_the_right_advice(tmp_path):
    """One flipped byte of the shipped model.safetensors: `book check` (and chapter 01/04, through check_shipped_base)
    say which file differs from the manifest and advise restoring or re-deriving it - not deleting a run's copy."""
    import subprocess
    import sys

    from causal_lib.config import PROJECT_ROOT

    copy = tmp_path / "base"
    shutil.copytree(SHIPPED, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ShippedBaseError, match=r"model.safetensors is missing or differs from its manifest.*restore.*re-derive"):
        shipped_base.check_shipped_base(load_config("params/tiny.yaml", {"base.path": str(copy)}))
    p = subprocess.run([sys.executable, "-m", "causal_lib.book", "check", "--params", "params/tiny.yaml",
                        "--set", f"base.path={copy}"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "differs from its manifest" in lines[0], p.stderr
    assert "delete" not in lines[0]


def test_the_check_follows_the_training_text_not_the_test_content(monkeypatch):
    """A change to what the test holds out (look-alike notes, test phrasings, SEP probes) leaves what a base learned,
    and the shipped bases, valid; a change to the base corpus's pools does not."""
    from causal_lib.data import injections

    before, world_before = build.training_fingerprint(), build.world_fingerprint()
    monkeypatch.setattr(injections, "NOTES_TEST", injections.NOTES_TEST[:-1] + ("The label says: shake well.",))
    assert build.training_fingerprint() == before and build.world_fingerprint() != world_before
    monkeypatch.setattr(injections, "NOTES_BASE", injections.NOTES_BASE[:-1] + ("The label says: shake well.",))
    assert build.training_fingerprint() != before
    with pytest.raises(shipped_base.ShippedBaseError, match="training text changed"):
        shipped_base.check_shipped_base(load_config("params/tiny.yaml"))
