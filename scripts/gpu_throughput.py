"""Training throughput of the real-model preset per number of GPU processes (issue 35, item 4). NOT RUN YET: no GPU
has been lent to a session since it was written; README "More than one machine" gets its figures once it has run.

    .venv/bin/python scripts/gpu_throughput.py                      # 1, 2, 4, ... up to every visible GPU
    .venv/bin/python scripts/gpu_throughput.py --processes 1 8 --defense struq --params params/smollm2_gpu.yaml

For each process count it trains `--defense` on the preset (the base first, once, in one process) into its own run
folder outputs/gpu_throughput_<N>/ with train.debug (train.debug_samples pairs, one epoch), with
`python -m causal_lib.training --num-processes N` (DDP over NCCL; train.batch_size stays the global batch), and
reads the run's train log: optimizer steps per second after the first logged step, examples per second (steps/s x
global batch), peak CUDA memory of rank 0. Writes outputs/gpu_throughput.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(params: str, defense: str, run: str, n: int, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "causal_lib.training", "--params", params, "--defense", defense, "--run", run,
           "--set", *sets]
    if n > 1:
        cmd += ["--num-processes", str(n)]
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - t0


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/smollm2_gpu.yaml")
    ap.add_argument("--defense", default="causal")
    ap.add_argument("--processes", type=int, nargs="+", default=None)
    ap.add_argument("--samples", type=int, default=512, help="train.debug_samples: training pairs of each run")
    a = ap.parse_args()
    gpus = torch.cuda.device_count()
    if gpus == 0:
        print("error: no CUDA GPU visible; this script measures GPU throughput", file=sys.stderr)
        return 2
    counts = a.processes or [n for n in (1, 2, 4, 8, 16) if n <= gpus]
    if any(n > gpus for n in counts):
        print(f"error: --processes {counts}: only {gpus} GPUs visible", file=sys.stderr)
        return 2
    sets = ["train.debug=true", f"train.debug_samples={a.samples}", "train.epochs=1", "train.report_to=none"]
    rows = []
    for n in counts:
        run = f"gpu_throughput_{n}"
        train(a.params, "base", run, 1, sets)
        wall = train(a.params, a.defense, run, n, sets)
        log = [json.loads(x) for x in (ROOT / "outputs" / run / "metrics" / f"train_{a.defense}_log.jsonl")
               .read_text().splitlines() if x.strip()]
        steps = [r for r in log if "steps_per_s" in r]
        sps = steps[-1]["steps_per_s"] if steps else None
        from causal_lib.config import load_config

        batch = load_config(ROOT / a.params).train.batch_size
        rows.append({"processes": n, "steps_per_s": sps, "examples_per_s": sps * batch if sps else None,
                     "wall_s": wall, "cuda_peak_gb_rank0": max((r.get("cuda_peak_gb", 0) for r in log), default=None),
                     "final_loss": next((r["loss"] for r in reversed(log) if "loss" in r), None)})
    out = {"params": a.params, "defense": a.defense, "gpus": gpus, "device": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (ROOT / "outputs").mkdir(exist_ok=True)
    (ROOT / "outputs" / "gpu_throughput.json").write_text(json.dumps(out, indent=2))
    print("| processes | steps/s | examples/s | wall s | peak GB (rank 0) | final loss |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['processes']} | {r['steps_per_s'] or 0:.3f} | {r['examples_per_s'] or 0:.1f} | {r['wall_s']:.0f} | "
              f"{r['cuda_peak_gb_rank0'] or 0:.2f} | {r['final_loss']} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
