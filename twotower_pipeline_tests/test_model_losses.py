"""Losses against values computed by hand (numpy) on 3 x 3 logits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twotower_pipeline.model import losses

U = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
V = np.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
IDS = np.array([5, 7, 5])  # items 0 and 2 are the same offer: an accidental hit for rows 0 and 2
T = 0.5


def _expected(log_q=None, mask=True):
    logits = U @ V.T / T
    if log_q is not None:
        logits = logits - log_q[None, :]
    total = 0.0
    for i in range(3):
        row = [logits[i, j] for j in range(3) if not (mask and j != i and IDS[j] == IDS[i])]
        total += -(logits[i, i] - math.log(sum(math.exp(x) for x in row)))
    return total / 3


def _t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def test_plain_in_batch_softmax():
    got = losses.in_batch_softmax_loss(_t(U), _t(V), _t(IDS, torch.int64), temperature=T, remove_accidental_hits=False)
    assert math.isclose(float(got), _expected(mask=False), rel_tol=1e-9)


def test_accidental_hits_are_masked_off_the_diagonal_only():
    got = losses.in_batch_softmax_loss(_t(U), _t(V), _t(IDS, torch.int64), temperature=T)
    assert math.isclose(float(got), _expected(mask=True), rel_tol=1e-9)
    masked = losses.mask_accidental_hits(_t(U @ V.T), _t(IDS, torch.int64), _t(IDS, torch.int64))
    assert masked[0, 2] == losses.MASKED and masked[2, 0] == losses.MASKED
    assert masked[0, 0] == (U @ V.T)[0, 0] and masked[2, 2] == (U @ V.T)[2, 2] and masked[1, 0] == (U @ V.T)[1, 0]


def test_logq_correction_subtracts_the_log_sampling_probability_per_column():
    q = np.array([0.5, 0.25, 0.5])  # offer 5 is twice as frequent as offer 7
    got = losses.in_batch_softmax_loss(_t(U), _t(V), _t(IDS, torch.int64), temperature=T, log_q=_t(np.log(q)))
    assert math.isclose(float(got), _expected(log_q=np.log(q), mask=True), rel_tol=1e-9)
    assert not math.isclose(float(got), _expected(mask=True), rel_tol=1e-3)


def test_sampling_probabilities_and_mixed_log_q():
    p = losses.sampling_probabilities(np.array([0, 0, 1, 0]), 3)
    np.testing.assert_allclose(p, [0.75, 0.25, 0.0])
    np.testing.assert_allclose(losses.mixed_log_q(p, 4, 0)[:2], np.log([3.0, 1.0]))
    # B p + M / N: 4 x 0.75 + 6 / 3
    np.testing.assert_allclose(losses.mixed_log_q(p, 4, 6), np.log([5.0, 3.0, 2.0]))


def test_mixed_negatives_masks_sampled_copies_of_the_positive():
    neg = np.array([[1.0, 0.0], [0.0, 1.0]])
    neg_ids = np.array([7, 9])  # the first sampled negative is row 1's own offer
    got = losses.mixed_negatives_loss(_t(U), _t(V), _t(IDS, torch.int64), _t(neg), _t(neg_ids, torch.int64),
                                      temperature=T)
    cand, cand_ids = np.vstack([V, neg]), np.concatenate([IDS, neg_ids])
    logits = U @ cand.T / T
    total = 0.0
    for i in range(3):
        row = [logits[i, j] for j in range(5) if j == i or cand_ids[j] != IDS[i]]
        total += -(logits[i, i] - math.log(sum(math.exp(x) for x in row)))
    assert math.isclose(float(got), total / 3, rel_tol=1e-9)


def test_pointwise_bce_on_explicit_declines():
    labels = np.array([1, 0, 1])
    got = losses.pointwise_bce_loss(_t(U), _t(V), _t(labels), temperature=T, bias=0.25)
    z = (U * V).sum(1) / T + 0.25
    expected = np.mean(-(labels * np.log(1 / (1 + np.exp(-z))) + (1 - labels) * np.log(1 - 1 / (1 + np.exp(-z)))))
    assert math.isclose(float(got), expected, rel_tol=1e-9)


def test_loss_gradients_are_finite_with_masking():
    user = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1).requires_grad_()
    item = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1)
    ids = torch.tensor([1, 1, 1, 2, 2, 3, 4, 5])
    loss = losses.in_batch_softmax_loss(user, item, ids, temperature=0.05, log_q=torch.zeros(8, dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(user.grad).all()


@pytest.mark.parametrize("temperature", [0.2, 0.01])  # the bound as the shift; the row maximum (tiny temperature)
def test_catalogue_softmax_equals_cross_entropy_in_value_and_gradients(temperature):
    generator = torch.Generator().manual_seed(3)
    user = F.normalize(torch.randn(6, 4, generator=generator), dim=1).requires_grad_()
    catalogue = F.normalize(torch.randn(9, 4, generator=generator), dim=1).requires_grad_()
    target = torch.tensor([0, 3, 3, 8, 1, 5])
    ours = losses.catalogue_softmax_loss(user, catalogue, target, temperature=temperature)
    (2.0 * ours).backward()
    grads = user.grad.clone(), catalogue.grad.clone()
    user.grad = catalogue.grad = None
    reference = F.cross_entropy(user @ catalogue.T / temperature, target)
    (2.0 * reference).backward()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grads[0], user.grad)
    torch.testing.assert_close(grads[1], catalogue.grad)


def test_the_popularity_prior_is_weight_times_log_popularity_with_unaccepted_offers_at_the_floor():
    p = losses.sampling_probabilities(np.array([0, 0, 0, 1]), 3)                 # [0.75, 0.25, 0]
    np.testing.assert_allclose(losses.popularity_log_prior(p, 0.3), 0.3 * np.log([0.75, 0.25, 0.25]))
    np.testing.assert_allclose(losses.popularity_log_prior(p, 0.0), 0.0)


def test_catalogue_softmax_subtracts_the_log_prior_in_value_and_gradients():
    generator = torch.Generator().manual_seed(4)
    user = F.normalize(torch.randn(5, 4, generator=generator), dim=1).requires_grad_()
    catalogue = F.normalize(torch.randn(6, 4, generator=generator), dim=1).requires_grad_()
    target = torch.tensor([0, 2, 5, 5, 1])
    prior = torch.log(torch.tensor([0.4, 0.3, 0.1, 0.1, 0.05, 0.05])) * 0.3
    ours = losses.catalogue_softmax_loss(user, catalogue, target, temperature=0.15, log_prior=prior)
    ours.backward()
    grads = user.grad.clone(), catalogue.grad.clone()
    user.grad = catalogue.grad = None
    reference = F.cross_entropy(user @ catalogue.T / 0.15 - prior, target)
    reference.backward()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grads[0], user.grad)
    torch.testing.assert_close(grads[1], catalogue.grad)
    assert not torch.isclose(ours, losses.catalogue_softmax_loss(user, catalogue, target, temperature=0.15))


@pytest.mark.parametrize("temperature", [0.2, 0.01])
def test_the_fused_in_batch_softmax_equals_the_composed_one(temperature):
    generator = torch.Generator().manual_seed(5)
    user = F.normalize(torch.randn(7, 4, generator=generator), dim=1).requires_grad_()
    item = F.normalize(torch.randn(7, 4, generator=generator), dim=1).requires_grad_()
    ids = torch.tensor([3, 1, 3, 0, 2, 1, 4])                                 # accidental hits: 0/2, 1/5
    log_q = torch.log(torch.tensor([0.3, 0.1, 0.3, 0.05, 0.2, 0.1, 0.01]))
    grads = []
    for loss_fn in (losses.fused_in_batch_softmax_loss, losses.in_batch_softmax_loss):
        loss = loss_fn(user, item, ids, temperature=temperature, log_q=log_q, remove_accidental_hits=True)
        (3.0 * loss).backward()
        grads.append((loss.detach(), user.grad.clone(), item.grad.clone()))
        user.grad = item.grad = None
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)  # float32 at logits up to 100
