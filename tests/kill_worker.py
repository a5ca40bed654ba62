"""A training process for the kill tests (tests/test_reliability.py), run as a subprocess:

    python tests/kill_worker.py OUT_ROOT NAME [--resume] [--hang-at step:N|save:N|export:N]

It trains the small SFT model of tests/test_training.py for 3 epochs through `run_training`. With
--hang-at it writes OUT_ROOT/<NAME>.hanging at that point and sleeps there, so that the test can SIGKILL
it exactly there: inside optimizer step N, halfway through the Trainer checkpoint at step N (weights
written, optimizer state not), or halfway through the atomic export of epoch N (files written to the
temporary folder, checkpoint.json not).
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402

from causal_lib.core.run_folder import RunPaths  # noqa: E402
from causal_lib.config import config_from_dict  # noqa: E402
from causal_lib.models import checkpoints as model_mod  # noqa: E402
from causal_lib.models.load import build_tiny_model
from causal_lib.models.prompts import train_tokenizer  # noqa: E402
from causal_lib.training.examples import SFTDataset
from causal_lib.training.trainer import run_training  # noqa: E402

ITEMS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "melon"]
EPOCHS = 3


def records():
    from types import SimpleNamespace

    out = []
    for i in range(24):
        items = [ITEMS[(i + k) % len(ITEMS)] for k in range(3)]
        out.append(SimpleNamespace(system="Give the first item.", data=", ".join(items), target=items[0]))
    return out


def hang(flag: Path):
    flag.write_text(str(os.getpid()))
    time.sleep(600)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_root")
    ap.add_argument("name")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hang-at", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config_from_dict({"model": {"tiny": {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 64}, "max_seq_length": 64},
                            "train": {"batch_size": 8, "report_to": "none"}, "run": {"output_root": a.out_root}})
    recs = records()
    tok = train_tokenizer([r.system + " " + r.data + " " + r.target for r in recs] * 3, vocab_size=300)
    paths = RunPaths(cfg.run_dir).make()
    flag = Path(a.out_root) / f"{a.name}.hanging"
    callbacks = []
    if a.hang_at:
        where, n = a.hang_at.split(":")
        n = int(n)
        if where == "step":
            class HangInStep(TrainerCallback):
                def on_pre_optimizer_step(self, args, state, control, **kw):
                    if state.global_step + 1 == n:
                        hang(flag)
            callbacks.append(HangInStep())
        elif where == "save":
            orig = Trainer._save_optimizer_and_scheduler

            def save_then_hang(self, output_dir):
                if self.state.global_step == n:
                    hang(flag)
                return orig(self, output_dir)
            Trainer._save_optimizer_and_scheduler = save_then_hang
        elif where == "export":
            orig_hash = model_mod.file_sha256

            def hash_then_hang(path):
                if f"epoch_{n}.tmp" in str(path):
                    hang(flag)
                return orig_hash(path)
            model_mod.file_sha256 = hash_then_hang
    if callbacks:
        orig_init = Trainer.__init__

        def init(self, *args, **kw):
            orig_init(self, *args, **kw)
            for cb in callbacks:
                self.add_callback(cb)
        Trainer.__init__ = init
    model = build_tiny_model(cfg.model, tok, seed=0)
    res = run_training(cfg, paths, a.name, model, tok, SFTDataset(recs, tok, 64), epochs=EPOCHS, learning_rate=1e-3,
                       logging_steps=1, resume=a.resume)
    print(f"done {res.steps} steps, resumed from {res.resumed_from}", flush=True)


if __name__ == "__main__":
    main()
