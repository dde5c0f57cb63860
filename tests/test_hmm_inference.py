"""Forward-backward (sequential, parallel and scaled scans), Viterbi and state sampling in one
chain."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from jaxem.hmm import inference
from jaxem.hmm.inference import sample_states

# Jitted once per shape: eager associative scans dispatch thousands of small operations.
forward_backward = jax.jit(inference.forward_backward, static_argnames="method")
viterbi = jax.jit(inference.viterbi)
METHODS = ["sequential", "parallel", "scaled"]


def random_chain(seed, num_states, num_steps, scale=2.0):
    rng = np.random.default_rng(seed)
    log_initial = np.log(rng.dirichlet(np.ones(num_states)))
    log_transition = np.log(rng.dirichlet(np.ones(num_states), num_states))
    log_emission = rng.normal(size=(num_steps, num_states)) * scale
    return log_initial, log_transition, log_emission


def enumerate_paths(log_initial, log_transition, log_emission):
    """Joint log-probability of every state path (brute force, tiny chains only)."""
    num_steps, k = log_emission.shape
    paths = np.array(list(itertools.product(range(k), repeat=num_steps)))
    steps = np.arange(num_steps)
    joint = log_initial[paths[:, 0]] + log_emission[steps, paths].sum(axis=1)
    joint += log_transition[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    return paths, joint


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_forward_backward_matches_enumeration(method):
    log_initial, log_transition, log_emission = random_chain(0, 3, 6)
    paths, joint = enumerate_paths(log_initial, log_transition, log_emission)
    log_lik = logsumexp(joint)
    post = np.exp(joint - log_lik)
    expected_gamma = np.stack([np.bincount(paths[:, t], post, 3) for t in range(6)])
    expected_xi = np.zeros((3, 3))
    for t in range(1, 6):
        np.add.at(expected_xi, (paths[:, t - 1], paths[:, t]), post)

    out = forward_backward(log_initial, log_transition, jnp.asarray(log_emission), 6, method)
    np.testing.assert_allclose(out.log_likelihood, log_lik, rtol=1e-12)
    np.testing.assert_allclose(out.posteriors, expected_gamma, atol=1e-12)
    np.testing.assert_allclose(out.transition_counts, expected_xi, atol=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_parallel_scan_agrees_with_sequential_on_long_sequence():
    log_initial, log_transition, log_emission = random_chain(1, 4, 10_000)
    args = (jnp.asarray(log_initial), jnp.asarray(log_transition), jnp.asarray(log_emission))
    seq = forward_backward(*args, 10_000, "sequential")
    par = forward_backward(*args, 10_000, "parallel")
    np.testing.assert_allclose(par.log_likelihood, seq.log_likelihood, rtol=1e-10)
    np.testing.assert_allclose(par.posteriors, seq.posteriors, atol=1e-10)
    np.testing.assert_allclose(par.transition_counts, seq.transition_counts, rtol=1e-10)
    assert float(seq.transition_counts.sum()) == pytest.approx(9_999)


@pytest.mark.timeout(60)
def test_scaled_scan_agrees_with_log_space_on_long_peaked_sequence():
    # Emissions with a spread of 8 nats and a left-to-right chain with zero transitions: the scaled
    # products meet exp(-inf) = 0 and log(0) = -inf, and messages dominated by one state.
    log_initial, log_transition, log_emission = random_chain(7, 4, 3_000, scale=8.0)
    log_transition[np.tril_indices(4, -1)] = -np.inf
    log_transition[3, 0] = np.log(0.05)  # back to the start, so every state stays reachable
    log_transition -= logsumexp(log_transition, axis=1, keepdims=True)
    args = (jnp.asarray(log_initial), jnp.asarray(log_transition), jnp.asarray(log_emission))
    seq = forward_backward(*args, 3_000, "sequential")
    scaled = forward_backward(*args, 3_000, "scaled")
    assert np.isfinite(float(seq.log_likelihood))
    np.testing.assert_allclose(scaled.log_likelihood, seq.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(scaled.posteriors, seq.posteriors, atol=1e-10)
    np.testing.assert_allclose(scaled.transition_counts, seq.transition_counts, atol=1e-8)
    assert float(scaled.transition_counts[1, 0]) == 0.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_padding_changes_nothing(method):
    log_initial, log_transition, log_emission = random_chain(2, 3, 20)
    # Padding rows hold garbage, including non-finite densities; they must be ignored.
    garbage = np.full((5, 3), np.nan)
    padded = np.concatenate([log_emission, garbage])
    whole = forward_backward(log_initial, log_transition, jnp.asarray(log_emission), 20, method)
    part = forward_backward(log_initial, log_transition, jnp.asarray(padded), 20, method)
    np.testing.assert_allclose(part.log_likelihood, whole.log_likelihood, rtol=1e-13)
    np.testing.assert_allclose(part.posteriors[:20], whole.posteriors, atol=1e-13)
    np.testing.assert_array_equal(part.posteriors[20:], 0.0)
    np.testing.assert_allclose(part.transition_counts, whole.transition_counts, atol=1e-13)

    path, log_prob = viterbi(log_initial, log_transition, jnp.asarray(padded), 20)
    path_whole, log_prob_whole = viterbi(log_initial, log_transition, jnp.asarray(log_emission), 20)
    np.testing.assert_array_equal(path[:20], path_whole)
    np.testing.assert_allclose(log_prob, log_prob_whole, rtol=1e-13)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_empty_sequence_contributes_nothing(method):
    log_initial, log_transition, log_emission = random_chain(3, 2, 4)
    out = forward_backward(log_initial, log_transition, jnp.asarray(log_emission), 0, method)
    assert float(out.log_likelihood) == 0.0
    assert float(jnp.sum(out.posteriors)) == 0.0
    assert float(jnp.sum(out.transition_counts)) == 0.0


@pytest.mark.timeout(60)
def test_viterbi_matches_enumeration():
    log_initial, log_transition, log_emission = random_chain(4, 3, 7)
    paths, joint = enumerate_paths(log_initial, log_transition, log_emission)
    path, log_prob = viterbi(log_initial, log_transition, jnp.asarray(log_emission), 7)
    np.testing.assert_array_equal(path, paths[np.argmax(joint)])
    np.testing.assert_allclose(log_prob, joint.max(), rtol=1e-12)


@pytest.mark.timeout(60)
def test_float32_long_sequence_keeps_precision():
    log_initial, log_transition, log_emission = random_chain(5, 3, 2_000)
    ref = forward_backward(log_initial, log_transition, jnp.asarray(log_emission), 2_000)
    args32 = [jnp.asarray(a, jnp.float32) for a in (log_initial, log_transition, log_emission)]
    for method in METHODS:
        out = forward_backward(*args32, 2_000, method)
        assert out.posteriors.dtype == jnp.float32
        np.testing.assert_allclose(out.posteriors, ref.posteriors, atol=1e-4)
        np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=1e-5)


@pytest.mark.timeout(60)
def test_unknown_method_is_rejected():
    log_initial, log_transition, log_emission = random_chain(6, 2, 3)
    with pytest.raises(ValueError, match="Unknown inference method 'fast'"):
        inference.forward_backward(log_initial, log_transition, log_emission, 3, "fast")


@pytest.mark.timeout(60)
def test_sampled_transitions_follow_the_matrix():
    transition = np.array([[0.9, 0.1], [0.3, 0.7]])
    draw = jax.jit(sample_states, static_argnums=3)
    states = draw(jax.random.key(0), jnp.log(jnp.array([1.0, 0.0])), jnp.log(transition), 20_000)
    assert int(states[0]) == 0
    counts = np.zeros((2, 2))
    np.add.at(counts, (np.asarray(states[:-1]), np.asarray(states[1:])), 1)
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), transition, atol=0.02)
