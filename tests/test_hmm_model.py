"""The HMM as a jaxem model: hmmlearn agreement, monotonicity, recovery, restarts, chunking,
padding, priors and frozen parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hmmlearn import hmm as hmmlearn

import jaxem
from jaxem.hmm import (
    HiddenMarkovModel,
    HMMParams,
    Sequences,
    pad_sequences,
    sequences_from_mask,
)
from jaxem.hmm.emissions import MixtureEmissionParams, MixtureEmissions

LENGTHS = [30, 50, 20]
K, D = 3, 2


def gaussian_data(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(LENGTHS), D)) * 3
    x = rng.normal(size=(sum(LENGTHS), D)) + np.repeat(centres, LENGTHS, axis=0)
    return x, as_jax(pad_sequences(x, LENGTHS))


def as_jax(data):
    return jax.tree.map(jnp.asarray, data)


def hand_params(covariance_type, seed=1):
    rng = np.random.default_rng(seed)
    start = rng.dirichlet(np.ones(K))
    trans = rng.dirichlet(np.ones(K), K)
    means = rng.normal(size=(K, D))
    if covariance_type == "diag":
        covars = rng.uniform(0.5, 2.0, (K, D))
    else:
        a = rng.normal(size=(K, D, D))
        covars = a @ np.swapaxes(a, 1, 2) + np.eye(D)
    return start, trans, means, covars


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_per_iteration_log_likelihood_equals_hmmlearn(covariance_type):
    x, data = gaussian_data()
    start, trans, means, covars = hand_params(covariance_type)
    ref = hmmlearn.GaussianHMM(
        K, covariance_type=covariance_type, covars_prior=0.0, init_params="", n_iter=8, tol=-np.inf
    )
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = start, trans, means, covars
    ref.fit(x, LENGTHS)

    family = jaxem.Gaussian(K, covariance_type, reg_covar=0.0)
    params = HMMParams(
        jnp.asarray(start), jnp.asarray(trans), family.params_from_covariances(means, covars)
    )
    result = jaxem.fit(jaxem.em(HiddenMarkovModel(family)), params, data, max_iter=8, tol=0.0)
    # Both record the total log-likelihood over the sequences at each iteration.
    np.testing.assert_allclose(result.history, np.asarray(ref.monitor_.history), rtol=1e-8)
    np.testing.assert_allclose(result.params.transition, ref.transmat_, atol=1e-8)
    np.testing.assert_allclose(result.params.emissions.means, ref.means_, atol=1e-8)

    model = HiddenMarkovModel(family)
    paths, _ = jax.jit(model.most_likely_states)(result.params, data)
    expected = ref.predict(x, LENGTHS)
    got = np.concatenate([np.asarray(p[:n]) for p, n in zip(paths, LENGTHS, strict=True)])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_log_likelihood_never_decreases_and_map_objective_too():
    _, data = gaussian_data(2)
    for model in (
        HiddenMarkovModel(jaxem.Gaussian(K, "full")),
        HiddenMarkovModel(
            jaxem.Gaussian(K, "diag"),
            initial_concentration=2.0,
            transition_concentration=1.5,
            stickiness=5.0,
        ),
    ):
        result = jaxem.fit(jaxem.em(model), jax.random.key(0), data, max_iter=30, tol=0.0)
        history = np.asarray(result.history)[: int(result.num_iters)]
        assert np.all(np.isfinite(history))
        assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))


def sample_hmm(key, start, trans, means, num_sequences, num_steps):
    family = jaxem.Gaussian(len(start), "diag")
    params = HMMParams(
        jnp.asarray(start),
        jnp.asarray(trans),
        family.params_from_covariances(jnp.asarray(means), jnp.full(means.shape, 0.25)),
    )

    def one(k):
        k_states, k_obs = jax.random.split(k)
        states = jaxem.hmm.sample_states(
            k_states, jnp.log(params.initial), jnp.log(params.transition), num_steps
        )
        return family.sample(k_obs, params.emissions, states), states

    return jax.vmap(one)(jax.random.split(key, num_sequences))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_parameters_are_recovered_from_synthetic_data():
    start = np.array([0.6, 0.3, 0.1])
    trans = np.array([[0.8, 0.1, 0.1], [0.05, 0.9, 0.05], [0.2, 0.2, 0.6]])
    means = np.array([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    obs, _ = sample_hmm(jax.random.key(0), start, trans, means, 20, 200)
    data = Sequences(obs, jnp.full((20,), 200))
    model = HiddenMarkovModel(jaxem.Gaussian(3, "diag"))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(1), data, num_restarts=4, max_iter=100, tol=1e-8
    )
    # Match fitted states to true ones by their means.
    order = np.argmin(
        ((np.asarray(best.params.emissions.means)[None] - means[:, None]) ** 2).sum(-1), axis=1
    )
    assert sorted(order.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(np.asarray(best.params.emissions.means)[order], means, atol=0.1)
    np.testing.assert_allclose(
        np.asarray(best.params.transition)[np.ix_(order, order)], trans, atol=0.05
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_restart_lane_equals_single_fit():
    _, data = gaussian_data(3)
    algo = jaxem.em(HiddenMarkovModel(jaxem.Gaussian(K, "diag")))
    key = jax.random.key(7)
    _, lanes = jaxem.fit_restarts(algo, key, data, num_restarts=3, max_iter=15, tol=0.0)
    keys = jax.random.split(key, 3)
    for i in (0, 2):
        single = jaxem.fit(algo, keys[i], data, max_iter=15, tol=0.0)
        np.testing.assert_allclose(lanes.history[i], single.history, rtol=1e-10)
        np.testing.assert_allclose(lanes.params.transition[i], single.params.transition, atol=1e-10)


@pytest.mark.timeout(120)
def test_chunked_equals_whole_and_parallel_and_scaled_equal_sequential():
    _, data = gaussian_data(4)
    model = HiddenMarkovModel(jaxem.Gaussian(K, "full"))
    params = jax.jit(model.init)(jax.random.key(0), data, None)
    whole = jax.jit(jaxem.em(model).step)(params, data, None)
    chunked = jax.jit(jaxem.em(model, chunk_size=2).step)(params, data, None)
    others = [chunked]
    for inference in ("parallel", "scaled"):
        other_model = HiddenMarkovModel(jaxem.Gaussian(K, "full"), inference=inference)
        others.append(jax.jit(jaxem.em(other_model).step)(params, data, None))
    for other in others:
        np.testing.assert_allclose(other[1], whole[1], rtol=1e-12)
        for a, b in zip(jax.tree.leaves(other[0]), jax.tree.leaves(whole[0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.timeout(120)
def test_extra_padding_and_masks_give_the_same_fit():
    _, data = gaussian_data(5)
    extra = jnp.concatenate([data.observations, jnp.full((3, 7, D), 1e3)], axis=1)
    padded = Sequences(extra, data.lengths)
    mask = np.arange(extra.shape[1])[None, :] < np.asarray(LENGTHS)[:, None]
    masked = as_jax(sequences_from_mask(extra, mask))
    algo = jaxem.em(HiddenMarkovModel(jaxem.Gaussian(K, "diag")))
    params = jax.jit(algo.model.init)(jax.random.key(0), data, None)
    ref = jaxem.fit(algo, params, data, max_iter=5, tol=0.0)
    for other in (padded, masked):
        got = jaxem.fit(algo, params, other, max_iter=5, tol=0.0)
        np.testing.assert_allclose(got.history, ref.history, rtol=1e-12)
        np.testing.assert_allclose(
            got.params.emissions.means, ref.params.emissions.means, atol=1e-12
        )


@pytest.mark.timeout(60)
def test_sequence_weights_count_like_copies():
    x, data = gaussian_data(6)
    doubled = as_jax(pad_sequences(np.concatenate([x, x[:30]]), [*LENGTHS, 30]))
    model = HiddenMarkovModel(jaxem.Gaussian(K, "diag"))
    params = jax.jit(model.init)(jax.random.key(0), data, None)
    e_step = jax.jit(model.e_step)
    stats_w, ll_w = e_step(params, data, jnp.array([2.0, 1.0, 1.0]))
    stats_d, ll_d = e_step(params, doubled, None)
    np.testing.assert_allclose(ll_w, ll_d, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(stats_w), jax.tree.leaves(stats_d), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.timeout(60)
def test_priors_and_frozen_parts_in_the_m_step():
    _, data = gaussian_data(7)
    base = HiddenMarkovModel(jaxem.Gaussian(K, "diag"))
    params = jax.jit(base.init)(jax.random.key(0), data, None)
    stats, _ = jax.jit(base.e_step)(params, data, None)
    sticky = HiddenMarkovModel(
        jaxem.Gaussian(K, "diag"), transition_concentration=2.0, stickiness=10.0
    )
    new = sticky.m_step(params, stats)
    counts = np.asarray(stats.transition) + 1.0 + 10.0 * np.eye(K)
    np.testing.assert_allclose(new.transition, counts / counts.sum(1, keepdims=True), rtol=1e-12)

    # Parts left out of ``update`` are held by the M-step strategy, as its own ``frozen`` would.
    frozen = HiddenMarkovModel(jaxem.Gaussian(K, "diag"), update="e")
    kept = jaxem.fit(jaxem.em(frozen), params, data, max_iter=1, tol=0.0).params
    np.testing.assert_array_equal(kept.initial, params.initial)
    np.testing.assert_array_equal(kept.transition, params.transition)
    assert not np.allclose(kept.emissions.means, params.emissions.means)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("family", "make_data"),
    [
        (jaxem.Categorical(2, (4,), dirichlet_concentration=1.0), "codes"),
        (jaxem.Poisson(2, (1.0, 0.0)), "counts"),
        (jaxem.StudentT(2), "real"),
    ],
    ids=["categorical", "poisson", "student_t"],
)
def test_other_emission_families_fit_monotonically(family, make_data):
    rng = np.random.default_rng(0)
    n = 120
    x = {
        "codes": rng.integers(0, 4, (n, 1)),
        "counts": rng.poisson(3.0, (n, 2)),
        "real": rng.standard_t(4.0, (n, 2)),
    }[make_data]
    data = pad_sequences(x.astype(float), [60, 60])
    model = HiddenMarkovModel(family)
    mstep = jaxem.Gradient(num_steps=5) if make_data == "real" else None
    result = jaxem.fit(jaxem.em(model, mstep), jax.random.key(0), data, max_iter=10, tol=0.0)
    history = np.asarray(result.history)[: int(result.num_iters)]
    assert int(result.status) != int(jaxem.Status.NONFINITE)
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
    assert history[-1] > history[0]


@pytest.mark.timeout(60)
def test_bad_configuration_and_data_are_rejected():
    with pytest.raises(ValueError, match="update has unknown letters 'x'"):
        HiddenMarkovModel(jaxem.Gaussian(2), update="stx")
    with pytest.raises(ValueError, match="Unknown inference 'fast'"):
        HiddenMarkovModel(jaxem.Gaussian(2), inference="fast")
    with pytest.raises(ValueError, match=r"emissions must be a jaxem\.Components family"):
        HiddenMarkovModel("gaussian")
    with pytest.raises(ValueError, match="lengths sum to 5 but X has 6 rows"):
        pad_sequences(np.zeros((6, 1)), [2, 3])
    with pytest.raises(ValueError, match="ones \\(real steps\\) followed by zeros"):
        sequences_from_mask(np.zeros((1, 3, 1)), [[1, 0, 1]])


@pytest.mark.timeout(120)
def test_gaussian_mixture_emissions():
    _, data = gaussian_data(8)
    plain = HiddenMarkovModel(jaxem.Gaussian(K, "diag"))
    single = HiddenMarkovModel(MixtureEmissions(jaxem.Gaussian(K, "diag"), num_mixture=1))
    params = jax.jit(plain.init)(jax.random.key(0), data, None)
    wrapped = params._replace(emissions=MixtureEmissionParams(jnp.ones((K, 1)), params.emissions))
    # One mixture component per state is the plain Gaussian HMM.
    new_plain, ll_plain = jax.jit(jaxem.em(plain).step)(params, data, None)
    new_single, ll_single = jax.jit(jaxem.em(single).step)(wrapped, data, None)
    np.testing.assert_allclose(ll_single, ll_plain, rtol=1e-12)
    np.testing.assert_allclose(new_single.transition, new_plain.transition, atol=1e-12)
    np.testing.assert_allclose(
        new_single.emissions.components.means, new_plain.emissions.means, atol=1e-12
    )

    two = HiddenMarkovModel(MixtureEmissions(jaxem.Gaussian(2 * 2, "diag"), num_mixture=2))
    result = jaxem.fit(jaxem.em(two), jax.random.key(1), data, max_iter=15, tol=0.0)
    history = np.asarray(result.history)[: int(result.num_iters)]
    assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))
    np.testing.assert_allclose(result.params.emissions.weights.sum(axis=1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="num_mixture must be a positive integer dividing"):
        MixtureEmissions(jaxem.Gaussian(5), num_mixture=2)
