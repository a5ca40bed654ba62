"""The causal method's losses (DESIGN.md s.3):

    L = L_task + lambda_causal * L_causal + lambda_spurious * L_spurious

L_task     cross-entropy on the reference answer O* (response tokens only), for clean and injected inputs;
L_causal   counterfactual invariance: mean(1 - cos(R(clean), R(injected))) [+ kl_weight * KL(p_clean || p_injected)
           along O*];
L_spurious d-separation: a differentiable HSIC between R(injected) and features of Z, within the groups of S's
           task (the strata of chapter 07's d-separation test).

A training step for a batch of pairs (see also the cost measured in DESIGN s.9):

    with torch.no_grad():                       # the clean pass as a fixed target: 1.35x a plain step
        out_c = model(**clean, output_hidden_states=True)
    out_i = model(**injected, output_hidden_states=True)
    r_c = representation(model, ..., hidden_states=out_c.hidden_states)
    r_i = representation(model, ..., hidden_states=out_i.hidden_states)
    l_task = task_loss(out_i.logits, injected["labels"])
    l_causal = causal_loss(r_c, r_i, out_c.logits, out_i.logits, (clean["labels"], injected["labels"]), kl)
    l_spur = hsic_loss(r_i, z_onehot, groups=task_ids)
    loss, parts = total_loss(l_task, l_causal, l_spur, lambda_causal, lambda_spurious)

With the clean pass under no_grad, R(clean) is a fixed target that R(injected) is pulled towards (the
clean behaviour is anchored, only the injected side moves) and L_task gets no gradient from the clean
input; to train L_task on clean inputs too, run the clean pass with gradient (1.65-1.8x a plain step)
or mix clean examples into the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at t predict the label at t+1."""
    return logits[:, :-1, :], labels[:, 1:].to(logits.device)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token-level cross-entropy over the response tokens (labels != -100), shifted by one."""
    lg, lb = _shifted(logits, labels)
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), lb.reshape(-1), ignore_index=-100)


def response_window(labels: torch.Tensor) -> int:
    """How many trailing positions' logits a loss on `labels` needs: from the logit that predicts the batch's
    earliest response token to the end (pass it as `logits_to_keep` and slice labels[:, -k:]). Only the
    response is supervised, so the LM head and softmax over the prompt positions are wasted work."""
    has = labels != -100
    rows = has.any(dim=1)
    if not bool(rows.any()):
        return 1
    first = int(has.float().argmax(dim=1)[rows].min())
    return int(min(labels.shape[1], labels.shape[1] - first + 1))


def response_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict each response token, flattened row by row -> ([N, V], counts per row [B]).

    Two sequences of a counterfactual pair have prompts of different lengths but the same O*, so their
    response positions line up in this order whatever the prompt lengths and padding side."""
    lg, lb = _shifted(logits, labels)
    keep = lb != -100
    return lg[keep], keep.sum(dim=1)


def kl_along_response(logits_clean: torch.Tensor, logits_injected: torch.Tensor, labels_clean: torch.Tensor,
                      labels_injected: torch.Tensor) -> torch.Tensor:
    """Mean over response positions of KL(p_clean || p_injected) of the next-token distributions."""
    lc, nc = response_logits(logits_clean, labels_clean)
    li, ni = response_logits(logits_injected, labels_injected)
    if not torch.equal(nc.cpu(), ni.cpu()):
        raise ValueError(f"clean and injected sequences supervise different numbers of response tokens per row "
                         f"({nc.tolist()} vs {ni.tolist()}): a pair must share its target O*")
    if lc.shape[0] == 0:
        return logits_injected.sum() * 0.0
    log_pc = F.log_softmax(lc.float(), dim=-1)
    log_pi = F.log_softmax(li.float(), dim=-1)
    return F.kl_div(log_pi, log_pc, log_target=True, reduction="batchmean")


def causal_loss(r_clean: torch.Tensor, r_injected: torch.Tensor, logits_clean: torch.Tensor | None = None,
                logits_injected: torch.Tensor | None = None, labels=None, kl_weight: float = 0.0,
                center: bool = False) -> torch.Tensor:
    """Counterfactual invariance: mean(1 - cos(r_clean, r_injected)) + kl_weight * KL(p_clean || p_injected).

    labels: the injected sequence's labels, or a (labels_clean, labels_injected) tuple when the two
    sequences have different prompt lengths (the usual case); the KL is taken along O* (see
    response_logits). r_clean / logits_clean may come from a no_grad pass (a fixed target).
    center=True subtracts the batch mean of r_clean (detached) from both before the cosine: raw hidden
    states are anisotropic (all cosines near 1), which makes the uncentred term small and flat.
    """
    rc, ri = r_clean.float(), r_injected.float()
    if center:
        mu = rc.detach().mean(dim=0, keepdim=True)
        rc, ri = rc - mu, ri - mu
    loss = (1.0 - F.cosine_similarity(rc, ri, dim=-1, eps=1e-8)).mean()
    if kl_weight:
        if logits_clean is None or logits_injected is None or labels is None:
            raise ValueError("causal_loss: kl_weight > 0 needs logits_clean, logits_injected and labels")
        lab_c, lab_i = labels if isinstance(labels, (tuple, list)) else (labels, labels)
        loss = loss + kl_weight * kl_along_response(logits_clean, logits_injected, lab_c, lab_i)
    return loss


def _as_features(z: torch.Tensor) -> torch.Tensor:
    """Integer labels [B] -> one-hot (a delta kernel); float features [B, k] as they are."""
    z = torch.as_tensor(z)
    if z.dim() == 1 and not torch.is_floating_point(z):
        z = z.long()
        return F.one_hot(z - z.min(), num_classes=int(z.max() - z.min()) + 1).float()
    return z.float().reshape(len(z), -1)


def gaussian_bandwidth(r: torch.Tensor) -> torch.Tensor:
    """Median heuristic: sigma^2 = median of the non-zero pairwise squared distances / 2 (detached)."""
    with torch.no_grad():
        d2 = torch.cdist(r.float(), r.float()).pow(2)
        off = d2[~torch.eye(len(r), dtype=torch.bool, device=r.device)]
        off = off[off > 0]
        med = off.median() if off.numel() else torch.tensor(1.0, device=r.device)
        return (med / 2).clamp_min(1e-12)


def _sq_dists(r: torch.Tensor) -> torch.Tensor:
    # Expanded form instead of cdist: cdist's gradient is NaN on the zero diagonal.
    sq = (r * r).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * r @ r.T).clamp_min(0.0)


def _hsic(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Biased HSIC_b = tr(K H L H) / n^2, the definition of stats.hsic (sum(Kc * L) = tr(Kc L) since
    H L H and L have the same inner product with the centred Kc)."""
    n = K.shape[0]
    Kc = K - K.mean(dim=0, keepdim=True) - K.mean(dim=1, keepdim=True) + K.mean()
    return (Kc * L).sum() / n ** 2


def _hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_u (Song et al. 2012, eq. 5) of one group, n >= 4: with K~, L~ the kernels with zero diagonals,
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)). Its expectation is 0 when R and Z are
    independent, whatever n: the biased HSIC_b sits at an O(1/n) floor there (0.12 +/- 0.016 for groups >= 4 in a
    batch of 32, DESIGN.md s.3), which its gradient can only push on, not the dependence. It can be negative."""
    n = K.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=K.device)
    Kt, Lt = K.masked_fill(eye, 0.0), L.masked_fill(eye, 0.0)
    KL = Kt @ Lt
    return (torch.trace(KL) + Kt.sum() * Lt.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * KL.sum()) / (n * (n - 3))


# Groups with fewer members are skipped. On 2 points H K H has rank 1 and HSIC_b only says whether the two Z
# differ (scaled by their distance in R); on 3 it has rank 2, and the estimate's O(1/n) bias is as large as a
# strong dependence. From 4 members on, a group's kernel matrix carries a dependence; with the 8 tasks a random
# batch of 32 holds groups of median 4 (measured on the training split), so 4 keeps 76% of its items.
MIN_GROUP_SIZE = 4


def hsic_loss(r: torch.Tensor, z_features: torch.Tensor, groups=None, sigma2: torch.Tensor | None = None,
              min_group_size: int = MIN_GROUP_SIZE, unbiased: bool = False) -> torch.Tensor:
    """Differentiable biased HSIC between R and Z features within groups (the task of S), averaged over the
    groups with >= min_group_size members weighted by their sizes: sum_s (n_s / sum n_s) HSIC_b,s, the batch
    form of the stratified statistic of stats.hsic.conditional_hsic_test. 0 when no group is that large.

    Kernels: Gaussian on r with the median-heuristic bandwidth (computed once on the whole batch and
    detached: the groups are small, and a per-group median of a few distances is noise); linear on
    z_features: integer labels are one-hot encoded (the delta kernel); the training's family and goal one-hot
    blocks give the sum of a delta kernel per block, with clean rows (all zero) at the origin, unlike the
    verification's delta kernel on whole rows, where "clean" is one more label. groups=None uses the whole
    batch as one group. unbiased=True uses HSIC_u per group (_hsic_unbiased; groups of >= 4): 0 in expectation
    under independence instead of the biased estimate's floor.
    """
    r = r.float()
    Z = _as_features(z_features).to(r.device)
    s2 = gaussian_bandwidth(r) if sigma2 is None else sigma2
    K_all = torch.exp(-_sq_dists(r) / (2.0 * s2))
    L_all = Z @ Z.T
    g = (torch.zeros(len(r), dtype=torch.long, device=r.device) if groups is None
         else torch.as_tensor(groups, device=r.device).reshape(-1))
    values, sizes = [], []
    for gid in torch.unique(g):
        idx = (g == gid).nonzero(as_tuple=True)[0]
        if len(idx) >= max(4 if unbiased else 2, min_group_size):
            estimate = _hsic_unbiased if unbiased else _hsic
            values.append(estimate(K_all[idx][:, idx], L_all[idx][:, idx]))
            sizes.append(len(idx))
    if not values:
        return r.sum() * 0.0
    w = torch.tensor(sizes, dtype=r.dtype, device=r.device)
    return (torch.stack(values) * w).sum() / w.sum()


def total_loss(l_task: torch.Tensor, l_causal: torch.Tensor | None = None, l_spurious: torch.Tensor | None = None,
               lambda_causal: float = 0.5, lambda_spurious: float = 0.5) -> tuple[torch.Tensor, dict]:
    """L = l_task + lambda_causal * l_causal + lambda_spurious * l_spurious -> (L, parts as floats).
    A missing term (None) counts as 0 (e.g. the plain SFT baseline)."""
    total = l_task
    if l_causal is not None:
        total = total + lambda_causal * l_causal
    if l_spurious is not None:
        total = total + lambda_spurious * l_spurious
    f = lambda x: float(x.detach()) if x is not None else 0.0  # noqa: E731
    return total, {"task": f(l_task), "causal": f(l_causal), "spurious": f(l_spurious), "total": f(total),
                   "lambda_causal": float(lambda_causal), "lambda_spurious": float(lambda_spurious)}
