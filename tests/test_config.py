import re
import subprocess
import sys
from functools import reduce

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
    ({"model": {"kind": "hf"}}, r"model.name_or_path: required"),
    ({"model": {"load_in_4bit": True, "kind": "hf", "name_or_path": "x"}}, r"set model.use_lora: true"),
    ({"run": 3}, r"run: expected a section"),
    ({"train": {"base_curriculum": ["first_item"]}}, r"train.base_curriculum\[0\]: expected a list"),
])
def test_bad_values_say_which_and_why(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


@pytest.mark.parametrize("data,match", [
    ({"train": {"defenses": ["causal", "strq"]}}, r"unknown defense 'strq' \(did you mean 'struq'\?\)"),
    ({"train": {"base_curriculum": [["first_item"], ["last_iten"]]}},
     r"train.base_curriculum\[1\]: unknown task 'last_iten' \(did you mean 'last_item'\?\)"),
    ({"train": {"base_curriculum": [[]]}}, r"train.base_curriculum\[0\]: a stage needs at least one task"),
])
def test_names_of_the_floors_above_are_checked_by_the_registry(data, match):
    """config.py cannot import the world or the registry (it is the ground floor): the entry points run
    registry.check_params after loading, with the same one-line message."""
    from causal_lib.defenses import registry

    cfg = config_from_dict(data)
    with pytest.raises(ConfigError, match=match) as e:
        registry.check_params(cfg)
    assert "\n" not in str(e.value)


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


def test_cli_rejects_misspelt_key_without_loading_the_model_stack(tmp_path):
    """`book check` answers before any heavy import: a typo is reported without torch or transformers loaded
    (what makes it fast; its time is not asserted here - budgets are measured by `make bench`)."""
    p = tmp_path / "typo.yaml"
    p.write_text("train:\n  epoch: 2\n")
    probe = ("import sys\nfrom causal_lib.book import runner\nrc = runner.main(['check', '--params', sys.argv[1]])\n"
             "print('heavy:', sorted(m for m in ('torch', 'transformers', 'papermill') if m in sys.modules))\n"
             "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", probe, str(p)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert r.returncode == 2
    assert "unknown key 'train.epoch'" in r.stderr and "train.epochs" in r.stderr
    assert "heavy: []" in r.stdout


# ---------------------------------------------------------------------------------------------- probes of a new user

def _numeric_fields(cls=Config, where=""):
    """(dotted key, field) of every int/float key, nested sections included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{where}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, path + ".")
            continue
        args = typing.get_args(tp) or (tp,)
        if any(a in (int, float) for a in args if a is not bool):
            yield path, f, float in args


def test_every_numeric_key_has_both_bounds_and_its_default_is_inside():
    from functools import reduce

    keys = list(_numeric_fields())
    assert len(keys) > 50
    cfg = Config()
    for path, f, _ in keys:
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        assert lo is not None and hi is not None, f"{path}: no range (_range(lo, hi)) in config.py"
        default = reduce(getattr, path.split("."), cfg)
        for v in default if isinstance(default, list) else [default]:
            assert v is None or lo <= v <= hi, path
        # one past the bound is refused, naming the key and the bound
        with pytest.raises(ConfigError, match=rf"{path}(\[0\])?: .* must be <= {hi}"):
            config_from_dict({}, {path: [hi + 1] if isinstance(default, list) else hi + 1})


@pytest.mark.parametrize("key", [p for p, _, is_float in _numeric_fields() if is_float])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused_for_every_float_key(key, value):
    from causal_lib.config import parse_overrides

    is_list = isinstance(reduce(getattr, key.split("."), Config()), list)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}(\[0\])?: -?(nan|inf) is not allowed, must be a finite number between "):
        config_from_dict({}, parse_overrides([f"{key}=[{value}]" if is_list else f"{key}={value}"]))


@pytest.mark.parametrize("text,match", [
    ("train: {learning_rate: .nan}\n", r"train.learning_rate: nan is not allowed, must be a finite number between 0.0 and 1.0"),
    ("train: {epochs: .inf}\n", r"train.epochs: inf is not allowed, must be a finite number"),
    ("stats: {alpha: .nan}\n", r"stats.alpha: nan is not allowed"),
    ("train: {epochs: 1000000000}\n", r"train.epochs: 1000000000.0 is out of range, must be <= 1000"),
    ("model: {max_seq_length: 99999999}\n", r"model.max_seq_length: 99999999 is out of range, must be <= 131072"),
    ("run: {seeds: [1, -2]}\n", r"run.seeds\[1\]: -2 is out of range, must be >= 0"),
])
def test_params_file_probes_are_refused(tmp_path, text, match):
    p = tmp_path / "probe.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_generous_real_run_values_are_accepted():
    cfg = config_from_dict({"train": {"epochs": 1000, "batch_size": 65536, "learning_rate": 1.0},
                            "model": {"max_seq_length": 131072}, "data": {"n_train": 10_000_000},
                            "stats": {"n_permutations": 1_000_000, "n_bootstrap": 1_000_000}})
    assert cfg.model.max_seq_length == 131072 and cfg.train.epochs == 1000.0


@pytest.mark.parametrize("content", [b"", b"\n", b"# only a comment\n", b"{}\n", b"---\n"])
def test_empty_params_file_is_refused(tmp_path, content):
    p = tmp_path / "empty.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=r"empty.yaml: the params file is empty; write at least `run: \{name: \.\.\.\}`"
                                          r".*params/default.yaml"):
        load_config(p)


def test_params_path_that_is_a_directory_or_binary_says_which_and_how(tmp_path):
    with pytest.raises(ConfigError, match=rf"params file {tmp_path} is a directory: pass a YAML file, e.g. params/default.yaml"):
        load_config(tmp_path)
    b = tmp_path / "weights.bin"
    b.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"weights.bin: not a YAML text file \(not UTF-8: binary\?\)"):
        load_config(b)
    z = tmp_path / "nul.yaml"  # UTF-8, but with control characters YAML does not allow
    z.write_bytes(b"run: {name: x}\n\x00\x01\x02")
    with pytest.raises(ConfigError, match=r"nul.yaml: not valid YAML \(.*\); fix it"):
        load_config(z)


def test_override_that_is_not_yaml_is_one_clear_error():
    from causal_lib.config import parse_overrides

    with pytest.raises(ConfigError, match=r"--set 'train.epochs=\[': the value is not valid YAML"):
        parse_overrides(["train.epochs=["])


def _write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("case", ["empty", "comment_only", "directory", "binary", "bad_yaml", "nan_set", "inf_file",
                                  "huge_epochs", "huge_seq"])
def test_book_check_refuses_bad_params_with_one_line(tmp_path, capsys, case):
    from causal_lib.book.runner import main

    smoke = str(PROJECT_ROOT / "params" / "smoke.yaml")
    argv = {
        "empty": ["--params", str(_write(tmp_path, "e.yaml", b""))],
        "comment_only": ["--params", str(_write(tmp_path, "c.yaml", b"# nothing yet\n"))],
        "directory": ["--params", str(tmp_path)],
        "binary": ["--params", str(_write(tmp_path, "b.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00"))],
        "bad_yaml": ["--params", str(_write(tmp_path, "y.yaml", b"train: [1,\n  2\nrun: {\n"))],
        "nan_set": ["--params", smoke, "--set", "train.learning_rate=.nan"],
        "inf_file": ["--params", str(_write(tmp_path, "i.yaml", b"run: {name: x}\ntrain: {epochs: .inf}\n"))],
        "huge_epochs": ["--params", smoke, "--set", "train.epochs=1000000000"],
        "huge_seq": ["--params", smoke, "--set", "model.max_seq_length=99999999"],
    }[case]
    rc = main(["check", *argv])
    out = capsys.readouterr()
    assert rc == 2 and "OK" not in out.out
    err = out.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err


def test_cli_check_nan_learning_rate_fails_in_a_subprocess():
    r = subprocess.run([sys.executable, "-m", "causal_lib.book", "check", "--params", "params/smoke.yaml",
                        "--set", "train.learning_rate=.nan"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert r.returncode == 2 and "OK" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        "error: smoke.yaml: train.learning_rate: nan is not allowed, must be a finite number between 0.0 and 1.0 "
        "(NaN and infinity are refused)"]
