"""The base's recipe pieces (training/pretrain.py): curriculum stages ask their tasks of every fitting training
document, the copy warm-up cuts a document to its answer's sentence, and the tokenizer never merges capitals, so a
payload never seen in training is tokenized like the training ones."""
import random

import pytest

from causal_lib.config import ConfigError, load_config
from causal_lib.data import build, world
from causal_lib.defenses import registry
from causal_lib.training.pretrain import (TOKENIZER_SPLITS, answer_sentence_examples, boost_examples, curriculum_runs,
                                          stage_examples, train_run_tokenizer)
from causal_lib.training import shipped_base


def _splits():
    return build.build_dataset(load_config("params/smoke.yaml"))


def test_stage_examples_ask_every_fitting_document_once():
    s = _splits()
    records = s["base_corpus"] + [r for r in s["train"] if r.kind == "clean"]
    stage = stage_examples(records, ["order_code", "review_author"], seed=0)
    docs = {r.clean_data for r in records if world.TASKS[r.task].doc_kind in ("list", "review")}
    assert len(stage) == len(docs) and {r.clean_data for r in stage} == docs
    for r in stage:
        doc = world.parse_document(r.clean_data)
        assert r.task in ("order_code", "review_author") and world.TASKS[r.task].doc_kind == doc.kind
        assert r.data == r.clean_data and r.target == world.answer(world.TaskInstance(r.task), doc)
        assert r.system in world.TASKS[r.task].instructions and r.kind == "base" and r.injection is None
    assert stage == stage_examples(records, ["order_code", "review_author"], seed=0)  # seeded


def test_copy_warmup_keeps_only_the_answer_sentence():
    s = _splits()
    stage = stage_examples(s["base_corpus"], ["order_code"], seed=0)
    warm = answer_sentence_examples(stage)
    assert len(warm) == len(stage)
    for r in warm:
        assert r.data == f"Order code: {r.target}." and r.clean_data == r.data


def test_boost_asks_its_tasks_once_more_of_every_fitting_document():
    s = _splits()
    records = s["base_corpus"] + [r for r in s["train"] if r.kind == "clean"]
    cfg = load_config("params/smoke.yaml", {"train.base_boost_tasks": ["customer_city", "last_item"]})
    boost = boost_examples(cfg, records)
    docs = {r.clean_data for r in records if world.TASKS[r.task].doc_kind in ("record", "list")}
    assert {r.clean_data for r in boost} == docs and len(boost) == len(docs)
    assert {r.task for r in boost} == {"customer_city", "last_item"} and all(r.id.endswith("-boost") for r in boost)
    assert boost_examples(load_config("params/smoke.yaml"), records) == []
    with pytest.raises(ConfigError, match="base_boost_tasks: unknown task 'city'"):
        registry.check_params(load_config("params/smoke.yaml", {"train.base_boost_tasks": ["city"]}))


def test_an_unset_boost_leaves_the_recipe_hash_alone():
    plain = load_config("params/smoke.yaml")
    assert shipped_base.recipe_hash(plain) == shipped_base.recipe_hash(load_config("params/smoke.yaml", {"train.base_boost_tasks": []}))
    assert shipped_base.recipe_hash(plain) != shipped_base.recipe_hash(
        load_config("params/smoke.yaml", {"train.base_boost_tasks": ["last_item"]}))


def test_curriculum_runs_name_the_warmup_first():
    cfg = load_config("params/base.yaml")
    assert curriculum_runs(cfg) == ["base_copy_warmup", "base_curriculum_1", "base_curriculum_2"]
    assert curriculum_runs(load_config("params/base.yaml", {"train.base_copy_warmup_epochs": 0}))[0] == "base_curriculum_1"


def test_tokenizer_never_merges_capitals():
    s = _splits()
    tok = train_run_tokenizer({k: s[k] for k in TOKENIZER_SPLITS}, 1024)
    rng = random.Random(0)
    for cls in ("train", "test", "witness"):
        for _ in range(50):
            p = world.generated_string(rng, cls)
            pieces = [t.lstrip("Ġ") for t in tok.tokenize(" " + p)]
            assert all(len(t) <= 1 or not t.isupper() for t in pieces if t.isalpha()), (p, pieces)
