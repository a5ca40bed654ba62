# %% [markdown]
# # 09 · Phase 2 report
#
# The plan's success criteria — must-achieve metrics, targets and quality indicators (training time,
# memory, no NaN) — as a table of measured value, target and PASS/FAIL, read from the metrics JSON the
# earlier chapters wrote. Every target and rule is in `causal_lib.book.criteria` (a rate passes only
# when its whole 95% interval meets the target, else FAIL or INCONCLUSIVE; a check that cannot fail is not listed). Then the failure cases, with
# examples, and the two closing reports: `PHASE2_COMPLETION_REPORT.md` and `PROJECT_STATUS.md`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.book import run_folder
from causal_lib.book import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.book.phase_report import failure_cases, success_criteria

cfg, paths = run_folder.start(params_file, overrides)
rows = success_criteria(paths, memory_limit_gb=cfg.run.memory_limit_gb, book_budget_s=60 * cfg.run.time_budget_min)
table = pd.DataFrame(rows)[report_text.CRITERIA_COLUMNS]
table

# %%
chapters = json.loads((paths.metrics / "chapters.json").read_text()) if (paths.metrics / "chapters.json").exists() else {}
if chapters:
    ch = pd.DataFrame([{"chapter": k, **v} for k, v in chapters.items()])
    fig, axes = plt.subplots(1, 2, figsize=(14, 3.5))
    axes[0].barh(ch["chapter"], ch["wall_s"] / 60); axes[0].set_xlabel("minutes"); axes[0].set_title("wall time per chapter")
    axes[1].barh(ch["chapter"], ch["peak_rss_gb"]); axes[1].axvline(cfg.run.memory_limit_gb, color="red", ls="--")
    axes[1].set_xlabel("GB"); axes[1].set_title("peak resident memory per chapter")
    plt.tight_layout(); plt.show()

# %% [markdown]
# ## Failure cases

# %%
failures = failure_cases(paths)
for name, examples in failures.items():
    print(f"\n{name}: {len(examples)} example(s)")
    for r in examples:
        print("  ", r)

# %%
status = criteria.phase_status(rows)
run_folder.write_metrics(paths, "phase2", {"criteria": rows, "failures": failures, "status": status, "seed": cfg.run.seed})
reports.write_report(paths, "PHASE2_COMPLETION_REPORT.md", report_text.phase2_completion_report(
    paths.root.name, cfg.params_hash(), cfg.run.seed, status, rows, failures))
reports.write_report(paths, "PROJECT_STATUS.md", report_text.project_status_report(
    paths.root.name, cfg.params_hash(), cfg.run.seed, status, rows, chapters))
reports.record_verdict(paths, "09_phase2_report", status, report_text.criteria_summary(rows))
print(status, report_text.criteria_summary(rows))
