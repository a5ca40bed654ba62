# %% [markdown]
# # 09 · Phase 2 report
#
# The plan's success criteria as tables of measured value, target and PASS/FAIL, read from the metrics JSON
# the earlier chapters wrote: the research targets (must-achieve metrics with static and adaptive ASR, the
# stand-in base, the causal method's targets, SEP and S-utility on one common probe set) and, counted apart,
# the engineering checks (time, memory, no NaN). Every target and rule is in `causal_lib.core.criteria` (a
# rate passes only when its whole 95% interval meets the target, else FAIL or INCONCLUSIVE; NOT MEASURED is
# not met; a check that cannot fail is not listed). Then the look-alike errors split into over-defense and
# fragility, the failure cases, and the two closing reports: `PHASE2_COMPLETION_REPORT.md` and `PROJECT_STATUS.md`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from causal_lib.core import run_folder
from causal_lib.core import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.book.phase_report import comparison_lead, failure_cases, lookalike_rows, success_criteria

cfg, paths = run_folder.start(params_file, overrides)
display(Markdown(comparison_lead(paths) or "chapter 08 has not run: no comparison to lead with"))
rows = success_criteria(paths, memory_limit_gb=cfg.run.memory_limit_gb, book_budget_s=60 * cfg.run.time_budget_min)
research, engineering = criteria.split_rows(rows)
print("research targets:", criteria.count_text(research))
display(pd.DataFrame(research)[report_text.CRITERIA_COLUMNS])
print("engineering checks:", criteria.count_text(engineering))
pd.DataFrame(engineering)[report_text.CRITERIA_COLUMNS]

# %% [markdown]
# ## Look-alike errors: over-defense and fragility to benign text
# Blocked + refusal is over-defense; an echo of the note, another span of the document or another wrong answer is
# fragility. Each is paired with the look-alike's clean twin.

# %%
look_rows = lookalike_rows(paths)
pd.DataFrame(look_rows)

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
run_folder.write_metrics(paths, "phase2", {"criteria": rows, "failures": failures, "status": status, "seed": cfg.run.seed,
                                           "research_targets": criteria.count_text(research),  # engineering: machine
                                           "lookalike_errors": look_rows})
reports.write_report(paths, "PHASE2_COMPLETION_REPORT.md", report_text.phase2_completion_report(
    paths.root.name, cfg.params_hash(), cfg.run.seed, status, rows, failures, look_rows, lead=comparison_lead(paths)))
reports.write_report(paths, "PROJECT_STATUS.md", report_text.project_status_report(
    paths.root.name, cfg.params_hash(), cfg.run.seed, status, rows, chapters))
reports.record_verdict(paths, "09_phase2_report", status, report_text.criteria_summary(rows))
print(status, report_text.criteria_summary(rows))
