# %% [markdown]
# # 03 · Dry run
#
# A few optimizer steps on a small sample before the real training: the step runs without running out
# of memory, the loss falls, the peak memory stays under the plan's limit, and a checkpoint saves and
# reloads to bit-identical outputs. The verdict, READY TO TRAIN or the blockers, goes into
# `WEEK1_SETUP_REPORT.md`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}

# %%
import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.core import run_folder
from causal_lib.core import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.data.build import ensure_dataset
from causal_lib.training.dry_run import dry_run

cfg, paths = run_folder.start(params_file, overrides)
ensure_dataset(cfg, paths)
result = dry_run(cfg, paths)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(1, len(result["loss_curve"]) + 1), result["loss_curve"], marker="o")
ax.set_xlabel("step"); ax.set_ylabel("training loss (L_task)")
ax.set_title(f"dry run: {result['steps']} steps on {result['samples']} samples")
plt.show()

# %%
checks = [
    {"check": "steps ran without OOM or NaN", "ok": result["steps"] == cfg.train.dry_run_steps and result["nan_free"],
     "value": f"{result['steps']} steps, nan-free {result['nan_free']}"},
    {"check": "loss falls", "ok": result["loss_after"] < result["loss_before"],
     "value": f"{result['loss_before']:.3f} -> {result['loss_after']:.3f}"},
    {"check": "peak memory under the limit",
     "ok": criteria.passes("peak_memory", result["peak_memory_gb"], threshold=cfg.run.memory_limit_gb),
     "value": f"{result['peak_memory_gb']:.2f} GB of {cfg.run.memory_limit_gb} GB", "machine": True},
    {"check": "checkpoint round trip identical", "ok": result["checkpoint_identical"], "value": result["checkpoint"]},
]
for c in checks:
    c["status"] = reports.pass_fail(c["ok"])
judged = criteria.gate("dry_run", checks)
ready, verdict = judged.ready, judged.text()
run_folder.write_metrics(paths, "dry_run", {**result, "checks": checks, "verdict": verdict, "seed": cfg.run.seed})
reports.write_report_section(paths, "WEEK1_SETUP_REPORT.md", "dry_run", report_text.dry_run_section(result, checks, verdict),
                             title="Week 1 setup report")
reports.record_verdict(paths, "03_dry_run", "PASS" if ready else "FAIL", verdict)
pd.DataFrame(checks)[["check", "status", "value"]]

# %%
print(verdict)
if not ready:
    raise RuntimeError(verdict + " - the advice: lower model.max_seq_length or train.batch_size, "
                       "enable model.gradient_checkpointing, lower train.learning_rate")
