"""Chapter 07 for every model of a run: the same sample, tests and rules for the base and each trained defense
(DESIGN.md s.6, s.8). `verify_model` returns one model's results; `summary_rows` turns them into the chapter's
side-by-side table and the report's rows."""
from __future__ import annotations

import numpy as np

from causal_lib.core import progress
from causal_lib.config import Config
from causal_lib.defenses import registry
from causal_lib.defenses.load import load_model, records_for
from causal_lib.stats import invariance
from causal_lib.verification import dseparation, insertion_control, pac_bayes
from causal_lib.verification.discovery import discover, discovery_blocks

# The equivalence margins of the benign-insertion control are chosen per point of R on validation pairs with the base
# (choose_margin, insertion_control.validation_margin). The planted dependence of the power control, in SDs per coordinate:
PLANTED_STRENGTH = 0.3
# planted controls per model for the power beside each HSIC p-value (a rate with its interval, not one draw)
POWER_REPETITIONS = 20


def models_to_verify(cfg: Config, paths) -> list[str]:
    """The base ("none") and every trained defense of the run whose checkpoint exists, in registry order."""
    from causal_lib.defenses.load import model_dir

    trained = [d for d in registry.evaluated(cfg.train.defenses) if registry.get(d).trains]
    return ["none"] + [d for d in trained if model_dir(paths, d).exists()]


def label(defense: str) -> str:
    return "base" if defense == "none" else defense


def outputs_on_pairs(cfg: Config, paths, defense: str, pairs: list, full: bool = False) -> dict:
    """The model's evaluated outputs that chapter 07 needs: on the pairs' clean and injected rows (discovery's O),
    or, with full=True, the whole test split (evaluate_defense, cached for chapter 08), for the model whose SEP
    and ASR the chapter's criteria judge. Evaluating every model on the whole split is chapter 08's work."""
    from causal_lib.evaluation.run import evaluate_defense

    if full:
        return evaluate_defense(cfg, paths, defense)
    return evaluate_defense(cfg, paths, defense, records=[r for p in pairs for r in p])


def choose_margin(cfg: Config, paths, base_model, base_tokenizer) -> dict:
    """The equivalence margins, from the undefended base on validation pairs (the validation split's (clean,
    injected) pairs, at most stats.n_independence / 2, each with a benign twin in the base's tokens), at the points
    the criterion is judged at (every verification point but the one the causal loss trains); no test item is read.
    -> insertion_control.validation_margin's record, with the base's ratio at each point."""
    from causal_lib.data.records import load_split

    sc = cfg.stats
    pairs = dseparation.test_pairs(load_split(paths.data, "val"), sc.n_independence // 2, cfg.run.seed)
    if not pairs:
        raise ValueError(f"chapter 07: the validation split under {paths.data} holds no (clean, injected) pair to "
                         "choose the equivalence margin on; raise data.n_val and rebuild the data (chapter 02)")
    benign = [t[2] for t in insertion_control.control_triples(pairs, cfg.run.seed, tokenizer=base_tokenizer)]
    trained = invariance.point_name(cfg.model.repr_layer, cfg.model.repr_pooling)
    points = invariance.verification_points(_n_layers(base_model), (cfg.model.repr_layer, cfg.model.repr_pooling))
    view = lambda recs: records_for("none", recs, base_tokenizer)
    sample = dseparation.collect(base_model, base_tokenizer, pairs, cfg, benign=benign, view=view, points=points)
    ratios = {name: insertion_control.insertion_distance_ratio(rc, ri, sample.at_benign[name], None,
                                                               n_boot=sc.n_bootstrap, seed=cfg.run.seed)
              for name, (rc, ri) in sample.at.items() if name != trained and name in sample.at_benign}
    return {**insertion_control.validation_margin(ratios, len(pairs)),
            "base_ratios": {k: {f: r[f] for f in ("value", "lo", "hi", "n")} for k, r in ratios.items()}}


def verify_model(cfg: Config, paths, defense: str, pairs: list, benign: list, evaluation: dict,
                 base_model=None, margins: dict[str, float] | None = None) -> dict:
    """Every chapter-07 measurement of one model on the shared pairs and their benign twins.
    evaluation: the model's evaluate_defense result (its items give O for discovery, its summary SEP and ASR);
    base_model: the base's weights, the prior of the PAC-Bayes bound (None for the base itself); margins: point ->
    the equivalence margin there (choose_margin's "margins"; a point without one gets no equivalence verdict)."""
    sc = cfg.stats
    progress.report(f"verify: {label(defense)} ({len(pairs)} pairs and their benign twins)", force=True)
    model, tok = load_model(cfg, paths, defense)
    view = lambda recs: records_for(defense, recs, tok)
    trained = (cfg.model.repr_layer, cfg.model.repr_pooling)
    points = invariance.verification_points(_n_layers(model), trained)
    sample = dseparation.collect(model, tok, pairs, cfg, benign=benign, view=view, points=points)

    hsic = {"injected": dseparation.dseparation(sample, cfg),
            "benign": dseparation.dseparation(sample, cfg, insertion="benign"),
            "null control": dseparation.dseparation(sample, cfg, null_control=True),
            "planted control": dseparation.dseparation(sample, cfg, planted_strength=PLANTED_STRENGTH)}
    # pairs per point; p cannot fall below 1 / (n_permutations + 1), so the curve shows where it reaches that floor
    sizes = [s for s in (10, 25, 50, 100, 250) if s < len(pairs)] + [len(pairs)]
    curve = {"injected": dseparation.p_value_curve(sample, cfg, sizes),
             "benign": dseparation.p_value_curve(sample, cfg, sizes, insertion="benign")}
    margins = margins or {}
    # at the trained point: reported, never judged (the causal loss optimised it, and it has no margin)
    ratio = insertion_control.insertion_distance_ratio(sample.r_clean, sample.r_injected, sample.r_benign,
                                                       None, n_boot=sc.n_bootstrap, seed=cfg.run.seed)
    probes = {"instruction inserted": insertion_control.probe_accuracy(sample.r_clean, sample.r_injected, seed=cfg.run.seed),
              "benign text inserted": insertion_control.probe_accuracy(sample.r_clean, sample.r_benign, seed=cfg.run.seed)}
    rep = {"causal_stability": invariance.causal_stability(sample.r_clean, sample.r_injected, sc.n_bootstrap, cfg.run.seed),
           "epsilon_causal": invariance.epsilon_causal(sample.tv, sc.n_bootstrap, cfg.run.seed),
           "epsilon_causal_benign": invariance.epsilon_causal(sample.tv_benign, sc.n_bootstrap, cfg.run.seed),
           "sep": evaluation["summary"].get("sep"), "asr": evaluation["summary"]["asr"]}

    injected_seen = view([p[1] for p in pairs])
    correct = pac_bayes.greedy_correct(model, tok, injected_seen, cfg)
    bounds = {"test_set": pac_bayes.test_set_bound(int((~correct).sum()), len(correct))}
    if base_model is not None:
        bounds["pac_bayes"] = pac_bayes.pac_bayes(model, base_model, tok, injected_seen, cfg, correct=correct)

    items = {r["id"]: r for r in evaluation["items"]}
    recs = [p[0] for p in pairs] + [p[1] for p in pairs]
    ok = np.array([bool(items[r.id]["correct"]) if r.id in items else False for r in recs])
    hij = np.array([bool(items[r.id]["success"]) if r.id in items and r.kind == "injected" else False for r in recs])
    disc = discover(discovery_blocks(sample, ok, hij), defended=(defense != "none"), cfg=cfg)
    at_points = point_results(sample, invariance.point_name(*trained), margins, sc.n_bootstrap, cfg.run.seed)
    return {"defense": defense, "model": label(defense), "n_pairs": len(pairs), "hsic": hsic, "p_curve": curve,
            "equivalence": ratio, "probes": probes, "representation": rep, "bounds": bounds, "discovery": disc,
            "points": at_points, "worst_untrained": worst_untrained(at_points),
            "planted_power": dseparation.planted_power(sample, cfg, PLANTED_STRENGTH, POWER_REPETITIONS)}


def _n_layers(model) -> int:
    from causal_lib.models.load import base_model_of

    return int(base_model_of(model).config.num_hidden_layers)


def point_results(sample, trained: str, margins: dict[str, float], n_boot: int, seed: int) -> dict:
    """At every point of the sample (Sample.at): the distance ratio against the benign twins with its verdict, and
    the causal stability; `optimised` marks the point the causal loss trains (its numbers cannot speak for it)."""
    out = {}
    for name, (rc, ri) in sample.at.items():
        eq = (insertion_control.insertion_distance_ratio(rc, ri, sample.at_benign[name], margins.get(name), n_boot=n_boot,
                                                         seed=seed) if name in sample.at_benign else None)
        out[name] = {"optimised": name == trained, "equivalence": eq,
                     "causal_stability": invariance.causal_stability(rc, ri, n_boot, seed)}
    return out


def worst_untrained(points: dict) -> dict | None:
    """The untrained point with a margin (one where the base moved R more for an injection on validation) whose
    distance ratio reaches farthest past its margin (upper end of the interval minus the margin): what the insertion
    criterion judges, so that a model cannot pass it at the one vector its loss pulled together. None: no such point."""
    cands = [(name, p) for name, p in points.items()
             if not p["optimised"] and p["equivalence"] and p["equivalence"].get("margin") is not None]
    if not cands:
        return None
    name, p = max(cands, key=lambda x: x[1]["equivalence"]["hi"] - x[1]["equivalence"]["margin"])
    return {"point": name, **p["equivalence"]}


def point_rows(results: dict) -> list[dict]:
    """One row per model and point: the distance ratio [95%] and its verdict, the causal stability; the point the
    causal loss optimises is labelled so."""
    rows = []
    for r in results.values():
        for name, p in r.get("points", {}).items():
            eq, cs = p["equivalence"], p["causal_stability"]
            rows.append({"model": r["model"], "point": name + (" (optimised by the causal loss)" if p["optimised"] else ""),
                         "distance ratio inj/benign [95%]": f"{eq['value']:.2f} [{eq['lo']:.2f}, {eq['hi']:.2f}]" if eq else "",
                         "margin (validation)": f"{eq['margin']:.3f}" if eq and eq.get("margin") is not None else "none",
                         "equivalence": eq["verdict"] if eq else "",
                         "stability [95%]": f"{cs['value']:.3f} [{cs['lo']:.3f}, {cs['hi']:.3f}]"})
    return rows


def power_controls(results: dict, alpha: float = 0.05, point: str | None = None) -> dict:
    """The verification's own checks, from every model's results: the base must be shown above the margin (its
    whole interval above it, verdict "larger"; an inconclusive base, whose interval straddles the margin, shows
    no power: the test has not told a model that obeys injections from one that ignores them), and on every model the HSIC
    test must reject the planted dependence and not reject the shuffled null built from its real R. The null is
    judged at alpha / (number of models) (Bonferroni): at alpha itself one of four true nulls would reject in
    ~19% of runs, a false alarm about the test's size."""
    # the base's ratio at the point the criterion is judged at (`point`: an untrained one with a margin); without
    # such a point nothing is judged, and the base has nothing to be shown above ("no margin")
    none = results.get("none", {})
    base = ((none.get("points", {}).get(point) or {}).get("equivalence") if point else None) or {}
    planted = all(r["hsic"]["planted control"]["rejects"] for r in results.values())
    null_ok = all(r["hsic"]["null control"]["p_value"] > alpha / max(len(results), 1) for r in results.values())
    return {"base_above_margin": bool(base) and base.get("verdict") == "larger",
            "base_verdict": base.get("verdict") if base else "no margin",
            "base_ratio": {k: base.get(k) for k in ("value", "lo", "hi", "margin")} if base else None,
            "base_point": point if base else None,
            "planted_rejects_everywhere": planted,
            "null_not_rejected_everywhere": null_ok}


def summary_rows(results: dict, alpha: float = 0.05) -> list[dict]:
    """One row per model: HSIC p (n) for the injection, the smallest n of the p-value curve from which it
    rejects at alpha, the effect sizes for the injection and the benign insertion, the equivalence ratio and
    verdict, probe accuracies, epsilon_causal with its tail, causal stability, the bounds, the graph."""
    rows = []
    for r in results.values():
        eq, h, rep, b = r["equivalence"], r["hsic"], r["representation"], r["bounds"]
        eps, match = rep["epsilon_causal"], r["discovery"]["match"]
        pb = b.get("pac_bayes")
        rows.append({
            "model": r["model"],
            "HSIC p inj (n)": f"{h['injected']['p_value']:.3g} ({h['injected']['n']})",
            # a non-rejection says nothing without the power at this n and d (planted before the reduction)
            "HSIC power (planted)": _rate_text(r["planted_power"]) if r.get("planted_power") else "",
            "rejects from n": _first_rejecting_n(r["p_curve"]["injected"], alpha),
            "CKA inj / benign": f"{h['injected']['effect_size']:.3f} / {h['benign']['effect_size']:.3f}",
            "distance ratio inj/benign [95%]": f"{eq['value']:.2f} [{eq['lo']:.2f}, {eq['hi']:.2f}]",
            "equivalence": eq["verdict"],
            "probe inj acc": _rate_text(r["probes"]["instruction inserted"]),
            "probe benign acc": _rate_text(r["probes"]["benign text inserted"]),
            "eps_causal [95%]": f"{eps['value']:.3f} [{eps['lo']:.3f}, {eps['hi']:.3f}]",
            "eps benign": f"{rep['epsilon_causal_benign']['value']:.3f}",
            "eps p90 / max": f"{eps.get('p90', float('nan')):.2f} / {eps.get('max', float('nan')):.2f}",
            "TV > 0.5": _rate_text(eps["share_tv_over_half"]) if "share_tv_over_half" in eps else "",
            "stability": f"{rep['causal_stability']['value']:.3f}",
            "error bound (test set)": f"{b['test_set']['bound']:.3f}",
            "PAC-Bayes": ("vacuous" if pb.get("vacuous") else f"{pb['bound']:.3f}") if pb else "(prior = model)",
            "graph": f"{match['score']:.2f}, hard {'pass' if match['hard_pass'] else 'fail'}",
        })
    return rows


def plot_controls(results: dict, alpha: float):
    """Three panels, one point per model: the distance ratio with its interval at the trained point (reported, not
    judged: the margins are per untrained point, in the points table), the probes' accuracies against chance, and the HSIC p-value of R _||_ Z | S against n (with alpha)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    names = [r["model"] for r in results.values()]
    eq = [r["equivalence"] for r in results.values()]
    axes[0].errorbar(names, [e["value"] for e in eq], yerr=_yerr(eq, "value"), fmt="o", capsize=4)
    axes[0].axhline(1.0, color="grey", ls=":", lw=0.8, label="as far as a benign sentence")
    axes[0].set_title("||dR|| injection / benign insertion (trained point)")
    axes[0].legend(fontsize=8)
    for j, probe in enumerate(("instruction inserted", "benign text inserted")):
        acc = [r["probes"][probe] for r in results.values()]
        axes[1].errorbar([k + (j - 0.5) * 0.2 for k in range(len(names))], [a["rate"] for a in acc],
                         yerr=_yerr(acc, "rate"), fmt="o", capsize=3, label=probe)
    axes[1].set_xticks(range(len(names)), names)
    axes[1].axhline(0.5, color="grey", ls=":", label="chance")
    axes[1].set_title("linear probe accuracy (held-out documents)")
    axes[1].legend(fontsize=8)
    for name, r in zip(names, results.values()):
        c = r["p_curve"]["injected"]
        axes[2].plot([x["n"] for x in c], [x["p_value"] for x in c], marker="o", label=name)
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].axhline(alpha, color="grey", ls="--", label=f"alpha {alpha}")
    axes[2].set_xlabel("n rows")
    axes[2].set_title("HSIC p-value of R _||_ Z | S against n")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_graphs(results: dict):
    """Each model's learned graph against the expected one (discovery_plots.draw_graph), side by side."""
    import matplotlib.pyplot as plt

    from causal_lib.verification.discovery_plots import draw_graph

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results.values()):
        disc = r["discovery"]
        draw_graph(disc["graph"], ax=ax, expected=disc["expected"])
        ax.set_title(f"{r['model']}: match {disc['match']['score']:.2f}, "
                     f"hard {'pass' if disc['match']['hard_pass'] else 'fail'}")
    return fig


def _first_rejecting_n(curve: list[dict], alpha: float) -> str:
    """The smallest n of the curve from which every larger n rejects too ("none" when the largest does not)."""
    n = None
    for point in reversed(curve):
        if point["p_value"] > alpha:
            break
        n = point["n"]
    return str(n) if n is not None else "none"


def _yerr(rows: list[dict], point: str) -> list[list[float]]:
    return [[r[point] - r["lo"] for r in rows], [r["hi"] - r[point] for r in rows]]


def _rate_text(r: dict) -> str:
    return f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}]"


def metrics_record(results: dict, model_name: str, calibration: dict, controls: dict, table: list, verdict: str,
                   seed: int, margin: dict | None = None) -> dict:
    """metrics/verification.json: every model's results (JSON-able), keyed by defense name, the equivalence margins
    (choose_margin's record) and the verdict."""
    def discovery(d):
        return {"edges": d["graph"].edges(), "expected": d["expected"].edges(), "match": d["match"],
                "stability": d["stability"].to_dict()}
    models = {k: {**{f: r[f] for f in ("model", "n_pairs", "hsic", "p_curve", "equivalence", "probes",
                                       "representation", "bounds")}, "discovery": discovery(r["discovery"]),
                  "points": r.get("points", {}), "worst_untrained": r.get("worst_untrained"),
                  "planted_power": r.get("planted_power")}
              for k, r in results.items()}
    return {"model": model_name, "seed": seed, "calibration": calibration, "power_controls": controls,
            "margin": margin, "models": models,
            # the views chapter 09 reads (book.phase_report)
            "representation": {k: r["representation"] for k, r in results.items()},
            "insertion_equivalence": {k: r["equivalence"] for k, r in results.items()},
            "insertion_equivalence_untrained": {k: r.get("worst_untrained") for k, r in results.items()},
            "discovery": {k: m["discovery"] for k, m in models.items()},
            "bounds": {k: r["bounds"] for k, r in results.items()},
            "table": table, "verdict": verdict}
