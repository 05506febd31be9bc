"""Permutation statistics (core.behaviour.stats): exact enumeration equals a brute-force loop over
every split / sign vector; a planted difference ranks first with a small corrected p; p-values are
calibrated under the null and max-T / Holm hold the family-wise error rate; a model compared with
itself tests nothing; the corrections equal textbook loops; bad input gets one clear sentence."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from core.behaviour import stats
from core.behaviour.stats import (
    VARIANCE_FLOOR, Contrast, benjamini_hochberg, contrast_groups, contrast_paired, holm,
)
from core.errors import CircuitDeskError
from core.jobs import Cancelled, JobContext


def names(m: int) -> list[str]:
    return [f"L{j // 10}/N{j % 10}" for j in range(m)]


# -- brute-force references: one split at a time, plain numpy ----------------------------------------
def welch_t(x: np.ndarray, in_a: np.ndarray) -> np.ndarray:
    a, b = x[in_a], x[~in_a]
    se2 = a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b)
    return (a.mean(axis=0) - b.mean(axis=0)) / np.sqrt(np.maximum(se2, VARIANCE_FLOOR * x.var(axis=0, ddof=1)))


def paired_t(d: np.ndarray) -> np.ndarray:
    n = len(d)
    se2 = d.var(axis=0, ddof=1) / n
    return d.mean(axis=0) / np.sqrt(np.maximum(se2, VARIANCE_FLOOR * (d * d).mean(axis=0)))


def brute_p(t_obs: np.ndarray, t_all: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact raw and max-T adjusted p over every relabelling (the observed one among them)."""
    t_all = np.abs(np.array(t_all))
    level = np.abs(t_obs) * (1 - 1e-9) - 1e-9
    raw = (t_all >= level).mean(axis=0)
    adjusted = (t_all.max(axis=1)[:, None] >= level).mean(axis=0)
    return raw, adjusted


def tiny_dataset(seed: int, n: int, m: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    x[:, 1] = rng.integers(0, 3, size=n) * (rng.random(n) < 0.5)  # sparse and discrete: many ties
    x[:, 2] = 0.7  # no variation: not tested
    x[: n // 2, 3] += 2.0
    return x


@pytest.fixture(params=["one batch", "many batches"])
def batches(request, monkeypatch):
    """Run once with every relabelling in one batch and once split over many small batches."""
    if request.param == "many batches":
        monkeypatch.setattr(stats, "BATCH_ELEMENTS", 17)


@pytest.mark.parametrize("n_a,n_b", [(4, 4), (3, 6)])
def test_exact_independent_p_values_equal_a_loop_over_every_split(n_a, n_b, batches):
    n, m = n_a + n_b, 6
    x = tiny_dataset(n_a * 10 + n_b, n, m)
    in_a = np.zeros(n, dtype=bool)
    in_a[[0, 2, 5, 7, 8][:n_a]] = True
    splits = [np.isin(np.arange(n), chosen) for chosen in itertools.combinations(range(n), n_a)]
    tested = np.arange(m) != 2
    t_obs = welch_t(x[:, tested], in_a)
    raw, adjusted = brute_p(t_obs, [welch_t(x[:, tested], s) for s in splits])

    c = contrast_groups(x, in_a, names(m), permutations=10_000)
    assert c.exact and c.permutations == math.comb(n, n_a) == len(splits)
    assert c.tested.tolist() == tested.tolist()
    np.testing.assert_allclose(c.statistic[tested], t_obs, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(c.p_value[tested], raw)
    np.testing.assert_array_equal(c.p_adjusted[tested], adjusted)
    assert c.p_value[2] == c.p_adjusted[2] == 1.0 and c.effect_size[2] == c.statistic[2] == 0.0
    # Hedges' g from its textbook formula
    a, b = x[in_a], x[~in_a]
    pooled = ((n_a - 1) * a.var(axis=0, ddof=1) + (n_b - 1) * b.var(axis=0, ddof=1)) / (n - 2)
    g = (1 - 3 / (4 * n - 9)) * (a.mean(axis=0) - b.mean(axis=0))[tested] / np.sqrt(pooled[tested])
    np.testing.assert_allclose(c.effect_size[tested], g, rtol=1e-9, atol=1e-12)


def test_exact_paired_p_values_equal_a_loop_over_every_sign_vector(batches):
    n, m = 7, 5
    rng = np.random.default_rng(3)
    va = rng.normal(size=(n, m))
    vb = va + rng.normal(size=(n, m))
    vb[:, 1] = va[:, 1]  # identical in both versions: not tested
    vb[:, 2] = va[:, 2] - 1.5 - 0.1 * rng.normal(size=n)
    tested = np.arange(m) != 1
    d = (va - vb)[:, tested]
    flips = [np.array(s)[:, None] for s in itertools.product((1.0, -1.0), repeat=n)]
    raw, adjusted = brute_p(paired_t(d), [paired_t(s * d) for s in flips])

    c = contrast_paired(va, vb, names(m), permutations=10_000)
    assert c.exact and c.permutations == 2**n and c.n_a == c.n_b == n
    np.testing.assert_array_equal(c.p_value[tested], raw)
    np.testing.assert_array_equal(c.p_adjusted[tested], adjusted)
    assert c.p_value[2] == 2 / 2**n  # all differences one sign: only itself and its mirror
    np.testing.assert_allclose(c.effect_size[tested], d.mean(axis=0) / d.std(axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(c.difference, va.mean(axis=0) - vb.mean(axis=0), atol=1e-12)


def test_a_planted_difference_ranks_first_with_a_small_corrected_p():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(24, 300))
    in_a = np.zeros(24, dtype=bool)
    in_a[rng.permutation(24)[:12]] = True
    x[in_a, 123] += 3.0
    c = contrast_groups(x, in_a, names(300), permutations=2000, seed=1)
    assert not c.exact and c.permutations == 2000
    order = c.ranked()
    assert order[0] == 123
    assert c.p_adjusted[123] < 0.01 and c.effect_size[123] > 1.5
    assert c.p_adjusted[0] > 0.5 and np.median(c.p_adjusted[np.arange(300) != 123]) > 0.9
    rows = c.to_json(k=5)
    assert [r["key"] for r in rows] == [c.keys[j] for j in order[:5]] and rows[0]["key"] == "L12/N3"
    json.dumps(rows, allow_nan=False)


def binomial_band(rate: float, trials: int) -> tuple[float, float]:
    half = 3.5 * math.sqrt(rate * (1 - rate) / trials)
    return rate - half, rate + half


@pytest.mark.parametrize("correction", ["maxt", "holm"])
def test_under_the_null_p_values_are_uniform_and_the_family_wise_rate_is_held(correction):
    rng = np.random.default_rng(11)
    datasets, n, m = 300, 20, 50
    raw, any_rejected = [], []
    for i in range(datasets):
        x = rng.normal(size=(n, m))
        in_a = rng.permutation(n) < 8
        c = contrast_groups(x, in_a, names(m), permutations=200, seed=i, correction=correction)
        raw.append(c.p_value[0])
        any_rejected.append((c.p_adjusted <= 0.05).any())
    raw = np.array(raw)
    for level in (0.05, 0.5):
        low, high = binomial_band(level, datasets)
        assert low <= (raw <= level).mean() <= high, level
    low, high = binomial_band(0.05, datasets)
    rate = np.mean(any_rejected)
    assert rate <= high
    if correction == "maxt":  # max-T spends the whole 5 %; Holm cannot reject at all with B=200 < 50/0.05
        assert rate >= low


def test_a_model_compared_with_itself_tests_nothing():
    x = np.random.default_rng(0).normal(size=(9, 40))
    c = contrast_paired(x, x.copy(), names(40), permutations=500)
    assert not c.tested.any()
    assert (c.p_value == 1).all() and (c.p_adjusted == 1).all()
    assert (c.effect_size == 0).all() and (c.statistic == 0).all() and (c.difference == 0).all()


def test_a_planted_paired_shift_ranks_first_with_a_small_p():
    rng = np.random.default_rng(5)
    va = rng.normal(size=(16, 200))
    vb = va + 0.3 * rng.normal(size=(16, 200))
    vb[:, 42] -= 1.0  # version B lowers key 42 on every case
    c = contrast_paired(va, vb, names(200), permutations=3000, seed=2)
    assert not c.exact and c.ranked()[0] == 42
    assert c.p_adjusted[42] < 0.01 and c.difference[42] > 0


def test_constant_groups_give_finite_large_statistics():
    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 0.0]] * 3 + [[0.0, 5.0]])  # key 0: A all 1, B all 0
    in_a = np.array([True] * 3 + [False] * 4)
    c = contrast_groups(x, in_a, ["a0.h0", "a0.h1"], permutations=1000)
    for name in ("statistic", "effect_size", "p_value", "p_adjusted", "difference"):
        assert np.isfinite(getattr(c, name)).all()
    assert c.statistic[0] > 100 and c.effect_size[0] > 100 and c.p_value[0] == 1 / math.comb(7, 3)
    json.dumps(c.to_json(), allow_nan=False)


def reference_holm(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def reference_bh(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, p[i] * m / (rank + 1))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", range(5))
def test_holm_and_benjamini_hochberg_equal_textbook_loops(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(37) ** 3
    p[:4] = p[4]  # ties
    np.testing.assert_allclose(holm(p), reference_holm(p.tolist()), rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg(p), reference_bh(p.tolist()), rtol=1e-12)


def test_same_seed_same_p_values_and_another_seed_differs():
    rng = np.random.default_rng(9)
    x, in_a = rng.normal(size=(30, 25)), np.arange(30) < 14
    first, again, other = (contrast_groups(x, in_a, names(25), permutations=300, seed=s) for s in (4, 4, 5))
    np.testing.assert_array_equal(first.p_value, again.p_value)
    np.testing.assert_array_equal(first.p_adjusted, again.p_adjusted)
    assert not np.array_equal(first.p_value, other.p_value)


@pytest.mark.parametrize("call,sentence", [
    (lambda x: contrast_groups(x, [True] + [False] * 5, names(3)),
     "Group A has 1 case; a contrast needs at least 2 cases in each group."),
    (lambda x: contrast_groups(x, [True] * 6, names(3)),
     "Group B has 0 cases; a contrast needs at least 2 cases in each group."),
    (lambda x: contrast_groups(x, [True] * 3 + [False] * 3, names(3), correction="bonferroni"),
     "Unknown correction 'bonferroni'; use one of maxt, holm, bh."),
    (lambda x: contrast_groups(x, [True] * 3 + [False] * 3, names(4)),
     "values must be a [cases × keys] table with one column per key (4), got shape (6, 3)."),
    (lambda x: contrast_groups(x, [True] * 3 + [False] * 2, names(3)),
     "in_a must give True or False for each of the 6 cases (got shape (5,)); mark group A True and group B False."),
    (lambda x: contrast_paired(x, x[:, :2], names(3)),
     "values_b must be a [cases × keys] table with one column per key (3), got shape (6, 2)."),
    (lambda x: contrast_paired(x, x[:5], names(3)),
     "values_a has shape (6, 3) but values_b has (5, 3); a paired contrast needs the same cases and keys in both."),
    (lambda x: contrast_paired(x[:1], x[:1] + 1, names(3)),
     "The paired contrast has 1 case; it needs at least 2 cases."),
    (lambda x: contrast_paired(np.where(x > 0, np.nan, x), x, names(3)),
     "values_a holds NaN or infinite entries; give every case a finite value for every key."),
    (lambda x: contrast_paired(x, x + 1, names(3), permutations=0),
     "permutations is 0; it must be a whole number of at least 1."),
])
def test_bad_inputs_get_one_clear_sentence(call, sentence):
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(CircuitDeskError) as err:
        call(x)
    assert str(err.value) == sentence


def test_a_cancelled_job_stops_the_permutations():
    ctx = JobContext()
    ctx.cancel()
    x = np.random.default_rng(2).normal(size=(10, 4))
    with pytest.raises(Cancelled):
        contrast_groups(x, np.arange(10) < 5, names(4), permutations=100, ctx=ctx)


def test_the_contrast_is_read_only_data():
    c = contrast_groups(np.random.default_rng(1).normal(size=(6, 3)), [True] * 3 + [False] * 3, names(3))
    assert isinstance(c, Contrast) and c.method == "independent" and c.correction == "maxt"
    with pytest.raises(ValueError):
        c.p_value[0] = 0.0
