"""The training contract's learning-rate search (training.lr_search): the same grid for every defense, the rate
chosen by the validation loss of its selected epoch, the chosen run copied into the defense's folder."""
import json

import pytest

from causal_lib.core.run_folder import RunPaths
from causal_lib.config import ConfigError, config_from_dict
from causal_lib.training.lr_search import train_over_grid
from causal_lib.training.trainer import TrainResult

LOSS_AT = {2e-4: 0.9, 5e-4: 0.4, 1e-3: 0.7}


def fake_train(cfg, paths, resume=False, name="x", data="matched"):
    lr = cfg.train.learning_rate
    assert cfg.train.dpo_learning_rate == lr and data == "paper"  # every rate a defense reads
    if lr == 3e-3:
        from causal_lib.training.trainer import TrainingError

        raise TrainingError("loss is NaN")
    (paths.metrics / f"train_{name}_log.jsonl").write_text(json.dumps({"step": 1, "loss": lr}) + "\n")
    best = paths.checkpoints / name / "best_model"
    best.mkdir(parents=True)
    (best / "checkpoint.json").write_text(json.dumps({"extra": {"learning_rate": lr}}))
    (paths.checkpoints / name / "trainer").mkdir()
    return TrainResult(name=name, epochs={1: {"val_loss": LOSS_AT[lr] + 0.1}, 2: {"val_loss": LOSS_AT[lr]}},
                       best_epoch=2)


def test_the_rate_with_the_lowest_selected_validation_loss_is_kept(tmp_path):
    cfg = config_from_dict({"train": {"learning_rate_grid": [2e-4, 5e-4, 1e-3, 3e-3]},
                            "run": {"output_root": str(tmp_path)}})
    paths = RunPaths(cfg.run_dir).make()
    (paths.checkpoints / "struq" / "best_model").mkdir(parents=True)  # an older model is replaced whole
    r = train_over_grid(fake_train, cfg, paths, "struq", data="paper")
    assert r.name == "struq" and r.best_epoch == 2
    # chapter 05 reads the chosen rate's log under the defense's name
    assert r.log_path.endswith("train_struq_log.jsonl")
    assert json.loads((paths.metrics / "train_struq_log.jsonl").read_text())["loss"] == 5e-4
    best = json.loads((paths.checkpoints / "struq" / "best_model" / "checkpoint.json").read_text())
    assert best["extra"]["learning_rate"] == 5e-4
    search = json.loads((paths.checkpoints / "struq" / "lr_search.json").read_text())
    assert search["learning_rate"] == 5e-4 and search["scores"] == {"0.0002": 0.9, "0.0005": 0.4, "0.001": 0.7}
    assert list(search["failed"]) == ["0.003"] and "NaN" in search["failed"]["0.003"]  # a diverging rate is recorded
    assert not (paths.checkpoints / "struq" / "trainer").exists()  # the chosen model, not its optimiser state
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["struq", "struq@lr0", "struq@lr1", "struq@lr2"]
    assert not list(paths.root.rglob("*.tmp")) and not list(paths.root.rglob(".*.old"))
    # the comparison's training table reads the grid and the chosen rate
    from causal_lib.evaluation.comparison import training_record

    rec = training_record(paths, "struq")
    assert rec["learning_rate_grid"] == [2e-4, 5e-4, 1e-3, 3e-3] and rec["learning_rate"] == 5e-4


def test_no_grid_trains_once_as_given(tmp_path):
    cfg = config_from_dict({"train": {"learning_rate": 1e-3, "dpo_learning_rate": 1e-3},
                            "run": {"output_root": str(tmp_path)}})
    paths = RunPaths(cfg.run_dir).make()
    r = train_over_grid(fake_train, cfg, paths, "struq", name="struq", data="paper")
    assert r.name == "struq" and sorted(p.name for p in paths.checkpoints.iterdir()) == ["struq"]


def test_a_bad_grid_is_refused_in_one_line():
    for grid, word in (([0.0], "> 0"), ([1e-4, 1e-4], "repeats"), ([2.0], "out of range")):
        with pytest.raises(ConfigError, match="learning_rate_grid") as e:
            config_from_dict({"train": {"learning_rate_grid": grid}})
        assert word in str(e.value) and "\n" not in str(e.value)


def test_every_registered_defense_trains_through_the_search(monkeypatch):
    from causal_lib.defenses import registry
    from causal_lib.training import lr_search

    seen = {}
    monkeypatch.setattr(lr_search, "train_over_grid", lambda fn, cfg, paths, defense, resume=False, **o: seen.update({defense: o}))
    for name in ("struq", "secalign_original", "causal_sft", "causal"):
        registry.get(name).train(None, None)  # what chapter 05 and the training CLI call
    assert seen["struq"] == {"name": "struq", "data": "matched"} and seen["secalign_original"]["data"] == "paper"
    assert seen["causal_sft"]["lambda_causal"] == 0.0 and seen["causal"] == {}


def test_a_defense_without_a_name_parameter_cannot_search(tmp_path):
    cfg = config_from_dict({"train": {"learning_rate_grid": [1e-4, 2e-4]}, "run": {"output_root": str(tmp_path)}})
    with pytest.raises(ValueError, match="takes no name="):
        train_over_grid(lambda cfg, paths, resume=False: None, cfg, RunPaths(cfg.run_dir).make(), "mine")


KL_LOSS = {(5e-4, 0.0): 0.4, (5e-4, 1.0): 0.3, (1e-3, 0.0): 0.7, (1e-3, 1.0): 0.5}


def fake_causal_train(cfg, paths, resume=False, name="causal", kl_weight=None, **loss_weights):
    """A train() that takes kl_weight (the causal method's): its validation loss depends on the rate and weight."""
    w = cfg.train.kl_weight if kl_weight is None else kl_weight
    lr = cfg.train.learning_rate
    best = paths.checkpoints / name / "best_model"
    best.mkdir(parents=True)
    (best / "checkpoint.json").write_text(json.dumps({"extra": {"learning_rate": lr, "kl_weight": w}}))
    return TrainResult(name=name, epochs={1: {"val_loss": KL_LOSS[(lr, w)]}}, best_epoch=1)


def test_the_kl_weight_is_chosen_on_validation_with_the_rate(tmp_path):
    """issue 32: the KL term's weight chosen by the contract's rule, over the product with the rate grid."""
    cfg = config_from_dict({"train": {"learning_rate_grid": [5e-4, 1e-3], "kl_weight_grid": [0.0, 1.0]},
                            "run": {"output_root": str(tmp_path)}})
    paths = RunPaths(cfg.run_dir).make()
    train_over_grid(fake_causal_train, cfg, paths, "causal")
    search = json.loads((paths.checkpoints / "causal" / "lr_search.json").read_text())
    assert (search["learning_rate"], search["kl_weight"], search["configurations"]) == (5e-4, 1.0, 4)
    assert search["chosen_folder"] == "causal@lr0kl1" and len(search["scores"]) == 4
    from causal_lib.evaluation.comparison import training_record, training_rows

    row = training_rows([training_record(paths, "causal")])[0]
    assert row["KL weight (grid)"] == "1 [0, 1]" and row["configurations tried on validation"] == "4"


def test_the_kl_grid_skips_defenses_without_the_term_or_with_it_fixed(tmp_path):
    cfg = config_from_dict({"train": {"kl_weight_grid": [0.0, 1.0]}, "run": {"output_root": str(tmp_path)}})
    paths = RunPaths(cfg.run_dir).make()
    calls = []

    def no_kl(cfg, paths, resume=False, name="struq", data="matched"):
        calls.append(name)
        return TrainResult(name=name, epochs={}, best_epoch=None)

    train_over_grid(no_kl, cfg, paths, "struq", name="struq")  # StruQ has no KL term: trained once, as given
    train_over_grid(lambda cfg, paths, resume=False, name="x", kl_weight=None, **o: calls.append((name, kl_weight)),
                    cfg, paths, "causal_sft", name="causal_sft", kl_weight=0.0)  # the control fixes it to 0
    assert calls == ["struq", ("causal_sft", 0.0)]
    with pytest.raises(ConfigError, match="kl_weight_grid.*repeats"):
        config_from_dict({"train": {"kl_weight_grid": [1.0, 1.0]}})
