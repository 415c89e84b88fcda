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
"""

from __future__ import annotations

import dataclasses
import math

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
    """The mSPRT interval of rate_b - rate_a at this look (both arms need at least one exposure)."""
    if exposures_a < 1 or exposures_b < 1:
        raise ValueError(f"both arms need exposures: champion {exposures_a}, challenger {exposures_b}")
    if not (0 <= accepts_a <= exposures_a and 0 <= accepts_b <= exposures_b):
        raise ValueError(f"accepts must lie in 0..exposures: {accepts_a}/{exposures_a}, {accepts_b}/{exposures_b}")
    rate_a, rate_b = accepts_a / exposures_a, accepts_b / exposures_b
    difference = rate_b - rate_a
    # a floor on the variance: an arm with no accepts (or only accepts) yet is not certain
    variance = max(rate_a * (1 - rate_a), 0.25 / exposures_a) / exposures_a + \
        max(rate_b * (1 - rate_b), 0.25 / exposures_b) / exposures_b
    tau2 = tau * tau
    spread = variance + tau2
    half = math.sqrt(variance * spread / tau2 * (math.log(spread / variance) - 2 * math.log(alpha)))
    log_lambda = 0.5 * math.log(variance / spread) + tau2 * difference ** 2 / (2 * variance * spread)
    return Difference(difference, difference - half, difference + half, min(1.0, math.exp(-log_lambda)))
