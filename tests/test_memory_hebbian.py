import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.stats import binom

import jaxmodels.memory as jmm

from .helpers import jaxtyping_off


def test_examples_and_dilution_statistics():
    xi = jmm.random_patterns(jr.key(0), 4, 500)
    ex = jmm.noisy_examples(jr.key(1), xi, 50, 0.3)
    agree = float(jnp.mean(ex == xi[:, None, :]))
    # 100000 entries, agreement probability (1 + r) / 2 = 0.65: sd 0.0015.
    assert abs(agree - 0.65) < 0.006
    d = jmm.diluted_patterns(jr.key(2), 4, 5000, 0.3)
    assert abs(float(jnp.mean(d == 0)) - 0.3) < 0.01
    assert set(np.unique(np.asarray(d)).tolist()) == {-1.0, 0.0, 1.0}
    sup = jmm.supervised_network(ex, 4)
    assert np.allclose(sup.patterns, ex.mean(1))
    uns = jmm.unsupervised_network(ex, 4)
    assert uns.patterns.shape == (200, 500)


def _reference_overlap(m: int, r: float) -> float:
    # The supervised P-body network started at the archetype settles on sign(eta):
    # a spin is wrong where the majority of its M examples is wrong, and a tie
    # (eta_i = 0, even M) is settled by the cross-talk, right half the time.
    p = (1 + r) / 2
    wrong = binom.cdf(np.ceil(m / 2) - 1, m, p)
    tie = binom.pmf(m // 2, m, p) if m % 2 == 0 else 0.0
    return 1 - 2 * (wrong + tie / 2)


def test_supervised_dense_retrieves_unseen_archetypes():
    # P042 (catalogue test): P = 4, N = 200, r = 0.2, K = 100 (load 0.5, 3.6 times the
    # pairwise capacity). Large M r^2 retrieves the archetypes, small M does not; both
    # agree with the binomial reference above.
    pd = jmm.phase_diagram(
        jr.key(3), 200, 100, [0.2], [10, 200], interaction=4, trials=2, probes=4
    )
    small, large = np.asarray(pd.overlap[0])
    assert large > 0.9
    assert small < 0.6
    assert abs(large - _reference_overlap(200, 0.2)) < 0.02
    assert abs(small - _reference_overlap(10, 0.2)) < 0.06


def test_multitasking_hierarchical_amplitudes():
    # P041, K = 3, N = 1000: ranked magnetisations from pattern 1 completed at random
    # against (1 - d) d^(k-1). |m| of a pattern that does not fill a spin has an
    # O(N^-1/2) = 0.03 upward bias after ranking, hence the tolerance 0.05.
    res = jmm.multitask_magnetisations(
        jr.key(4), 1000, 3, [0.1, 0.3, 0.9], trials=4, sweeps=20
    )
    m = np.asarray(res.magnetisations)
    pred = np.stack([np.asarray(jmm.hierarchical_amplitudes(3, d)) for d in (0.1, 0.3)])
    assert np.allclose(m[:2], pred, atol=0.05), (m, pred)
    assert np.allclose(m[:2, 0], [0.9, 0.7], atol=0.01)
    assert np.all(np.diff(m[:2], axis=1) < 0)
    # Strong dilution: the signals are comparable (m_3 / m_1 near 1, not d^2 = 0.01).
    assert m[2, 2] / m[2, 0] > 0.5
    assert m[0, 2] / m[0, 0] < 0.1


def test_bad_inputs():
    xi = jmm.random_patterns(jr.key(0), 2, 10)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="quality"):
            jmm.noisy_examples(jr.key(0), xi, 3, 1.5)
        with pytest.raises(ValueError, match="num_examples"):
            jmm.noisy_examples(jr.key(0), xi, 0, 0.5)
        with pytest.raises(ValueError, match="dilution"):
            jmm.diluted_patterns(jr.key(0), 2, 10, 1.0)
        with pytest.raises(ValueError, match="examples"):
            jmm.supervised_network(xi, 4)
        with pytest.raises(ValueError, match="start"):
            jmm.phase_diagram(jr.key(0), 10, 2, [0.5], [3], start="noise")
        with pytest.raises(ValueError, match="interaction"):
            jmm.phase_diagram(jr.key(0), 10, 2, [0.5], [3], interaction=1)
        with pytest.raises(ValueError, match="start"):
            jmm.multitask_magnetisations(jr.key(0), 10, 2, [0.5], start="all")
