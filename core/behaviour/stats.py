"""Permutation statistics for behaviour audits: which nodes differ between two groups of cases.

Numpy only (no scipy, no torch, no Qt). Each *key* (an attribution-graph neuron "L12/N340", a
component-circuit head "a3.h5") has one value per case; a contrast asks, key by key, whether the
values differ between group A and group B (``contrast_groups``), or between model versions A and
B on the same cases (``contrast_paired``), and corrects for having asked it of many keys.

* **Statistic.** Independent groups: Welch's t, (mean_A - mean_B) / sqrt(s²_A/n_A + s²_B/n_B)
  (Welch 1947). Paired: the one-sample t of the per-case differences d = a - b, mean(d) / (sd(d)/√n).
  The squared standard error is floored at ``VARIANCE_FLOOR`` times the key's scale (independent:
  its variance over all cases; paired: mean(d²)), so that a key whose groups are each constant gets
  a finite, large t instead of inf or nan; the floor is far below any real spread.
* **Untested keys.** A key with no variation at all (every case the same value; paired: every
  difference exactly 0) carries no evidence: p = 1, adjusted p = 1, effect 0, ``tested`` False.
  It does not count as a comparison. A model contrasted with itself gives exactly this.
* **Permutation test** (Good 2005; Nichols & Holmes 2002). Under the null hypothesis the labels
  are exchangeable: independent, any relabelling of which n_A cases form group A; paired, any sign
  flip of each case's difference. When there are no more distinct relabellings than
  ``permutations`` all of them are enumerated and p is exact: #{|t*| ≥ |t|} / N over all N of them,
  the observed one included. Otherwise ``permutations`` = B random relabellings are drawn
  (``numpy.random.default_rng(seed)``) and p = (1 + #{|t*| ≥ |t|}) / (1 + B), which is never 0
  and keeps the test valid (Phipson & Smyth 2010). Both are two-sided. |t*| ≥ |t| is read with
  the tolerance ``TIE_TOLERANCE`` (relative, and absolute near 0) so that relabellings that tie in
  exact arithmetic (swapped equal-sized groups, repeated values) still tie after rounding.
* **Correction** for the number of tested keys. ``"maxt"`` (default): the Westfall–Young
  single-step max-T adjustment (Westfall & Young 1993; Nichols & Holmes 2002), adjusted p_j =
  (1 + #{b : max_k |t*_bk| ≥ |t_j|}) / (1 + B) (exact: #{...} / N). It controls the family-wise
  error rate under any dependence between keys, and unlike Holm it can reach small values
  without B > keys / alpha. ``"holm"``: Holm–Bonferroni (Holm 1979) on the raw permutation p
  (family-wise error). ``"bh"``: Benjamini–Hochberg q-values (Benjamini & Hochberg 1995; false
  discovery rate), made monotone.
* **Effect size.** Independent: Hedges' g = J · (mean_A - mean_B) / s_pooled with the
  small-sample correction J = 1 - 3 / (4(n_A + n_B) - 9) (Hedges 1981). Paired: d_z = mean(d) / sd(d)
  (Lakens 2013). The same floor keeps both finite.

The t of every relabelling is computed from group sums, a matrix product [relabellings × cases] @
[cases × keys] on the key-wise standardised values, in batches of at most ``BATCH_ELEMENTS``
entries, so that 64 cases × 20,000 keys × 10,000 permutations runs in bounded memory.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from core.errors import CircuitDeskError
from core.jobs import JobContext

CORRECTIONS = ("maxt", "holm", "bh")
VARIANCE_FLOOR = 1e-6  # relative to the key's own scale (see the module docstring)
TIE_TOLERANCE = 1e-6  # |t*| >= |t| * (1 - TIE_TOLERANCE) - TIE_TOLERANCE counts as "at least as extreme"
BATCH_ELEMENTS = 1 << 20  # relabellings × keys per batch (8 MiB per float64 array)


@dataclass(frozen=True, eq=False)
class Contrast:
    """Key-by-key contrast of group A against group B (arrays are per key, float64, read-only)."""

    keys: tuple[str, ...]
    method: str  # "independent" | "paired"
    n_a: int
    n_b: int
    mean_a: np.ndarray
    mean_b: np.ndarray
    sd_a: np.ndarray
    sd_b: np.ndarray
    present_a: np.ndarray  # fraction of cases with value != 0
    present_b: np.ndarray
    difference: np.ndarray  # mean_a - mean_b
    effect_size: np.ndarray  # Hedges' g (independent) or d_z (paired)
    statistic: np.ndarray  # Welch t (independent) or one-sample t of the differences (paired)
    p_value: np.ndarray  # raw two-sided permutation p
    p_adjusted: np.ndarray  # corrected for the number of tested keys
    permutations: int  # B random relabellings, or N when exact
    exact: bool
    correction: str
    tested: np.ndarray  # bool: False for keys with no variation at all

    def ranked(self) -> np.ndarray:
        """Key indices: smallest adjusted p first, then the largest |difference| (ties in p are common:
        exact tests have a floor; a difference is in the values' own units, influence or score, so
        it ranks what matters most to the behaviour, where a standardised effect would rank a
        tiny but steady difference first), then the largest |effect size|."""
        return np.lexsort((-np.abs(self.effect_size), -np.abs(self.difference), self.p_adjusted))

    def to_json(self, k: int | None = None) -> list[dict]:
        """The top ``k`` keys (all when None) in ranked order, as plain JSON rows."""
        fields = ("mean_a", "mean_b", "sd_a", "sd_b", "present_a", "present_b", "difference",
                  "effect_size", "statistic", "p_value", "p_adjusted")
        rows = []
        for rank, j in enumerate(self.ranked()[:k], start=1):
            row = {"rank": rank, "key": self.keys[j], "tested": bool(self.tested[j])}
            row.update({f: float(getattr(self, f)[j]) for f in fields})
            rows.append(row)
        return rows


# -- multiple-comparison corrections ----------------------------------------------------------------
def holm(p) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, family-wise error rate)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up, false discovery rate), monotone in p."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


# -- the two contrasts --------------------------------------------------------------------------------
def contrast_groups(values, in_a, keys, *, permutations: int = 10000, seed: int = 0,
                    correction: str = "maxt", ctx: JobContext | None = None) -> Contrast:
    """Contrast group A (``in_a`` True) with group B per key: Welch t, Hedges' g, permutation p.

    values: [cases × keys]; in_a: bool per case.
    """
    x = _values(values, "values", keys)
    in_a = np.asarray(in_a)
    if in_a.shape != (x.shape[0],) or not np.isin(in_a, (0, 1)).all():
        raise CircuitDeskError(f"in_a must give True or False for each of the {x.shape[0]} cases "
                               f"(got shape {in_a.shape}); mark group A True and group B False.")
    in_a = in_a.astype(bool)
    n_a, n_b = int(in_a.sum()), int((~in_a).sum())
    for name, n in (("A", n_a), ("B", n_b)):
        if n < 2:
            raise CircuitDeskError(f"Group {name} has {n} case{'' if n == 1 else 's'}; "
                                   "a contrast needs at least 2 cases in each group.")
    _check(permutations, correction)
    a, b = x[in_a], x[~in_a]
    tested = x.max(axis=0) > x.min(axis=0)
    # standardise each tested key (centre, unit variance): t is unchanged and sums stay well scaled
    z = x[:, tested]
    z = (z - z.mean(axis=0)) / z.std(axis=0, ddof=1)
    z_squared = z * z
    n = x.shape[0]
    total = math.comb(n, n_a)

    def t_of(labels: np.ndarray) -> np.ndarray:  # labels: [batch × cases] 0/1, n_a ones per row
        sum_a, sq_a = labels @ z, labels @ z_squared
        sum_b, sq_b = -sum_a, (n - 1) - sq_a
        var_a = np.maximum(sq_a - sum_a * sum_a / n_a, 0.0) / (n_a - 1)
        var_b = np.maximum(sq_b - sum_b * sum_b / n_b, 0.0) / (n_b - 1)
        se2 = np.maximum(var_a / n_a + var_b / n_b, VARIANCE_FLOOR)
        return (sum_a / n_a - sum_b / n_b) / np.sqrt(se2)

    subsets = itertools.combinations(range(n), n_a)

    def relabellings(count: int, rng: np.random.Generator | None) -> np.ndarray:
        labels = np.zeros((count, n))
        if rng is None:  # exact: the next `count` subsets of n_a cases (batches come in order)
            for row, chosen in enumerate(itertools.islice(subsets, count)):
                labels[row, list(chosen)] = 1.0
        else:
            labels[:, :n_a] = 1.0
            labels = rng.permuted(labels, axis=1)
        return labels

    t, p, p_adj, used, exact = _permutation_test(
        t_of, in_a[None, :].astype(np.float64), relabellings, total, permutations, seed, correction,
        int(tested.sum()), ctx)
    g = np.zeros(x.shape[1])
    if tested.any():
        mean_diff = z[in_a].mean(axis=0) - z[~in_a].mean(axis=0)
        pooled = ((n_a - 1) * z[in_a].var(axis=0, ddof=1) + (n_b - 1) * z[~in_a].var(axis=0, ddof=1)) / (n - 2)
        g[tested] = (1 - 3 / (4 * n - 9)) * mean_diff / np.sqrt(np.maximum(pooled, VARIANCE_FLOOR))
    return _contrast(keys, "independent", a, b, a.mean(axis=0) - b.mean(axis=0), g, tested, t, p, p_adj,
                     used, exact, correction)


def contrast_paired(values_a, values_b, keys, *, permutations: int = 10000, seed: int = 0,
                    correction: str = "maxt", ctx: JobContext | None = None) -> Contrast:
    """Contrast version A with version B on the same cases per key: paired t, d_z, sign-flip p.

    values_a, values_b: [cases × keys], row i of both is the same case.
    """
    a = _values(values_a, "values_a", keys)
    b = _values(values_b, "values_b", keys)
    if a.shape != b.shape:
        raise CircuitDeskError(f"values_a has shape {a.shape} but values_b has {b.shape}; a paired "
                               "contrast needs the same cases and keys in both.")
    n = a.shape[0]
    if n < 2:
        raise CircuitDeskError(f"The paired contrast has {n} case{'' if n == 1 else 's'}; "
                               "it needs at least 2 cases.")
    _check(permutations, correction)
    d = a - b
    tested = (d != 0).any(axis=0)
    # scale each tested key's differences to unit mean square, which no sign flip changes
    u = d[:, tested]
    u = u / np.sqrt((u * u).mean(axis=0))

    def t_of(signs: np.ndarray) -> np.ndarray:  # signs: [batch × cases] of ±1
        total = signs @ u
        var = np.maximum(n - total * total / n, 0.0) / (n - 1)
        return (total / n) / np.sqrt(np.maximum(var / n, VARIANCE_FLOOR))

    done = [0]  # exact: sign vectors already enumerated

    def relabellings(count: int, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None:  # exact: the next `count` sign vectors, read from the bits of a counter
            codes = np.arange(done[0], done[0] + count)[:, None]
            done[0] += count
            return 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)
        return 1.0 - 2.0 * rng.integers(0, 2, size=(count, n))

    t, p, p_adj, used, exact = _permutation_test(
        t_of, np.ones((1, n)), relabellings, 2**n, permutations, seed, correction,
        int(tested.sum()), ctx)
    dz = np.zeros(a.shape[1])
    if tested.any():
        dz[tested] = u.mean(axis=0) / np.sqrt(np.maximum(u.var(axis=0, ddof=1), VARIANCE_FLOOR))
    return _contrast(keys, "paired", a, b, d.mean(axis=0), dz, tested, t, p, p_adj, used, exact, correction)


# -- shared machinery -----------------------------------------------------------------------------------
def _values(values, name: str, keys) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(keys):
        raise CircuitDeskError(f"{name} must be a [cases × keys] table with one column per key ({len(keys)}), "
                               f"got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise CircuitDeskError(f"{name} holds NaN or infinite entries; give every case a finite value for every key.")
    return x


def _check(permutations: int, correction: str) -> None:
    if correction not in CORRECTIONS:
        raise CircuitDeskError(f"Unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}.")
    if int(permutations) != permutations or permutations < 1:
        raise CircuitDeskError(f"permutations is {permutations}; it must be a whole number of at least 1.")


def _permutation_test(t_of, observed, relabellings, total: int, permutations: int, seed: int,
                      correction: str, n_tested: int, ctx: JobContext | None):
    """Observed t of the tested keys, raw and adjusted p, relabellings used, whether exact.

    ``t_of(labels)`` gives t per relabelling and tested key; ``relabellings(count, rng)`` gives
    the next ``count`` of all ``total`` relabellings in order (rng None) or random ones.
    """
    exact = total <= permutations
    used = total if exact else int(permutations)
    if n_tested == 0:  # nothing varies: nothing to test, nothing to permute
        return np.zeros(0), np.ones(0), np.ones(0), used, exact
    ctx = ctx or JobContext()
    rng = None if exact else np.random.default_rng(seed)
    t = t_of(observed)[0]
    threshold = np.abs(t) * (1 - TIE_TOLERANCE) - TIE_TOLERANCE
    as_extreme = np.zeros(n_tested, dtype=np.int64)
    maxima = np.empty(used)
    batch = max(1, BATCH_ELEMENTS // n_tested)
    for start in range(0, used, batch):
        count = min(batch, used - start)
        t_star = np.abs(t_of(relabellings(count, rng)))
        as_extreme += (t_star >= threshold).sum(axis=0)
        maxima[start:start + count] = t_star.max(axis=1)
        ctx.progress((start + count) / used, f"Permutations {start + count:,}/{used:,}")
    maxima.sort()
    at_least_max = used - np.searchsorted(maxima, threshold, side="left")
    # exact: the observed labelling is one of the `total` and is counted; random: Phipson & Smyth
    extra = 0 if exact else 1
    p = (extra + as_extreme) / (extra + used)
    if correction == "maxt":
        p_adj = (extra + at_least_max) / (extra + used)
    elif correction == "holm":
        p_adj = holm(p)
    else:
        p_adj = benjamini_hochberg(p)
    return t, np.minimum(p, 1.0), np.minimum(p_adj, 1.0), used, exact


def _contrast(keys, method, a, b, difference, effect, tested, t, p, p_adj, used, exact, correction) -> Contrast:
    def spread(v: np.ndarray) -> np.ndarray:
        return v.std(axis=0, ddof=1)

    def per_key(tested_values: np.ndarray, untested: float) -> np.ndarray:
        out = np.full(tested.shape, untested)
        out[tested] = tested_values
        return out

    arrays = dict(
        mean_a=a.mean(axis=0), mean_b=b.mean(axis=0), sd_a=spread(a), sd_b=spread(b),
        present_a=(a != 0).mean(axis=0), present_b=(b != 0).mean(axis=0),
        difference=np.where(tested, difference, 0.0), effect_size=effect,
        statistic=per_key(t, 0.0), p_value=per_key(p, 1.0), p_adjusted=per_key(p_adj, 1.0),
        tested=tested.copy(),
    )
    for value in arrays.values():
        value.setflags(write=False)
    return Contrast(keys=tuple(str(k) for k in keys), method=method, n_a=len(a), n_b=len(b),
                    permutations=used, exact=exact, correction=correction, **arrays)
