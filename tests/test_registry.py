"""The defense registry: a defense is one module plus one registry entry, and the book's machinery (params
validation, chapter list, training CLI, training, epoch validation, evaluation, comparison table) picks it up
with no other edit."""
import pytest

from causal_lib.core.run_folder import RunPaths
from causal_lib.book.chapters import chapter_runs
from causal_lib.config import ConfigError, config_from_dict
from causal_lib.data.build import ensure_dataset
from causal_lib.defenses import registry
from causal_lib.defenses.registry import Defense
from causal_lib.evaluation.comparison import comparison_rows
from causal_lib.evaluation.run import evaluate_defense
from causal_lib.models.checkpoints import save_checkpoint
from causal_lib.models.load import build_model
from causal_lib.training import cli as training_cli
from causal_lib.evaluation.epoch_selection import validate_epochs
from causal_lib.training.pretrain import base_checkpoint, ensure_tokenizer

# A defense module of one's own: its "training" keeps the base's weights (one epoch checkpoint + best_model).
DUMMY_MODULE = '''
from causal_lib.defenses.load import load_model
from causal_lib.models.checkpoints import save_checkpoint
from causal_lib.training.trainer import TrainResult


def train(cfg, paths, resume=False):
    model, tok = load_model(cfg, paths, "none")
    for d in ("epoch_1", "best_model"):
        save_checkpoint(model, tok, paths.checkpoints / "dummy" / d, extra={"epoch": 1})
    return TrainResult(name="dummy", epochs={1: {}}, best_epoch=1, steps=0)
'''

SMALL = {"run": {"name": "registry-test"}, "base": {"source": "pretrain"},
         "data": {"n_base_corpus": 60, "n_train": 40, "n_val": 12, "n_test": 24, "n_benign_lookalikes": 4,
                  "n_sep_probes": 4},
         "model": {"max_seq_length": 192, "tiny": {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "intermediate_size": 64}},
         "train": {"defenses": ["dummy"], "val_pairs": 4},
         "eval": {"gcg_items": 0}, "stats": {"n_bootstrap": 10}}


@pytest.fixture
def dummy_defense(tmp_path, monkeypatch):
    (tmp_path / "dummy_defense.py").write_text(DUMMY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import dummy_defense

    entry = Defense("dummy", "dummy defense", lambda: dummy_defense, trains=True, description="keeps the base")
    monkeypatch.setitem(registry.REGISTRY, "dummy", entry)
    return entry


def test_unregistered_defense_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown defense 'dummy'.*causal"):
        registry.check_params(config_from_dict(SMALL))


def test_a_registered_defense_runs_through_the_book_machinery(tmp_path, dummy_defense):
    cfg = config_from_dict(SMALL)  # params validation accepts the registered name
    labels = [r.label for r in chapter_runs(cfg)]
    assert "05_train[dummy]" in labels and "06_epoch_validation[dummy]" in labels
    assert "dummy" in training_cli.choices()

    paths = RunPaths(tmp_path / "run").make()
    ensure_dataset(cfg, paths)
    tok = ensure_tokenizer(cfg, paths)
    model, tok = build_model(cfg.model, tok, seed=0)  # an untrained stand-in for chapter 04's base
    save_checkpoint(model, tok, base_checkpoint(paths))

    result = registry.get("dummy").train(cfg, paths)  # what chapter 05 runs for every trained defense
    assert result.best_epoch == 1 and (paths.checkpoints / "dummy" / "best_model").is_dir()
    epochs = validate_epochs(cfg, paths, "dummy")  # chapter 06
    assert epochs["best_epoch"] == 1

    evaluated = registry.evaluated(cfg.train.defenses)  # chapter 08's list, in report order
    assert evaluated[-1] == "dummy" and "causal" not in evaluated
    evals = {d: evaluate_defense(cfg, paths, d) for d in ("none", "dummy")}
    assert evals["dummy"]["summary"]["asr"]["n"] > 0
    # the same weights as the base, the same greedy outputs: the same measured rates
    assert evals["dummy"]["summary"]["asr"] == evals["none"]["summary"]["asr"]
    rows = comparison_rows(evals)
    assert [r["defense"] for r in rows] == ["no defense", "dummy defense"]


def test_causal_ablations_train_the_causal_recipe_with_their_terms_off(monkeypatch):
    from causal_lib.defenses import causal

    calls = {}
    monkeypatch.setattr(causal, "train", lambda cfg, paths, resume=False, **kw: calls.setdefault(kw["name"], kw))
    from causal_lib.config import Config

    for name in ("causal_sft", "causal_invariance", "causal_hsic"):
        registry.get(name).train(cfg=Config(), paths=None)
    assert calls["causal_sft"]["lambda_causal"] == calls["causal_sft"]["lambda_spurious"] == 0.0
    assert calls["causal_invariance"]["lambda_spurious"] == 0.0 and "lambda_causal" not in calls["causal_invariance"]
    assert calls["causal_hsic"]["lambda_causal"] == 0.0 and "lambda_spurious" not in calls["causal_hsic"]
    assert set(registry.trained_names()) >= {"causal", "struq", "secalign", "causal_sft"}
