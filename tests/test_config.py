import subprocess
import sys
import time

import pytest

from causal_lib.config import PROJECT_ROOT, Config, ConfigError, config_from_dict, load_config

PARAMS = sorted((PROJECT_ROOT / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_shipped_params_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.run.name


def test_defaults_match_design():
    cfg = Config()
    assert cfg.train.lambda_causal == 0.5 and cfg.train.lambda_spurious == 0.5
    assert cfg.run.memory_limit_gb == 5.5
    assert cfg.model.trust_remote_code is False


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rte'.*did you mean 'train.learning_rate'"):
        config_from_dict({"train": {"learning_rte": 1e-3}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        config_from_dict({"trian": {}})


@pytest.mark.parametrize("key", ["eval_steps", "early_stopping_patience"])
def test_removed_train_keys_are_unknown(key):
    # train.eval_steps and train.early_stopping_patience were validated but never read; an old params
    # file that still sets them gets the unknown-key error naming the key
    with pytest.raises(ConfigError, match=rf"unknown key 'train.{key}'"):
        config_from_dict({"train": {key: 10}})


@pytest.mark.parametrize("data,match", [
    ({"train": {"batch_size": "32"}}, r"train.batch_size: expected an integer, got str"),
    ({"train": {"batch_size": 2.5}}, r"train.batch_size: expected an integer"),
    ({"train": {"learning_rate": -1.0}}, r"train.learning_rate: -1.0 is out of range, must be >= 0"),
    ({"model": {"kind": "tinny"}}, r"model.kind: 'tinny' is not one of \['tiny', 'hf'\] \(did you mean 'tiny'\?\)"),
    ({"model": {"load_in_4bit": "yes"}}, r"model.load_in_4bit: expected true/false"),
    ({"data": {"held_out_families": "naive"}}, r"data.held_out_families: expected a list"),
    ({"train": {"defenses": ["causal", "strq"]}}, r"unknown defense 'strq' \(did you mean 'struq'\?\)"),
    ({"model": {"kind": "hf"}}, r"model.name_or_path: required"),
    ({"model": {"load_in_4bit": True, "kind": "hf", "name_or_path": "x"}}, r"set model.use_lora: true"),
    ({"run": 3}, r"run: expected a section"),
    ({"train": {"base_curriculum": [["first_item"], ["last_iten"]]}},
     r"train.base_curriculum\[1\]: unknown task 'last_iten' \(did you mean 'last_item'\?\)"),
    ({"train": {"base_curriculum": [[]]}}, r"train.base_curriculum\[0\]: a stage needs at least one task"),
    ({"train": {"base_curriculum": ["first_item"]}}, r"train.base_curriculum\[0\]: expected a list"),
])
def test_bad_values_say_which_and_why(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_overrides_and_hash():
    a = config_from_dict({}, {"train.epochs": 1})
    b = config_from_dict({"train": {"epochs": 1}})
    assert a == b and a.train.epochs == 1.0
    assert a.params_hash() == b.params_hash()
    assert a.params_hash() != config_from_dict({}, {"run.seed": 1}).params_hash()
    # the run name does not change results, so it does not change the hash
    assert a.params_hash() == config_from_dict({}, {"train.epochs": 1, "run.name": "x"}).params_hash()


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_rejects_misspelt_key_fast(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("train:\n  epoch: 2\n")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "causal_lib.book", "check", "--params", str(p)],
                       capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert time.time() - t0 < 5
    assert r.returncode == 2
    assert "unknown key 'train.epoch'" in r.stderr and "train.epochs" in r.stderr
