"""An interval for the difference of two accept rates that stays valid however often it is looked
at: the mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and Walsh ("Always
Valid Inference", 2017), as commercial experimentation platforms use it.

With the challenger's and the champion's accept rates p_b, p_a over n_b and n_a exposures, the
difference d = p_b - p_a is estimated with variance V = p_a(1-p_a)/n_a + p_b(1-p_b)/n_b. Mixing the
likelihood ratio over a normal prior N(0, tau^2) on the true difference gives

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

and the (1 - alpha) always-valid interval

    d +- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) - 2 log alpha)),

which covers the true difference at every look at once with probability at least 1 - alpha (an
operator may look daily and stop when it excludes 0). `tau` is the scale of the differences the
test is tuned to find; 0.02 (two points of accept rate) by default. The always-valid p-value is
the running minimum of min(1, 1 / Lambda) over the looks taken.

V above treats every exposure as an independent trial. Customers are what an experiment assigns
to its arms, and one customer's exposures are not independent (the offers of one request, the
requests of one customer over days), so `clustered_rate` estimates each arm's variance over its
customers (the cluster-robust, delta-method variance of a ratio) and `rate_difference` takes it.
The mSPRT's guarantee is exact for independent normal increments of known variance; with the
variance estimated from returning customers it holds approximately, which the tests check by
simulation (A/A experiments peeked daily) rather than assume.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

ALPHA = 0.05
TAU = 0.02


@dataclasses.dataclass(frozen=True)
class Difference:
    """Challenger minus champion, with its always-valid interval and this look's p-value."""

    difference: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def accept_rate_difference(accepts_a: int, exposures_a: int, accepts_b: int, exposures_b: int, *,
                           alpha: float = ALPHA, tau: float = TAU) -> Difference:
    """The mSPRT interval of rate_b - rate_a at this look, each exposure an independent trial
    (both arms need at least one exposure)."""
    if exposures_a < 1 or exposures_b < 1:
        raise ValueError(f"both arms need exposures: champion {exposures_a}, challenger {exposures_b}")
    if not (0 <= accepts_a <= exposures_a and 0 <= accepts_b <= exposures_b):
        raise ValueError(f"accepts must lie in 0..exposures: {accepts_a}/{exposures_a}, {accepts_b}/{exposures_b}")
    rate_a, rate_b = accepts_a / exposures_a, accepts_b / exposures_b
    return rate_difference(rate_a, _binomial_variance(rate_a, exposures_a), rate_b,
                           _binomial_variance(rate_b, exposures_b), alpha=alpha, tau=tau)


def _binomial_variance(rate: float, exposures: int) -> float:
    # a floor: an arm with no accepts (or only accepts) yet is not certain
    return max(rate * (1 - rate), 0.25 / exposures) / exposures


@dataclasses.dataclass(frozen=True)
class ClusteredRate:
    """An arm's accept rate over its customers: the exposures of one customer are not independent
    (a customer who likes the offers accepts more of them, day after day), so the variance is the
    cluster-robust (delta-method) one of the ratio sum(accepts) / sum(exposures) over customers."""

    rate: float
    variance: float
    customers: int
    exposures: int
    accepts: int


def clustered_rate(accepts, exposures) -> ClusteredRate:
    """The rate and its variance from per-customer accepts and exposures (arrays, one entry per
    customer): Var = C / (C - 1) * sum((a_i - p n_i)^2) / N^2, never below the binomial variance of
    the same counts (conservative where customers happen to look alike; with one customer it is
    the binomial one)."""
    accepts = np.asarray(accepts, dtype=np.float64)
    exposures = np.asarray(exposures, dtype=np.float64)
    customers, total = len(exposures), float(exposures.sum())
    if customers < 1 or total < 1:
        raise ValueError(f"an arm needs exposures: {customers} customers, {total:.0f} exposures")
    rate = float(accepts.sum()) / total
    residual = float(np.square(accepts - rate * exposures).sum())
    variance = residual / total ** 2 * (customers / (customers - 1) if customers > 1 else 1.0)
    return ClusteredRate(rate, max(variance, _binomial_variance(rate, int(total))), customers, int(total),
                         int(accepts.sum()))


def rate_difference(rate_a: float, variance_a: float, rate_b: float, variance_b: float, *,
                    alpha: float = ALPHA, tau: float = TAU) -> Difference:
    """The mSPRT interval of rate_b - rate_a from each arm's estimate and its variance."""
    difference = rate_b - rate_a
    variance = variance_a + variance_b
    if not variance > 0:
        raise ValueError(f"the variance of the difference must be positive, not {variance!r}")
    tau2 = tau * tau
    spread = variance + tau2
    half = math.sqrt(variance * spread / tau2 * (math.log(spread / variance) - 2 * math.log(alpha)))
    log_lambda = 0.5 * math.log(variance / spread) + tau2 * difference ** 2 / (2 * variance * spread)
    return Difference(difference, difference - half, difference + half, min(1.0, math.exp(-log_lambda)))
