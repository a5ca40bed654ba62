"""`python -m causal_lib.training`: the chapters' training outside notebooks (accelerate launch), resumable."""
import pytest

from causal_lib.training import cli as train_cli


@pytest.mark.slow
def test_cli_trains_and_a_finished_run_resumes_without_new_steps(tmp_path, capsys):
    args = ["--params", "params/smoke.yaml", "--set", f"run.output_root={tmp_path}"]
    assert train_cli.main(args + ["--defense", "base"]) == 0
    assert train_cli.main(args + ["--defense", "causal"]) == 0
    first = capsys.readouterr().out
    best = tmp_path / "smoke" / "checkpoints" / "causal" / "best_model"
    assert (best / "checkpoint.json").exists() and "causal:" in first
    before = (best / "model.safetensors").read_bytes() if (best / "model.safetensors").exists() else None
    assert train_cli.main(args + ["--defense", "causal", "--resume"]) == 0
    assert "causal:" in capsys.readouterr().out
    if before is not None:
        assert (best / "model.safetensors").read_bytes() == before


def test_cli_unknown_defense_and_bad_params_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--params", "params/smoke.yaml", "--defense", "nope"])
    code = train_cli.main(["--params", "params/smoke.yaml", "--defense", "base", "--set", "train.epochs=-1",
                           f"run.output_root={tmp_path}"])
    assert code == 2 and "train.epochs" in capsys.readouterr().err
