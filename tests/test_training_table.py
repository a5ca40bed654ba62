"""The comparison report's training table (issue 30, item 3): how each trained defense was trained, read from what
chapters 05 and 06 wrote, with "not recorded" where nothing did and the columns that differ named."""
import json
import struct


def _write(p, obj):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj))


def _safetensors(p, shapes):
    header = json.dumps({k: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for k, s in shapes.items()}).encode()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(struct.pack("<Q", len(header)) + header)


def test_training_table_reads_what_chapters_05_and_06_wrote(tmp_path):
    """The comparison report's training table: one row per trained defense from its metrics and checkpoint, with
    "not recorded" where training wrote nothing, and the columns that differ between defenses named."""
    from causal_lib.book.report_text import comparison_table_report
    from causal_lib.core.run_folder import RunPaths
    from causal_lib.evaluation import comparison as cmp

    paths = RunPaths(tmp_path)
    ck = paths.checkpoints
    # StruQ (the original recipe): mixture stats, a model card with its learning rate, a LoRA adapter
    _write(ck / "struq" / "best_model" / "checkpoint.json", {"extra": {
        "train_families": ["fake_completion", "naive"], "data": "paper", "epoch": 2,
        "mixture": {"n_naive": 60, "n_completion": 60, "n_clean": 120}}})
    _write(ck / "struq" / "best_model" / "model_card.json", {"learning_rate": 2e-4, "epochs": 2.0})
    _safetensors(ck / "struq" / "best_model" / "adapter_model.safetensors", {"a": [8, 64], "b": [64, 8]})
    _write(paths.metrics / "train_struq.json", {"steps": 30, "train_seconds": 61.2, "best_epoch": 2, "epochs": {"1": {}, "2": {}}})
    _write(paths.metrics / "epochs_struq.json", {"best_epoch": 1, "criterion": "lowest validation loss on O*"})
    # SecAlign: DPO preference pairs, no clean examples
    _write(ck / "secalign" / "best_model" / "checkpoint.json", {"extra": {
        "train_families": ["fake_completion", "naive"], "mixture": {"n_pairs": 240, "n_naive": 120}}})
    # causal: everything recorded at training time (the contract's keys), full fine-tuning weights
    _write(ck / "causal" / "best_model" / "checkpoint.json", {"extra": {
        "train_families": ["combined", "naive"], "n_injected": 240, "n_clean": 240, "learning_rate": 1e-4,
        "learning_rate_grid": [5e-5, 1e-4, 2e-4], "selection_rule": "lowest validation loss on O*", "epochs": 2,
        "trainable_parameters": 1234}})
    _write(paths.metrics / "train_causal.json", {"steps": 30, "train_seconds": 90.0})
    recs = cmp.training_records(paths, ["none", "filter", "struq", "secalign", "causal"])
    by = {r["defense"]: r for r in recs}
    assert list(by) == ["struq", "secalign", "causal"]  # trained defenses only
    s = by["struq"]
    assert (s["n_injected"], s["n_clean"], s["steps"], s["epochs"], s["learning_rate"]) == (120, 120, 30, 2, 2e-4)
    assert s["selection_rule"] == "lowest validation loss on O*" and s["selected_epoch"] == 1  # chapter 06's pick
    assert s["trainable_parameters"] == 1024 and s["trainable_parameters_from"] == "LoRA adapter file"
    assert (by["secalign"]["n_injected"], by["secalign"]["n_clean"]) == (240, 0)
    assert by["secalign"]["learning_rate"] is None and by["secalign"]["steps"] is None
    c = by["causal"]
    assert (c["trainable_parameters"], c["trainable_parameters_from"], c["learning_rate_grid"]) == (1234, "recorded", [5e-5, 1e-4, 2e-4])
    rows = cmp.training_rows(recs)
    assert rows[0]["defense"] == "StruQ" and rows[0]["attack families"] == "fake_completion, naive"
    assert rows[0]["wall time"] == "61 s" and rows[0]["trainable parameters"].startswith("1,024")
    assert rows[1]["learning rate"] == "not recorded" and rows[2]["learning-rate grid"] == "[5e-05, 0.0001, 0.0002]"
    differ = cmp.training_differences(rows)
    assert {"attack families", "injected examples", "learning-rate grid", "optimiser steps"} <= set(differ)
    assert rows[0]["epochs"] == rows[2]["epochs"] == "2"  # 2.0 in a model card reads as 2
    same = [dict(rows[2], defense=x) for x in ("a", "b")]
    assert cmp.training_differences(same) == []
    text = comparison_table_report([{"defense": "x"}], 0, training_rows=rows, training_differ=differ)
    assert "## Training of each defense" in text and "Not one training contract" in text and "not recorded" in text
    assert "the same for every trained defense" in comparison_table_report([{"defense": "x"}], 0, training_rows=same,
                                                                           training_differ=[])
