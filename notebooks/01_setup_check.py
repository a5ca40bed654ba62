# %% [markdown]
# # 01 · Setup check
#
# Before anything trains, this chapter checks that the machine can run the book with these params:
# package versions against the verified pins, the torch device (CUDA, bf16, 4-bit bitsandbytes when a
# GPU is used), free RAM / VRAM / disk, an estimate of the peak training memory for the chosen model
# and batch against the plan's limit (5.5 GB by default), and that nothing needs the network
# (`HF_HUB_OFFLINE=1` is honoured). It writes the setup part of `WEEK1_SETUP_REPORT.md`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}

# %%
import pandas as pd
import matplotlib.pyplot as plt

from causal_lib.core import criteria, run_folder
from causal_lib.book import reports
from causal_lib.book.setup_check import run_setup_checks

cfg, paths = run_folder.start(params_file, overrides)
checks, estimate = run_setup_checks(cfg)
table = pd.DataFrame([c.__dict__ for c in checks])
table

# %% [markdown]
# ## Memory estimate
# Weights, gradients, optimizer state (Adam: two fp32 moments per trainable parameter) and activations
# for one training step at `train.batch_size` x `model.max_seq_length`; QLoRA counts 4-bit frozen weights
# and trainable LoRA parameters only.

# %%
parts = {k: v for k, v in estimate.items() if k.endswith("_gb") and k != "total_gb"}
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.barh(list(parts), list(parts.values()), color="#4c72b0")
ax.axvline(cfg.run.memory_limit_gb, color="red", ls="--", label=f"limit {cfg.run.memory_limit_gb} GB")
ax.set_xlabel("GB")
ax.set_title(f"estimated peak: {estimate['total_gb']:.2f} GB")
ax.legend()
plt.show()

# %%
failed = [c for c in checks if c.status == "FAIL"]
verdict = criteria.gate("setup", [{"check": c.name, "ok": c.status != "FAIL"} for c in checks]).verdict
summary = (f"{verdict}: {sum(c.status == 'PASS' for c in checks)} pass, {sum(c.status == 'WARN' for c in checks)} warn, "
           f"{len(failed)} fail; estimated peak {estimate['total_gb']:.2f} GB of {cfg.run.memory_limit_gb} GB")
run_folder.write_metrics(paths, "setup", {"verdict": verdict, "checks": [c.__dict__ for c in checks],
                                       "memory_estimate": estimate, "seed": cfg.run.seed})
reports.write_report_section(paths, "WEEK1_SETUP_REPORT.md", "setup",
    f"## Environment and resources (01_setup_check)\n\nSeed {cfg.run.seed}, params hash {cfg.params_hash()}.\n\n"
    + reports.markdown_table([c.__dict__ for c in checks], ["name", "status", "value", "expected", "advice"])
    + f"\n**{summary}**\n", title="Week 1 setup report")
reports.record_verdict(paths, "01_setup_check", verdict, summary)
print(summary)
for c in failed:
    print(f"  FAIL {c.name}: {c.value} (expected {c.expected}). {c.advice}")
if failed:
    # Stop the book here: later chapters would fail less clearly.
    raise RuntimeError(summary + " - see the table above for what to change")
