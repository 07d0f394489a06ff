"""The two-level bootstrap for a method's effect across builds: its interval covers the true effect in a simulation
with known between-build and item variance, and it is wider than a single build's paired interval."""

from __future__ import annotations

import numpy as np
import pytest

from quantcal.metrics import paired_bootstrap
from quantcal.metrics.two_level import method_effect


def _world(rng: np.random.Generator, n: int, builds: int, effect: float, build_sd: float):  # noqa: ANN202
    """Two-choice items; each build shifts the gold logit by (effect + its own build offset) plus item noise."""
    base = rng.normal(0.8, 1.5, n)
    ref = 1 / (1 + np.exp(-base))
    outs = []
    for _ in range(builds):
        shift = effect + rng.normal(0, build_sd)
        logit = base + shift + rng.normal(0, 0.5, n)
        outs.append(1 / (1 + np.exp(-logit)))
    to_probs = lambda p: np.stack([p, 1 - p], axis=1)  # noqa: E731 - gold is choice 0
    return to_probs(ref), [to_probs(p) for p in outs], np.zeros(n, dtype=int)


def test_two_level_interval_covers_the_true_method_effect() -> None:
    rng = np.random.default_rng(3)
    effect, build_sd = -0.3, 0.25
    # the true effect on NLL: averaged over many builds and items of the same world
    ref, builds, labels = _world(rng, 20_000, 400, effect, build_sd)
    nll = lambda p: float(-np.log(p[:, 0]).mean())  # noqa: E731
    truth = float(np.mean([nll(b) for b in builds])) - nll(ref)
    covered, repetitions = 0, 200
    for r in range(repetitions):
        ref_r, builds_r, labels_r = _world(rng, 300, 5, effect, build_sd)
        got = method_effect("nll", ref_r, builds_r, labels_r, n_resamples=300, seed=r)
        covered += got.interval.low <= truth <= got.interval.high
    assert 0.90 <= covered / repetitions <= 0.98


def test_one_build_is_the_paired_bootstrap_and_more_builds_widen_it() -> None:
    rng = np.random.default_rng(5)
    ref, builds, labels = _world(rng, 400, 5, -0.3, 0.4)
    single = method_effect("nll", ref, builds[:1], labels, n_resamples=500, seed=1)
    paired = paired_bootstrap("nll", ref, builds[0], labels, n_resamples=500, seed=1)
    assert single.mean == pytest.approx(paired.estimate) and single.sd == 0
    assert (single.interval.high - single.interval.low) == pytest.approx(paired.high - paired.low, rel=0.25)
    five = method_effect("nll", ref, builds, labels, n_resamples=500, seed=1)
    assert len(five.per_build) == 5 and five.sd > 0
    assert five.interval.high - five.interval.low > paired.high - paired.low  # build variance counted
    assert five.sign_consistent == (len({np.sign(d) for d in five.per_build}) == 1)
