"""Chapter 09: the plan's success criteria as measured value, target and PASS/FAIL, from the metrics JSON
that the earlier chapters wrote (nothing is recomputed or assumed here)."""
from __future__ import annotations

import json
from causal_lib.book import criteria
from causal_lib.book.run_folder import RunPaths


def _read(paths: RunPaths, name: str) -> dict | None:
    p = paths.metrics / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def success_criteria(paths: RunPaths, model: str = "causal", memory_limit_gb: float | None = None,
                     book_budget_s: float | None = None) -> list[dict]:
    """The plan's criteria, each judged by causal_lib.book.criteria (targets and rules live there).
    memory_limit_gb / book_budget_s: the run's params, for the two criteria whose threshold they set."""
    comp, ver = _read(paths, "comparison") or {}, _read(paths, "verification") or {}
    s = comp.get("summaries", {}).get(model, {})
    base = comp.get("summaries", {}).get("none", {})
    rep = ver.get("representation", {}).get(model, {})
    rows = []

    ben, bb = s.get("benign_accuracy"), base.get("benign_accuracy")
    diff = ben["rate"] - bb["rate"] if ben and bb and ben.get("rate") is not None and bb.get("rate") is not None else None
    rows.append(criteria.row("asr", s.get("asr")))
    rows.append(criteria.row("asr_held_out", s.get("asr_by_split", {}).get("held_out")))
    rows.append(criteria.row("benign_accuracy", ben))
    rows.append(criteria.row("benign_vs_base", diff, measured=f"{criteria.measured_text('benign_accuracy', ben)} vs base "
                                                              f"{criteria.measured_text('benign_accuracy', bb)}"))
    if base.get("asr") is not None:
        # the stand-in the comparison stands on (chapter 04's targets, judged on chapter 08's evaluation of the base):
        # a defense's low ASR means less on a base that was never vulnerable, or never accurate, to begin with
        from causal_lib.book.report_text import base_rows

        rows += list(base_rows(base).values())
    rows.append(criteria.row("causal_stability", rep.get("causal_stability")))
    rows.append(criteria.row("epsilon_causal", rep.get("epsilon_causal")))
    rows.append(criteria.row("sep", s.get("sep")))
    eq = ver.get("insertion_equivalence", {}).get(model)
    power = bool(ver.get("power_controls", {}).get("base_above_margin"))
    rows.append(criteria.row("insertion_equivalence", {**eq, "power": power} if eq else None,
                             measured=f"{eq['value']:.2f} [{eq['lo']:.2f}, {eq['hi']:.2f}] ({eq['verdict']}); base shown "
                                      f"above the margin: {power}" if eq else None))
    g = ver.get("discovery", {}).get(model, {}).get("match")
    rows.append(criteria.row("graph_match", g, measured=f"{g['score']:.2f}; hard checks pass: {bool(g.get('hard_pass'))}"
                             if g else None))

    chapters = _read(paths, "chapters") or {}
    total = sum(c.get("wall_s", 0) for c in chapters.values()) if chapters else None
    rows.append(criteria.row("book_wall_time", total, threshold=book_budget_s))
    peak = max((c.get("peak_rss_gb", 0) for c in chapters.values()), default=None)
    rows.append(criteria.row("peak_memory", peak, threshold=memory_limit_gb))
    trains = {p.stem[len("train_"):]: json.loads(p.read_text()) for p in paths.metrics.glob("train_*.json")}
    rows.append(criteria.row("nan_free", all(v.get("nan_free") for v in trains.values()) if trains else None,
                             measured=", ".join(f"{k}: {v.get('nan_free')}" for k, v in trains.items()) or None))
    # no "validation improving" row: it compared epoch 1 with the maximum over epochs of the same metric,
    # a check that cannot fail (see causal_lib.book.criteria)
    return rows


def failure_cases(paths: RunPaths, model: str = "causal", k: int = 5) -> dict:
    """Examples of what still goes wrong: successful attacks, wrong benign answers, over-defense."""
    p = paths.metrics / f"eval_{model}_items.jsonl"
    items = [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    pick = lambda pred: [{c: it.get(c) for c in ("id", "kind", "family", "goal", "position", "output")}
                         for it in items if pred(it)][:k]
    return {"successful_attacks": pick(lambda it: it["kind"] == "injected" and it.get("success")),
            "benign_errors": pick(lambda it: it["kind"] == "clean" and not it.get("correct")),
            # a look-alike whose clean twin was answered: the note caused the error (an ordinary error otherwise)
            "over_defense": pick(lambda it: it["kind"] == "lookalike" and not it.get("correct")
                                 and it.get("twin_correct") is not False)}
