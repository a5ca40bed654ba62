"""Faults lose nothing: a training process SIGKILLed anywhere resumes to the same weights and log as an
uninterrupted run; out-of-memory stops with the plan's advice; evaluation of 10,000 attacked items does
not grow in memory."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from causal_lib.training.trainer import complete_trainer_checkpoint

WORKER = Path(__file__).with_name("kill_worker.py")


def _worker(out_root, name, *extra, timeout=300):
    return subprocess.Popen([sys.executable, str(WORKER), str(out_root), name, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _kill_when_hanging(proc, flag: Path, timeout=180):
    t0 = time.time()
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended before reaching the kill point:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("worker never reached the kill point")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _weights(run_dir: Path, name: str) -> dict:
    return load_file(str(run_dir / "checkpoints" / name / "epoch_3" / "model.safetensors"))


def _losses(run_dir: Path, name: str) -> list:
    lines = (run_dir / "metrics" / f"train_{name}_log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    _finish(_worker(root, "full"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("where", ["step:5", "save:6", "export:2"])
def test_sigkill_anywhere_resumes_to_the_same_weights_and_log(reference, where):
    root = reference
    name = "killed_" + where.replace(":", "_")
    proc = _worker(root, name, "--hang-at", where)
    _kill_when_hanging(proc, root / f"{name}.hanging")
    run_dir = root / "default"
    trainer_dir = run_dir / "checkpoints" / name / "trainer"
    if where == "save:6":  # killed inside the Trainer save: checkpoint-6 exists but is incomplete
        assert (trainer_dir / "checkpoint-6").is_dir() and not (trainer_dir / "checkpoint-6" / "COMPLETE").exists()
    if where == "export:2":  # killed inside the atomic export: only the temporary folder exists
        assert list((run_dir / "checkpoints" / name).glob("epoch_2.tmp-*")) and not (run_dir / "checkpoints" / name / "epoch_2").exists()
    assert complete_trainer_checkpoint(trainer_dir).endswith("checkpoint-3")  # the half-written one is never used

    out = _finish(_worker(root, name, "--resume"))
    assert "resumed from" in out and "checkpoint-3" in out
    full, resumed = _weights(run_dir, "full"), _weights(run_dir, name)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert _losses(run_dir, name) == _losses(run_dir, "full")  # no duplicated or missing steps in the log
    assert not list((run_dir / "checkpoints" / name).glob("*.tmp*"))


def test_out_of_memory_stops_with_the_plans_advice(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from transformers import Trainer

    from causal_lib.core.run_folder import RunPaths
    from causal_lib.config import config_from_dict
    from causal_lib.models.load import build_tiny_model
    from causal_lib.models.prompts import train_tokenizer
    from causal_lib.training.examples import SFTDataset
    from causal_lib.training.trainer import TrainingError, run_training

    cfg = config_from_dict({"model": {"tiny": {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 64}, "max_seq_length": 64},
                            "train": {"batch_size": 8, "report_to": "none"}, "run": {"output_root": str(tmp_path)}})
    recs = [SimpleNamespace(system="Give the first item.", data="a, b, c", target="a")] * 8
    tok = train_tokenizer(["Give the first item. a, b, c"] * 10, vocab_size=300)
    paths = RunPaths(cfg.run_dir).make()
    for err in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes")):
        def boom(self, *a, _err=err, **kw):
            raise _err
        monkeypatch.setattr(Trainer, "train", boom)
        with pytest.raises(TrainingError) as e:
            run_training(cfg, paths, "oom", build_tiny_model(cfg.model, tok), tok, SFTDataset(recs, tok, 64),
                         epochs=1, learning_rate=1e-3)
        msg = str(e.value)
        assert "out of memory" in msg and "max_seq_length" in msg and "lora.r" in msg and "gradient_checkpointing" in msg


@pytest.mark.slow
def test_evaluating_10000_attacked_items_does_not_grow_memory():
    import dataclasses

    import psutil

    from causal_lib.config import config_from_dict
    from causal_lib.data.build import build_dataset
    from causal_lib.evaluation.run import evaluate_records
    from causal_lib.models.load import build_tiny_model
    from causal_lib.models.prompts import train_tokenizer

    torch.set_num_threads(2)
    cfg = config_from_dict({"data": {"n_train": 40, "n_val": 10, "n_test": 100, "n_base_corpus": 20,
                                     "n_benign_lookalikes": 0, "n_sep_probes": 0},
                            "model": {"tiny": {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 64}},
                            "eval": {"batch_size": 250, "max_new_tokens": 4}})
    splits = build_dataset(cfg)
    attacked = [r for r in splits["test"] if r.kind == "injected"]
    tok = train_tokenizer([t for r in splits["train"] for t in (r.system, r.data, r.target)], vocab_size=512)
    model = build_tiny_model(cfg.model, tok, seed=0).eval()

    def items(n, offset):
        return [dataclasses.replace(attacked[k % len(attacked)], id=f"soak{offset + k}") for k in range(n)]

    evaluate_records(model, tok, items(1000, 0), cfg.eval)  # warm-up: allocator pools and caches settle
    before = psutil.Process().memory_info().rss
    res = evaluate_records(model, tok, items(10_000, 1000), cfg.eval)
    after = psutil.Process().memory_info().rss
    assert len(res) == 10_000 and all(r.success is not None for r in res)
    assert after <= 1.10 * before, f"RSS grew from {before / 2**20:.0f} MiB to {after / 2**20:.0f} MiB"
