"""Certificates on an error rate: Langford's test-set bound (`test_set_bound`, the headline: a binomial tail
inversion, valid because the model is fixed before the test items are drawn), the PAC-Bayes kl and McAllester
bounds, the Gaussian-posterior KL between trained and base weights, a union bound over a grid of posterior
scales with the Monte-Carlo error of the Gibbs estimate accounted for (`pac_bayes_grid_bound(samples=m)`), and
`pac_bayes`, which bounds the error (output != O*) of a trained model on injected inputs both ways.

Vacuous and informative (one definition, used by every bound here): the trivial certificate on an error rate is
1.0 (an error rate never exceeds it), so a bound is *vacuous* when it is no better than that, bound >= 1 - 1e-9
(`is_vacuous`; the tolerance absorbs the root finder's 1e-15 cap below 1). A non-vacuous bound may still say
little: it is *informative* when it is below 0.5 (`is_informative`), i.e. it certifies that the model is right
on most inputs, the weakest statement a reader can act on."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
from scipy import stats as sps
from scipy.optimize import brentq

from causal_lib.config import Config
from causal_lib.stats.invariance import encode_batch


def binary_kl(q: float, p: float) -> float:
    """kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)), Bernoulli KL, with 0 ln 0 = 0."""
    p = min(max(p, 1e-300), 1 - 1e-16)
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def kl_inverse_upper(q: float, c: float) -> float:
    """sup {p in [q, 1] : kl(q || p) <= c}, by brentq (kl(q || .) increases on [q, 1])."""
    if c <= 0:
        return float(q)
    hi = 1.0 - 1e-15
    if binary_kl(q, hi) <= c:
        return 1.0
    return float(brentq(lambda p: binary_kl(q, p) - c, q, hi, xtol=1e-14, rtol=1e-12))


VACUOUS_TOLERANCE = 1e-9  # kl_inverse_upper stops 1e-15 below 1: such a bound is the trivial one
INFORMATIVE_BELOW = 0.5


def is_vacuous(bound: float) -> bool:
    """No better than the trivial certificate "error rate <= 1" (see the module docstring)."""
    return bool(bound >= 1.0 - VACUOUS_TOLERANCE)


def is_informative(bound: float) -> bool:
    """Below one half: certifies that the model is right on most inputs (see the module docstring)."""
    return bool(bound < INFORMATIVE_BELOW)


def test_set_bound(errors: int, n: int, delta: float = 0.05) -> dict:
    """Langford's (2005) test-set bound: with probability >= 1 - delta over n i.i.d. test items, the true
    error rate is at most the largest p with P(Binomial(n, p) <= errors) >= delta (binomial tail inversion),
    which is the one-sided Clopper-Pearson upper bound beta.ppf(1 - delta, errors + 1, n - errors), 1.0 when
    errors == n; computed by scipy's binomtest(alternative="less").

    It is the PAC-Bayes bound with the posterior equal to the prior, a point mass on the trained model (KL = 0),
    and at the same empirical error tighter than pac_bayes_kl_bound, which adds KL + ln(2 sqrt(n) / delta)
    nats for a posterior chosen after seeing the sample. `kl_inverse_bound` is its Chernoff
    relaxation kl(errors/n || p) <= ln(1/delta)/n (the PAC-Bayes-kl form for one fixed classifier, without the
    ln(2 sqrt(n)) that only a posterior chosen after seeing the sample needs), looser, given for comparison.

    Returns bound, errors, n, empirical_error, delta, kind, valid_because, kl_inverse_bound, vacuous (bound >= 1
    - 1e-9), informative (bound < 0.5) and vacuous_cause (None unless vacuous)."""
    errors, n = int(errors), int(n)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n > 0 and not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n, got errors={errors}, n={n}")
    if n <= 0:
        bound, kl_form, empirical = 1.0, 1.0, float("nan")
    else:
        empirical = errors / n
        bound = float(sps.binomtest(errors, n, alternative="less").proportion_ci(
            confidence_level=1.0 - delta, method="exact").high)
        kl_form = kl_inverse_upper(empirical, math.log(1.0 / delta) / n)
    vacuous = is_vacuous(bound)
    cause = None
    if vacuous:
        cause = "no test items (n = 0)" if n <= 0 else f"every one of the n = {n} test items is an error"
    return {"bound": bound, "errors": errors, "n": n, "empirical_error": empirical, "delta": delta,
            "kind": "test-set binomial (KL = 0)",
            "valid_because": "the model was fixed before the test items were drawn, and the items are i.i.d. "
                             "from the test distribution: the error count is Binomial(n, true error)",
            "kl_inverse_bound": kl_form, "vacuous": vacuous, "informative": is_informative(bound),
            "vacuous_cause": cause}


test_set_bound.__test__ = False  # a library function whose name starts with "test": pytest must not collect it


def mc_gibbs_error_upper(mc_error: float, samples: int, delta_mc: float) -> float:
    """Sample-convergence bound (Langford & Caruana 2001; Dziugaite & Roy 2017, s.3): with probability
    >= 1 - delta_mc over `samples` i.i.d. posterior draws, the Gibbs empirical error is at most
    kl_inverse_upper(mc_error, ln(2 / delta_mc) / samples), mc_error being the mean empirical error of the
    draws (each in [0, 1]). 1.0 without samples (nothing is known)."""
    if samples <= 0:
        return 1.0
    return kl_inverse_upper(float(mc_error), math.log(2.0 / delta_mc) / samples)


def _complexity(n: int, kl: float, delta: float) -> float:
    return kl + math.log(2.0 * math.sqrt(n) / delta)


def pac_bayes_kl_bound(emp_error: float, n: int, kl: float, delta: float = 0.05) -> float:
    """PAC-Bayes-kl upper bound on the true error of the Gibbs posterior Q (Seeger 2002, with
    Maurer's 2004 constant): with probability >= 1 - delta over n i.i.d. samples, for all Q,
        kl(emp_error || true_error) <= (KL(Q || P) + ln(2 sqrt(n) / delta)) / n,
    inverted for the largest true_error with brentq. emp_error is the empirical error of the
    Gibbs classifier (weights drawn from Q); the prior P must not depend on these n samples.

    DESIGN.md's numbers come from this form: 12 errors in 1000, delta = 0.05 -> 0.02996 at KL = 0 and
    0.03747 at KL = 5, i.e. 0.030 and 0.038 rounded up (outwards, as an upper bound should be).
    """
    if n <= 0:
        return 1.0
    return kl_inverse_upper(float(emp_error), _complexity(n, kl, delta) / n)


def mcallester_bound(emp_error: float, n: int, kl: float, delta: float = 0.05) -> float:
    """McAllester-style bound, in the form that follows from the kl bound by Pinsker's inequality
    (kl(q||p) >= 2 (p-q)^2): true_error <= emp_error + sqrt((KL + ln(2 sqrt(n)/delta)) / (2 n)).
    Always looser than pac_bayes_kl_bound with the same constants (kept for comparison)."""
    if n <= 0:
        return 1.0
    return float(min(1.0, emp_error + math.sqrt(_complexity(n, kl, delta) / (2.0 * n))))


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):  # torch tensor, without importing torch here
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def squared_distance(posterior_params, prior_params) -> float:
    """sum over parameter tensors of ||w - w0||^2. Accepts two dicts with the same keys (state_dicts;
    only the keys of the posterior are used, e.g. the trainable / LoRA weights) or two sequences of
    arrays/tensors in the same order."""
    if isinstance(posterior_params, dict):
        pairs = [(posterior_params[k], prior_params[k]) for k in posterior_params]
    else:
        pairs = list(zip(list(posterior_params), list(prior_params), strict=True))
    return float(sum(np.sum((_to_numpy(a) - _to_numpy(b)) ** 2) for a, b in pairs))


def gaussian_kl(posterior_params, prior_params, sigma: float) -> float:
    """KL(Q || P) for Q = N(w, sigma^2 I) around the trained weights w and P = N(w0, sigma^2 I) around
    the base weights w0, with the same isotropic sigma: KL = ||w - w0||^2 / (2 sigma^2).

    Assumptions: the prior is centred at the base model (chosen before seeing the bound's samples),
    both Gaussians share sigma (the covariance terms cancel), parameters not passed are equal in Q and
    P (e.g. frozen weights under LoRA: pass only the adapted ones, or the merged delta). sigma is
    picked from a small grid; pay ln(grid size) for it with pac_bayes_grid_bound (a union bound).
    """
    if sigma <= 0:
        raise ValueError("sigma must be positive")
    return squared_distance(posterior_params, prior_params) / (2.0 * sigma * sigma)


def pac_bayes_grid_bound(emp_errors, n: int, sq_dist: float, sigmas: Sequence[float],
                         delta: float = 0.05, samples: int | None = None, delta_mc: float = 0.01) -> dict:
    """Best pac_bayes_kl_bound over a grid of sigmas, valid for all of them at once (union bound: each sigma
    gets 1/len(sigmas) of the failure probability, i.e. + ln(len(sigmas)) in the complexity term).

    emp_errors: the Gibbs empirical error for each sigma (a scalar is used for all sigmas, e.g. the error of the
    trained weights when the posterior noise does not change the predictions - state it).
    samples=None: emp_errors are exact Gibbs errors and the whole delta goes to PAC-Bayes. samples=m: they are
    Monte-Carlo means over m posterior draws; each is first replaced by its sample-convergence upper bound
    (mc_gibbs_error_upper) with delta_mc, and PAC-Bayes-kl gets delta - delta_mc (Dziugaite & Roy 2017, s.3),
    both split over the grid, since the sigma chosen afterwards needs both steps to hold for it.

    Returns bound, sigma, kl (at the chosen sigma), bounds (per sigma), kls, delta, grid_size, samples,
    delta_mc (None without samples), gibbs_error_upper (per sigma; the errors themselves without samples),
    uncorrected_bounds (per sigma, the whole delta on the raw errors: never above `bounds`), vacuous,
    informative and vacuous_cause (None unless vacuous)."""
    sigmas = list(sigmas)
    grid = len(sigmas)
    errs = np.broadcast_to(np.asarray(emp_errors, dtype=float), (grid,))
    kls = [sq_dist / (2.0 * s * s) for s in sigmas]
    if samples is None:
        delta_pb = delta / grid
        uppers = [float(e) for e in errs]
    else:
        if not 0.0 < delta_mc < delta:
            raise ValueError(f"delta_mc must be in (0, delta = {delta}), got {delta_mc}")
        delta_pb = (delta - delta_mc) / grid
        uppers = [mc_gibbs_error_upper(e, samples, delta_mc / grid) for e in errs]
    bounds = [pac_bayes_kl_bound(u, n, k, delta_pb) for u, k in zip(uppers, kls)]
    uncorrected = [pac_bayes_kl_bound(e, n, k, delta / grid) for e, k in zip(errs, kls)]
    # ties (every bound vacuous at 1.0) go to the smallest KL: the KL reported is then the grid's best case
    i = min(range(grid), key=lambda t: (bounds[t], kls[t]))
    vacuous = is_vacuous(bounds[i])
    cause = (_grid_vacuous_cause(n, sq_dist, sigmas, kls, errs, uppers, samples, delta_pb, delta_mc / grid)
             if vacuous else None)
    return {"bound": bounds[i], "sigma": sigmas[i], "kl": kls[i], "bounds": bounds, "kls": kls,
            "delta": delta, "grid_size": grid, "samples": samples,
            "delta_mc": None if samples is None else delta_mc, "gibbs_error_upper": uppers,
            "uncorrected_bounds": uncorrected, "vacuous": vacuous, "informative": is_informative(bounds[i]),
            "vacuous_cause": cause}


def _grid_vacuous_cause(n, sq_dist, sigmas, kls, errs, uppers, samples, delta_pb, delta_mc_each) -> str:
    """Why every sigma's bound is vacuous, checked in the order that settles it: the KL alone (even with no
    error), then the Monte-Carlo correction, then the Gibbs error itself."""
    if n <= 0:
        return "no items (n = 0)"
    j = int(np.argmin(kls))  # the grid's most favourable sigma for the KL term
    if is_vacuous(pac_bayes_kl_bound(0.0, n, kls[j], delta_pb)):
        scale = (f"exceeds n = {n} by {math.log10(kls[j] / n):.1f} orders of magnitude" if kls[j] > n
                 else f"with ln(2 sqrt(n)/delta) leaves too little of n = {n}")
        return (f"KL(Q||P) = {kls[j]:.2g} nats at sigma {sigmas[j]:g} (the grid's smallest KL; ||w - w0||^2 = "
                f"{sq_dist:.3g}) {scale}: the trained weights are far from the base's in the prior's scale, "
                f"so the bound is vacuous even with no Gibbs error")
    if samples is not None:
        raw = [pac_bayes_kl_bound(float(e), n, kl, delta_pb) for e, kl in zip(errs, kls)]
        if not all(is_vacuous(b) for b in raw):  # the raw Monte-Carlo means would have given a bound
            k = int(np.argmin(raw))
            return (f"with {samples} posterior samples the Monte-Carlo upper bound on the Gibbs error is "
                    f"{uppers[k]:.3g} at sigma {sigmas[k]:g} (Monte-Carlo mean {errs[k]:.3g}): the correction "
                    f"ln(2/delta')/m = {math.log(2.0 / delta_mc_each) / samples:.3g} nats (delta' = "
                    f"{delta_mc_each:.3g} per sigma) is too large: draw more samples")
    return (f"the Gibbs error (at best {float(min(errs)):.3g}) with KL(Q||P) >= {kls[j]:.3g} nats against "
            f"n = {n}: the noisy posterior errs too often for the KL that the prior charges")


@torch.no_grad()
def greedy_correct(model, tokenizer, records, cfg: Config) -> np.ndarray:
    """Per record: does greedy decoding reproduce its target O* exactly (teacher-forced argmax check)?"""
    out = []
    for i in range(0, len(records), cfg.eval.batch_size):
        chunk = records[i:i + cfg.eval.batch_size]
        ids, mask, labels, _ = encode_batch(tokenizer, [(r.system, r.data, r.target) for r in chunk], cfg.model.max_seq_length)
        pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        tgt = labels[:, 1:]
        ok = ((pred == tgt) | (tgt == -100)).all(dim=1)
        out += ok.tolist()
    return np.asarray(out, dtype=bool)


def effective_model(model):
    """The model whose parameters are the weights it computes with: a peft model (LoRA adapter on a frozen base)
    merged into a copy (W + B A scaling, peft's merge_and_unload), so that its parameter names and shapes are
    the plain model's; any other model as it is. The original is left untouched."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def compared_parameters(model, base) -> dict:
    """The parameters the PAC-Bayes KL is computed on, of the effective (merged) weights of both models:
    {names: the shared names with equal shapes, n_values, skipped: names only one side has or with other shapes
    (e.g. a grown vocabulary's embedding)}. Raises ValueError when no parameter is shared: a KL over nothing
    would be 0 and claim that the model never moved (what peft's names did before the merge)."""
    w, w0 = dict(model.named_parameters()), dict(base.named_parameters())
    names = [n for n in w if n in w0 and w[n].shape == w0[n].shape]
    if not names:
        raise ValueError(f"the model and the base share no parameter name and shape (model: {next(iter(w), None)!r}, "
                         f"base: {next(iter(w0), None)!r}, ...): the PAC-Bayes KL cannot be computed")
    skipped = sorted((set(w) | set(w0)) - set(names))
    return {"names": names, "n_values": int(sum(w[n].numel() for n in names)), "skipped": skipped}


def pac_bayes(model, base, tokenizer, records, cfg: Config, sigmas=(1e-3, 3e-3, 1e-2), samples: int = 2,
              delta: float = 0.05, delta_mc: float = 0.01, correct: np.ndarray | None = None) -> dict:
    """Bounds on the error on injected inputs (output != O*) of `model`, each at confidence 1 - delta.

    Headline, `test_set`: test_set_bound on the deterministic model's errors. Both the model and the base were
    fixed before `records` were drawn, so the posterior may be the prior, a point mass on the model (KL = 0):
    the bound pays no KL and no Monte-Carlo error. The PAC-Bayes bound below bounds the noisy (Gibbs) model
    instead; it is kept for comparison and is the form that would apply to training data.

    PAC-Bayes (`bound`, pac_bayes_grid_bound with samples): posterior Q = N(w, sigma^2 I) around the trained
    weights, prior P = N(w0, sigma^2 I) around the base's weights w0. The prior is data-independent: the base
    was fixed before the defense was trained and before the test sample was drawn, so centring P on it is
    legitimate (it does not depend on `records`). KL = ||w - w0||^2 / (2 sigma^2) over every parameter the two
    models share, on their effective weights: a LoRA (peft) model or base is merged first (effective_model), so
    the adapter's change counts in the base's own parameter names, and the noise of the Gibbs posterior is drawn
    on those merged weights too; no shared parameter is an error, never a KL of 0 (compared_parameters). The
    compared values are kl_parameters (kl_tensors tensors); kl_skipped names the parameters only one side has or
    with other shapes (a grown vocabulary's embedding). sigma from the grid with a union bound. The Gibbs error of Q is a Monte-Carlo mean over
    `samples` noisy copies per sigma, bounded by the sample-convergence bound with delta_mc before PAC-Bayes
    uses it (with few samples the correction ln(2/delta_mc)/samples dominates).

    Returns: deterministic_error, test_set (test_set_bound's dict), gibbs_errors (Monte-Carlo means per sigma),
    gibbs_error_upper (per sigma), squared_distance, n, bound, sigma, kl, kls, delta, delta_mc, samples,
    grid_size, bounds_per_sigma, uncorrected_bounds_per_sigma, vacuous, informative, vacuous_cause,
    assumptions. correct: greedy_correct(model, ...) on `records` when the caller has it already.

    When the KL alone makes the bound vacuous (the bound with a Gibbs error of 0 and no Monte-Carlo correction
    is already 1), the noisy copies are not drawn: no Gibbs error could change the result (gibbs_errors None)."""
    model, base = effective_model(model), effective_model(base)  # LoRA: the merged weights, the base's names
    shared = compared_parameters(model, base)
    w, w0 = dict(model.named_parameters()), dict(base.named_parameters())
    sq = squared_distance([w[k].detach() for k in shared["names"]], [w0[k].detach() for k in shared["names"]])
    kl_scope = {"kl_parameters": shared["n_values"], "kl_tensors": len(shared["names"]),
                "kl_skipped": shared["skipped"]}
    n = len(records)
    correct = greedy_correct(model, tokenizer, records, cfg) if correct is None else np.asarray(correct, dtype=bool)
    det_error = 1.0 - float(correct.mean()) if n else float("nan")
    test_set = test_set_bound(int((~correct).sum()), n, delta)
    best_case = pac_bayes_grid_bound([0.0] * len(sigmas), n, sq, list(sigmas), delta=delta)
    if best_case["vacuous"]:
        return {"deterministic_error": det_error, "test_set": test_set, "gibbs_errors": None,
                "gibbs_error_upper": None, "squared_distance": sq, "n": n, **kl_scope,
                **{k: v for k, v in best_case.items() if k not in ("bounds", "uncorrected_bounds", "gibbs_error_upper")},
                "samples": 0, "bounds_per_sigma": dict(zip(map(str, sigmas), best_case["bounds"])),
                "assumptions": "Gaussian posterior and prior with shared isotropic sigma around the trained and base "
                               "weights; prior fixed before training and before the test sample; the bound is 1 even "
                               "with a Gibbs error of 0, so no posterior samples were drawn; the test-set bound "
                               "(KL = 0) is the headline"}
    gibbs = []
    gen = torch.Generator().manual_seed(cfg.run.seed)
    for s in sigmas:
        errs = []
        for _ in range(samples):
            noisy = copy.deepcopy(model)
            with torch.no_grad():
                for p in noisy.parameters():
                    # drawn on the CPU generator (reproducible whatever the device), then moved
                    p.add_((torch.randn(p.shape, generator=gen) * s).to(device=p.device, dtype=p.dtype))
            errs.append(1.0 - greedy_correct(noisy, tokenizer, records, cfg).mean())
            del noisy
        gibbs.append(float(np.mean(errs)))
    grid = pac_bayes_grid_bound(gibbs, n, sq, list(sigmas), delta=delta, samples=samples, delta_mc=delta_mc)
    per_sigma = lambda values: dict(zip(map(str, sigmas), values))  # noqa: E731
    return {"deterministic_error": det_error, "test_set": test_set,
            "gibbs_errors": per_sigma(gibbs), "gibbs_error_upper": per_sigma(grid["gibbs_error_upper"]),
            "squared_distance": sq, "n": n, **kl_scope,
            **{k: v for k, v in grid.items() if k not in ("bounds", "uncorrected_bounds", "gibbs_error_upper")},
            "bounds_per_sigma": per_sigma(grid["bounds"]),
            "uncorrected_bounds_per_sigma": per_sigma(grid["uncorrected_bounds"]),
            "assumptions": "Gaussian posterior and prior with shared isotropic sigma around the trained and "
                           "base weights; prior fixed before training and before the test sample; Gibbs error "
                           f"estimated by {samples} posterior samples per sigma and bounded by the sample-"
                           f"convergence bound (delta' = {delta_mc}); union bound over the sigma grid; the "
                           "test-set bound (KL = 0) is the headline"}
