"""Shared test set-up: no network, torch that does not spin, and the fixtures several test files use -
`make_record` (a data.records.Record with test defaults) and `tiny_model` (the embedded tiny model on a
tokenizer trained on texts of the embedded world)."""
import os

# No test may touch the network, and torch must not spin (DESIGN.md s.9).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

import random  # noqa: E402

import pytest  # noqa: E402

from causal_lib.config import ModelConfig, TinyModelConfig  # noqa: E402
from causal_lib.data import world  # noqa: E402
from causal_lib.data.records import Record  # noqa: E402
from causal_lib.models.load import build_tiny_model  # noqa: E402
from causal_lib.models.prompts import train_tokenizer  # noqa: E402

RECORD_DEFAULTS = dict(id="r0", pair_id="p0", split="test", kind="clean", task="first_item", system="", data="",
                       clean_data="", target="")


def _new_record(**fields):
    return Record(**{**RECORD_DEFAULTS, **fields})


@pytest.fixture(scope="session")
def make_record():
    """Factory for causal_lib.data.records.Record: make_record(kind="injected", data=..., ...); every field
    not given takes RECORD_DEFAULTS (not validated, as a Record built in code is not)."""
    return _new_record


@pytest.fixture(scope="session")
def world_texts():
    """Texts of 200 examples of the embedded world (system, document, answer), seeded."""
    rng = random.Random(0)
    examples = [world.sample_example(rng) for _ in range(200)]
    return [f"{ex.system} {ex.doc.text} {ex.target}" for ex in examples]


@pytest.fixture(scope="session")
def tiny_tokenizer(world_texts):
    """The project's byte-level BPE trained on world texts (vocab <= 512)."""
    return train_tokenizer(world_texts, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """(model, tokenizer): an untrained embedded tiny model (2 layers, hidden 32, seed 0) in eval mode. Shared by
    the session: a test that trains or changes it must work on a copy (copy.deepcopy)."""
    cfg = ModelConfig(tiny=TinyModelConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64), max_seq_length=64)
    return build_tiny_model(cfg, tiny_tokenizer, seed=0).eval(), tiny_tokenizer
