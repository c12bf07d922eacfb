"""Intervals for every reported number: a rate with its n and a 95% Wilson interval, a mean with a t interval, and a
base → adapter change with a paired interval (Newcombe's method for paired proportions, a paired t interval for
means). A change whose interval contains 0 reads "no measurable change".

References: E. B. Wilson (1927), "Probable inference, the law of succession, and statistical inference";
R. G. Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based on
paired data", Statistics in Medicine 17, method 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z = 1.959963984540054  # the 97.5% normal quantile: two-sided 95%


@dataclass(frozen=True)
class Estimate:
    """A measured value with its sample size and 95% interval (``lo``/``hi`` None when n is too small to say)."""

    value: float | None
    n: int
    lo: float | None
    hi: float | None

    def reads(self) -> str:
        """For a change: "up", "down" or "no measurable change" (the interval contains 0, or there is none)."""
        if self.value is None or self.lo is None or self.hi is None:
            return "no measurable change"
        if self.lo > 0:
            return "up"
        if self.hi < 0:
            return "down"
        return "no measurable change"


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes in ``n`` trials."""
    if n <= 0:
        raise ValueError("a rate needs at least one trial")
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    # At k = 0 or k = n the bound is exactly the rate (centre - half cancels to 0 only up to rounding).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def rate(outcomes: Sequence[bool]) -> Estimate:
    n = len(outcomes)
    if not n:
        return Estimate(None, 0, None, None)
    k = sum(bool(o) for o in outcomes)
    lo, hi = wilson(k, n)
    return Estimate(k / n, n, lo, hi)


def _t(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean(values: Sequence[float], lower: float | None = None) -> Estimate:
    """The mean with a 95% t interval (none for a single value). ``lower``: the least value the quantity can take
    (0 for a divergence), where the symmetric t interval would reach below what no sample could be."""
    n = len(values)
    if not n:
        return Estimate(None, 0, None, None)
    m = sum(values) / n
    if n < 2:
        return Estimate(m, n, None, None)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = _t(n - 1) * sd / math.sqrt(n)
    lo = m - half if lower is None else max(lower, m - half)
    return Estimate(m, n, lo, m + half)


def paired_rate_change(base: Sequence[bool], tuned: Sequence[bool]) -> Estimate:
    """The change in a rate from ``base`` to ``tuned`` on the same items (pairs in order), with Newcombe's
    interval for paired proportions (method 10: Wilson limits of each rate, corrected for their correlation)."""
    if len(base) != len(tuned):
        raise ValueError("a paired change needs the same items on both sides")
    n = len(base)
    if not n:
        return Estimate(None, 0, None, None)
    e = sum(bool(b) and bool(t) for b, t in zip(base, tuned, strict=True))  # both
    f = sum(not b and bool(t) for b, t in zip(base, tuned, strict=True))  # adapter only
    g = sum(bool(b) and not t for b, t in zip(base, tuned, strict=True))  # base only
    h = n - e - f - g  # neither
    p1, p2 = (e + f) / n, (e + g) / n  # adapter, base
    l1, u1 = wilson(e + f, n)
    l2, u2 = wilson(e + g, n)
    denom = (e + f) * (g + h) * (e + g) * (f + h)
    # The correlation of the two rates, with Newcombe's continuity correction when it is positive: without it, no
    # discordant pair at all (every answer scored alike) would give an interval of zero width.
    cross = e * h - f * g
    phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(denom) if denom else 0.0
    d = p1 - p2
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    du = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return Estimate(d, n, max(-1.0, d - dl), min(1.0, d + du))


def paired_mean_change(base: Sequence[float], tuned: Sequence[float]) -> Estimate:
    """The change in a mean from ``base`` to ``tuned`` on the same items, with a paired t interval."""
    if len(base) != len(tuned):
        raise ValueError("a paired change needs the same items on both sides")
    return mean([t - b for b, t in zip(base, tuned, strict=True)])


def passes(est: Estimate, rule: str) -> bool | None:
    """A threshold (">= x" or "<= x") against an estimate: True only when the whole interval clears it, False when
    the whole interval misses it, None when the interval straddles it or nothing was measured."""
    if est.value is None:
        return None
    op, bound = rule.split()
    b = float(bound)
    lo = est.lo if est.lo is not None else None
    hi = est.hi if est.hi is not None else None
    if lo is None or hi is None:
        return None
    if op == ">=":
        return True if lo >= b else False if hi < b else None
    return True if hi <= b else False if lo > b else None
