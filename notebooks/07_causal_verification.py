# %% [markdown]
# # 07 · Causal verification that can fail
#
# Does the injected instruction Z still reach the model's representation R, and through it the output?
# This chapter tests it on the causal model and on the undefended base, with tests that are shown to
# have power:
#
# 1. **Calibration** of the HSIC test on synthetic data with known truth: type-I error at α = 0.05 and
#    power against a planted dependence, at the same n and d as the real test.
# 2. **d-separation**: R ⊥ Z | S (stratified-permutation HSIC, Gaussian kernel with the median heuristic,
#    R reduced to `stats.repr_dim` principal components). The same test must **reject** on the undefended
#    base and on a planted-dependence control at the same n — otherwise "not rejected" means nothing.
# 3. **ε_causal**, **causal stability** and **SEP separation**, each with a 95% interval.
# 4. **Bounds**: Clopper-Pearson upper bound on ASR; a PAC-Bayes-kl bound on the error on injected inputs.
# 5. **Causal discovery**: PC over S, D, Z, R, O with a block CI test conditioning on the whole R; the
#    learned graph against the expected one, with bootstrap stability.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
model_name = "causal"

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from causal_lib.book import run_folder
from causal_lib.book import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.defenses.load import load_model
from causal_lib.evaluation.run import evaluate_defense
from causal_lib.data.records import load_split
from causal_lib.verification.discovery import discover, discovery_blocks, draw_graph
from causal_lib.verification.hsic import calibrate, conditional_hsic_test
from causal_lib.verification import dseparation
from causal_lib.verification import pac_bayes
from causal_lib.verification import invariance

cfg, paths = run_folder.start(params_file, overrides)
sc = cfg.stats
test = load_split(paths.data, "test")
pairs = dseparation.test_pairs(test, sc.n_independence // 2, cfg.run.seed)  # n_independence rows: clean + injected twins
models = {name: load_model(cfg, paths, d) for name, d in (("base", "none"), (model_name, model_name))}
samples = {name: dseparation.collect(m, tok, pairs, cfg) for name, (m, tok) in models.items()}
print(f"{len(pairs)} test pairs -> n = {2 * len(pairs)} rows, R reduced to d = {sc.repr_dim} PCs")

# %% [markdown]
# ## 1. Calibration of the test at the same n and d

# %%
n_rows, d = 2 * len(pairs), sc.repr_dim
n_strata = len({p[0].task for p in pairs})
n_classes = len({p[1].family for p in pairs}) + 1
# the same test as section 2: rows are the clean and injected twins of pairs, Z permuted within pairs
test_fn = lambda R, Z, S, G: conditional_hsic_test(R, Z, S, n_permutations=sc.n_permutations, seed=0, groups=G)
cal = calibrate(test_fn, n=n_rows, d=d, repetitions=sc.calibration_repetitions, alpha=sc.alpha, seed=cfg.run.seed,
                effect=0.3, n_classes=n_classes, n_strata=max(n_strata, 2), paired=True)
calibration = cal.to_dict()
pd.DataFrame([{"quantity": "type-I error (independent)", **cal.type1.to_dict()},
              {"quantity": "power (planted dependence, effect 0.3 SD)", **cal.power.to_dict()}])

# %% [markdown]
# ## 2. d-separation: R ⊥ Z | S, with its power controls

# %%
dsep = {name: dseparation.dseparation(s, cfg) for name, s in samples.items()}
dsep["planted control"] = dseparation.dseparation(samples[model_name], cfg, planted_strength=0.3)
dsep_df = pd.DataFrame([{"model": k, **v} for k, v in dsep.items()])
dsep_df[["model", "n", "d", "statistic", "effect_size", "p_value", "rejects", "method"]]

# %%
power_ok = bool(dsep["base"]["rejects"] and dsep["planted control"]["rejects"])
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(dsep_df["model"], dsep_df["effect_size"], color=["#c44e52" if r else "#55a868" for r in dsep_df["rejects"]])
for i, p in enumerate(dsep_df["p_value"]):
    ax.text(i, dsep_df["effect_size"][i], f"p={p:.3g}", ha="center", va="bottom")
ax.set_ylabel("HSIC effect size (CKA)"); ax.set_title("R ⊥ Z | S  (red = rejected at α=0.05)")
plt.show()

# %% [markdown]
# ## 3. ε_causal, causal stability, separation

# %%
rep = {}
for name, s in samples.items():
    rep[name] = {"causal_stability": invariance.causal_stability(s.r_clean, s.r_injected, sc.n_bootstrap, cfg.run.seed),
                 "epsilon_causal": invariance.epsilon_causal(s.tv, sc.n_bootstrap, cfg.run.seed)}
evals = {"base": evaluate_defense(cfg, paths, "none"), model_name: evaluate_defense(cfg, paths, model_name)}
for name, ev in evals.items():
    rep[name]["sep"] = ev["summary"]["sep"]
    rep[name]["asr"] = ev["summary"]["asr"]
rows = []
for name, r in rep.items():
    for metric in ("causal_stability", "epsilon_causal", "sep", "asr"):
        v = r[metric]
        rows.append({"model": name, "metric": metric, "value": v.get("value", v.get("rate")), "lo": v["lo"], "hi": v["hi"],
                     "target": criteria.target_text(metric, stretch=False), "status": criteria.judge(metric, v)})
metrics_df = pd.DataFrame(rows)
fig, axes = plt.subplots(1, 4, figsize=(16, 3))
for ax, (metric, g) in zip(axes, metrics_df.groupby("metric", sort=False)):
    ax.errorbar(g["model"], g["value"], yerr=[g["value"] - g["lo"], g["hi"] - g["value"]], fmt="o", capsize=4)
    ax.set_title(metric); ax.set_ylim(-0.05, 1.05)
plt.tight_layout(); plt.show()
metrics_df

# %% [markdown]
# ## 4. Bounds

# %%
m, tok = models[model_name]
injected = [p[1] for p in pairs]
pac = pac_bayes.pac_bayes(m, models["base"][0], tok, injected, cfg)
asr = rep[model_name]["asr"]
bounds = {"asr_clopper_pearson_upper": asr["hi"], "asr": asr, "pac_bayes": pac}
pd.DataFrame([{"bound": "ASR, Clopper-Pearson 95% upper", "value": asr["hi"]},
              {"bound": "injected-input error, PAC-Bayes-kl (95%)", "value": pac["bound"]},
              {"bound": "  deterministic error (for reference)", "value": pac["deterministic_error"]},
              {"bound": f"  KL at the chosen sigma {pac['sigma']}", "value": pac["kl"]}])

# %% [markdown]
# ## 5. Causal discovery over S, D, Z, R, O
# One proxy column per node for PC; the block test (partial canonical correlation, multinomial-logit for
# the one-hot output O) reads the full blocks, conditioning on the whole (PCA-reduced) R.

# %%
discovery = {}
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, name in zip(axes, ("base", model_name)):
    items = {r["id"]: r for r in evals[name]["items"]}
    s = samples[name]
    recs = [p[0] for p in s.pairs] + [p[1] for p in s.pairs]
    ok = np.array([bool(items[r.id]["correct"]) if r.id in items else False for r in recs])
    hij = np.array([bool(items[r.id]["success"]) if r.id in items and r.kind == "injected" else False for r in recs])
    blocks = discovery_blocks(s, ok, hij, k=min(8, sc.repr_dim))
    res = discover(blocks, defended=(name != "base"), cfg=cfg)
    discovery[name] = res
    draw_graph(res["graph"], ax=ax, expected=res["expected"])
    ax.set_title(f"{name}: match {res['match']['score']:.2f}, hard checks {'pass' if res['match']['hard_pass'] else 'fail'}")
plt.show()
pd.DataFrame([{"model": k, "edges": ", ".join(v["graph"].edges()), "score": v["match"]["score"],
               "hard_pass": v["match"]["hard_pass"], "bootstrap mean score": v["stability"].mean_score}
              for k, v in discovery.items()])

# %%
# every target and rule below is in causal_lib.book.criteria: a rate or estimate passes only when its whole
# 95% interval meets the target (for ASR: the Clopper-Pearson upper bound of section 4), INCONCLUSIVE otherwise
cs, eps, sep = rep[model_name]["causal_stability"], rep[model_name]["epsilon_causal"], rep[model_name]["sep"]
match = discovery[model_name]["match"]
criteria_rows = {
    "hsic_type1": criteria.row("hsic_type1", calibration["type1"]),
    "hsic_power": criteria.row("hsic_power", power_ok, measured=f"base p={dsep['base']['p_value']:.3g}, "
                               f"planted p={dsep['planted control']['p_value']:.3g}"),
    "dseparation": criteria.row("dseparation", {**dsep[model_name], "power": power_ok},
                                measured=f"p={dsep[model_name]['p_value']:.3g}, effect {dsep[model_name]['effect_size']:.3g}"),
    "causal_stability": criteria.row("causal_stability", cs),
    "epsilon_causal": criteria.row("epsilon_causal", eps),
    "sep": criteria.row("sep", sep),
    "graph_match": criteria.row("graph_match", match, measured=f"{match['score']:.2f} (base "
                                f"{discovery['base']['match']['score']:.2f}); hard checks pass: {match['hard_pass']}"),
    "asr": criteria.row("asr", asr),
}
table = [{c: r[c] for c in ("criterion", "measured", "target", "status")} for r in criteria_rows.values()]
verdict_df = pd.DataFrame(table)
# the type-I calibration is judged only from the criterion's minimum of repetitions on; below it, it is NOT
# MEASURED, and only it may be
verdict = criteria.overall(criteria_rows, optional=("hsic_type1",))
discovery_rows = [{"model": k, "edges": ", ".join(v["graph"].edges()), "score": v["match"]["score"],
                   "hard_pass": v["match"]["hard_pass"], "bootstrap_mean": v["stability"].mean_score}
                  for k, v in discovery.items()]
run_folder.write_metrics(paths, "verification", {
    "model": model_name, "n_rows": n_rows, "d": d, "calibration": calibration, "dseparation": dsep,
    "representation": rep, "bounds": bounds,
    "discovery": {k: {"edges": v["graph"].edges(), "match": v["match"], "stability": v["stability"].to_dict()} for k, v in discovery.items()},
    "table": table, "verdict": verdict, "seed": cfg.run.seed})
reports.write_report(paths, "WEEK3_VERIFICATION_REPORT.md", report_text.verification_report(
    model_name, cfg.run.seed, n_rows, len(pairs), d, table, dsep, cal, asr, pac, discovery_rows, verdict))
reports.record_verdict(paths, "07_causal_verification", verdict, report_text.criteria_summary(table))
verdict_df
