"""Retrieval losses on unit vectors, as small pieces switched on by arguments (after
tensorflow/recommenders' retrieval task):

- `similarity_logits`: cosine / temperature between every query row and every candidate column;
- `logq_correct`: subtract the log of each candidate's sampling probability (popular offers appear
  as in-batch negatives more often; without the correction the model learns to demote them);
- `mask_accidental_hits`: a candidate column holding the row's own positive offer (the same offer
  twice in a batch, or a sampled catalogue negative) is not a negative: its logit is masked;
- `softmax_loss`: cross-entropy of each row against its positive column;
- `pointwise_bce_loss`: binary cross-entropy on explicit exposures (accepted 1, declined 0).
`in_batch_softmax_loss` and `mixed_negatives_loss` compose the pieces. The training loop uses
`fused_in_batch_softmax_loss` (the same value and gradients as `in_batch_softmax_loss`) and
`catalogue_softmax_loss` (the exact softmax over a whole, small catalogue): one autograd function,
`_FusedSoftmax`, that keeps a single [B, N] buffer. `popularity_log_prior` is a per-offer term
either softmax subtracts beside log-Q, so that served scores keep part of each offer's popularity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MASKED = -1e9  # finite: exp() underflows to 0 without producing NaN in the softmax


def similarity_logits(query: torch.Tensor, candidates: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """query [B, d], candidates [N, d] (unit vectors) -> logits [B, N] = cosine / temperature."""
    return (query / temperature) @ candidates.T  # scaling [B, d] is cheaper than scaling [B, N]


def logq_correct(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """logits [B, N], log_q [N] (log sampling probability of each candidate column) -> [B, N]."""
    return logits - log_q.unsqueeze(0)


def accidental_hits(positive_ids: torch.Tensor, candidate_ids: torch.Tensor,
                    positive_columns: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N] True where candidate_ids[j] == positive_ids[i], except each row's own positive column
    (positive_columns [B]; default: the diagonal, as for in-batch candidates)."""
    hits = positive_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)             # [B, N]
    rows = torch.arange(hits.shape[0])
    hits[rows, rows if positive_columns is None else positive_columns] = False
    return hits


def mask_accidental_hits(logits: torch.Tensor, positive_ids: torch.Tensor, candidate_ids: torch.Tensor,
                         positive_columns: torch.Tensor | None = None) -> torch.Tensor:
    """Mask logits [B, N] at the `accidental_hits`."""
    return logits.masked_fill(accidental_hits(positive_ids, candidate_ids, positive_columns), MASKED)


def softmax_loss(logits: torch.Tensor, positive_columns: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of rows of logits [B, N] against their positive column (default: diagonal):
    logsumexp(row) - logit(positive), which spares cross_entropy's dense one-hot gradient."""
    target = torch.arange(logits.shape[0]) if positive_columns is None else positive_columns
    positive = logits.gather(1, target.unsqueeze(1)).squeeze(1)               # [B]
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def in_batch_softmax_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor, *,
                          temperature: float, log_q: torch.Tensor | None = None,
                          remove_accidental_hits: bool = True) -> torch.Tensor:
    """Sampled softmax over a batch of accepted pairs: row i's positive is item i, every other item
    of the batch is a negative. user, item [B, d]; item_ids [B]; log_q [B] per column or None."""
    logits = similarity_logits(user, item, temperature)                        # [B, B]
    if log_q is not None:
        logits = logq_correct(logits, log_q)
    if remove_accidental_hits:
        logits = mask_accidental_hits(logits, item_ids, item_ids)
    return softmax_loss(logits)


def mixed_negatives_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor,
                         negatives: torch.Tensor, negative_ids: torch.Tensor, *, temperature: float,
                         log_q: torch.Tensor | None = None, negative_log_q: torch.Tensor | None = None,
                         remove_accidental_hits: bool = True) -> torch.Tensor:
    """Mixed negative sampling (Yang et al. 2020): the in-batch candidates [B, d] plus M catalogue
    candidates negatives [M, d] sampled uniformly, so that rarely accepted offers are negatives too.
    log_q [B] / negative_log_q [M]: log expected count of each column's offer in the mixed sample
    (see `mixed_log_q`)."""
    candidates = torch.cat([item, negatives])                                  # [B + M, d]
    ids = torch.cat([item_ids, negative_ids])                                  # [B + M]
    logits = similarity_logits(user, candidates, temperature)                  # [B, B + M]
    if log_q is not None and negative_log_q is not None:
        logits = logq_correct(logits, torch.cat([log_q, negative_log_q]))
    if remove_accidental_hits:
        logits = mask_accidental_hits(logits, item_ids, ids)
    return softmax_loss(logits)


class _FusedSoftmax(torch.autograd.Function):
    """Mean cross-entropy of cosine / temperature + a per-column bias (e.g. minus log-Q), some
    logits masked out, computed in one [B, N] buffer: the logits become the softmax in place and the
    backward pass reuses it. Unit vectors bound the logits by 1 / temperature + max(bias), which
    replaces the row maximum as the shift when it cannot underflow (measured 1.6-1.9x faster than
    F.cross_entropy on the whole-catalogue logits)."""

    @staticmethod
    def forward(ctx, user, candidates, target, temperature, bias, masked):
        inverse = 1.0 / temperature
        logits = torch.mm(user, candidates.T).mul_(inverse)                    # [B, N]
        if bias is not None:
            logits.add_(bias.unsqueeze(0))
        positive = logits.gather(1, target.unsqueeze(1)).squeeze(1)           # [B]
        spread = 2.0 * inverse + (float(bias.max() - bias.min()) if bias is not None else 0.0)
        if spread < 80.0:  # exp(-spread) does not underflow: the bound is a safe shift
            shift = torch.full((logits.shape[0], 1), inverse + (float(bias.max()) if bias is not None else 0.0))
        else:
            shift = logits.amax(dim=1, keepdim=True)
        probabilities = logits.sub_(shift).exp_()                              # unnormalised, in place
        if masked is not None:
            probabilities.masked_fill_(masked, 0.0)
        total = probabilities.sum(dim=1)                                      # [B]
        loss = (total.log() + shift.squeeze(1) - positive).mean()
        ctx.save_for_backward(user, candidates, target, probabilities, total)
        ctx.inverse = inverse
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        user, candidates, target, probabilities, total = ctx.saved_tensors
        scale = grad_loss / len(target)
        grad = probabilities.mul_((scale / total).unsqueeze(1))               # softmax x scale, in place
        n_columns = grad.shape[1]
        grad.view(-1)[torch.arange(len(target)) * n_columns + target] -= scale  # minus the one-hot target
        grad.mul_(ctx.inverse)                                                # d logits / d cosine
        return grad @ candidates, grad.T @ user, None, None, None, None


def catalogue_softmax_loss(user: torch.Tensor, catalogue: torch.Tensor, target: torch.Tensor, *,
                           temperature: float, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """Exact softmax over every offer: user [B, d], catalogue [N, d] (unit vectors), target [B]
    column of each row's accepted offer, log_prior [N] subtracted from each column (see
    `popularity_log_prior`); = F.cross_entropy(user @ catalogue.T / temperature - log_prior, target)."""
    return _FusedSoftmax.apply(user, catalogue, target, temperature,
                               -log_prior if log_prior is not None else None, None)


def fused_in_batch_softmax_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor, *,
                                temperature: float, log_q: torch.Tensor | None = None,
                                remove_accidental_hits: bool = True) -> torch.Tensor:
    """`in_batch_softmax_loss` in one buffer (same value and gradients): the training loop's."""
    masked = accidental_hits(item_ids, item_ids) if remove_accidental_hits else None    # [B, B]
    return _FusedSoftmax.apply(user, item, torch.arange(len(item_ids)), temperature,
                               -log_q if log_q is not None else None, masked)


def pointwise_bce_loss(user: torch.Tensor, item: torch.Tensor, labels: torch.Tensor, *,
                       temperature: float, bias: torch.Tensor | float = 0.0) -> torch.Tensor:
    """BCE of cosine / temperature + bias against labels [B] (1 accepted, 0 a real decline)."""
    logits = (user * item).sum(dim=1) / temperature + bias                     # [B]
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def sampling_probabilities(item_codes: np.ndarray, n_items: int) -> np.ndarray:
    """Probability that a uniformly drawn accepted pair holds offer j: its frequency among the
    accepted training pairs. item_codes [n_accepted] in 0..n_items-1 -> [n_items] float64."""
    counts = np.bincount(item_codes, minlength=n_items).astype(np.float64)
    return counts / max(1.0, counts.sum())


def popularity_log_prior(probabilities: np.ndarray, weight: float) -> np.ndarray:
    """weight x log of each offer's popularity (`sampling_probabilities`; an offer never accepted
    counts as the least accepted one), [N]. Subtracted from a softmax's logits, it leaves that much
    of log(popularity) in the learned cosine / temperature: the softmax fits cosine / temperature -
    weight x log p(j) to log P(j | customer), so the served score ranks by log P(j | customer) +
    weight x log p(j)."""
    floor = probabilities[probabilities > 0].min() if (probabilities > 0).any() else 1.0
    return weight * np.log(np.maximum(probabilities, floor))


def mixed_log_q(probabilities: np.ndarray, batch_size: int, n_negatives: int = 0) -> np.ndarray:
    """log of each offer's expected count among one step's candidates: B in-batch draws with
    `probabilities` plus M uniform catalogue draws. With M = 0 it is log p + log B, and the
    constant log B cancels in the softmax."""
    n_items = len(probabilities)
    expected = batch_size * probabilities + (n_negatives / n_items if n_negatives else 0.0)
    return np.log(np.maximum(expected, 1e-12))
