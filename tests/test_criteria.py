"""BIC, AIC and ICL for every model: hand-counted parameters, the HMM path entropy against
enumeration of every path, and the HMM estimators against hmmlearn."""

import itertools
import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hmmlearn import hmm as hmmlearn

import jaxem
from jaxem.core.inputs import prepare_data
from jaxem.hmm import HiddenMarkovModel, MixtureEmissions, pad_sequences
from jaxem.models import Gaussian
from jaxem.select import num_parameters

pytestmark = pytest.mark.timeout(120)


# ---- HMM path entropy against enumeration -------------------------------------------------------


def _random_hmm(key, k, d, inference):
    """A diagonal Gaussian HMM with probabilities drawn away from 0 and overlapping states."""
    keys = jax.random.split(key, 4)
    initial = jax.random.dirichlet(keys[0], jnp.full(k, 5.0))
    transition = jax.random.dirichlet(keys[1], jnp.full(k, 5.0), (k,))
    means = jax.random.normal(keys[2], (k, d))
    scales = jax.random.uniform(keys[3], (k, d), minval=0.8, maxval=1.5)
    model = HiddenMarkovModel(Gaussian(k, "diag"), inference=inference)
    return model, jaxem.HMMParams(initial, transition, jaxem.GaussianParams(means, 1.0 / scales))


def _enumerate_paths(model, params, observations, length):
    """``(log p(x), H(z | x))`` of one sequence by summing over all K^length state paths."""
    k = model.num_components
    log_em = np.asarray(model.log_emissions(params, jnp.asarray(observations)[None]))[0, :length]
    log_pi, log_a = np.log(np.asarray(params.initial)), np.log(np.asarray(params.transition))
    paths = np.array(list(itertools.product(range(k), repeat=length)))
    log_joint = log_pi[paths[:, 0]] + log_em[np.arange(length), paths].sum(axis=1)
    log_joint += log_a[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    log_lik = np.logaddexp.reduce(log_joint)
    log_post = log_joint - log_lik
    return float(log_lik), float(-np.sum(np.exp(log_post) * log_post))


@pytest.mark.parametrize(("k", "inference"), [(2, "sequential"), (3, "parallel")])
def test_path_entropy_equals_enumeration(k, inference):
    """Entropy from the marginals == brute force over every path, with padding and weights; ICL
    is BIC plus twice it, and BIC's sample size is the weighted number of time steps."""
    model, params = _random_hmm(jax.random.key(k), k, 2, inference)
    lengths, weights = [4, 3, 4], np.array([1.0, 2.5, 0.0])
    data = pad_sequences(np.asarray(jax.random.normal(jax.random.key(10 + k), (11, 2))), lengths)
    exact = [_enumerate_paths(model, params, data.observations[b], lengths[b]) for b in range(3)]
    log_lik = float(np.dot(weights, [e[0] for e in exact]))
    entropy = float(np.dot(weights, [e[1] for e in exact]))
    assert min(e[1] for e in exact) > 0.1  # uncertain posteriors, so the check has teeth

    p = (k - 1) + k * (k - 1) + 2 * k * 2  # initial, transitions, K x D means and variances
    steps = 1.0 * 4 + 2.5 * 3
    bic = jaxem.bic(params, model, data, weights)
    assert bic == pytest.approx(-2 * log_lik + p * math.log(steps), rel=1e-10)
    assert jaxem.aic(params, model, data, weights) == pytest.approx(-2 * log_lik + 2 * p, rel=1e-10)
    # Chunks of 2 sequences and a tail of 1 against the whole batch of the BIC.
    icl = jaxem.icl(params, model, data, weights, chunk_size=2)
    assert icl == pytest.approx(bic + 2 * entropy, rel=1e-10)
    assert icl > bic


def test_entropy_is_zero_for_a_certain_path():
    """Separated emissions and a deterministic chain: H(z | x) = 0 (never a negative rounding)."""
    model = HiddenMarkovModel(Gaussian(2, "spherical"))
    params = jaxem.HMMParams(
        jnp.array([1.0, 0.0]),
        jnp.array([[0.0, 1.0], [1.0, 0.0]]),
        jaxem.GaussianParams(jnp.array([[-50.0], [50.0]]), jnp.ones(2)),
    )
    data = pad_sequences(np.array([[-50.0], [50.0], [-50.0], [50.0], [-50.0]]), [5])
    entropy = jax.jit(model.entropy)(params, jax.tree.map(jnp.asarray, data), None)
    assert float(entropy) == 0.0


def test_hmm_criteria_reject_unsequenced_data():
    model = HiddenMarkovModel(Gaussian(2))
    params = jaxem.HMMParams(
        jnp.full(2, 0.5),
        jnp.full((2, 2), 0.5),
        jaxem.GaussianParams(jnp.zeros((2, 1)), jnp.ones((2, 1, 1))),
    )
    with pytest.raises(ValueError, match=r"needs its data as jaxem\.Sequences, got ndarray: pass "):
        jaxem.bic(params, model, np.zeros((4, 1)))


# ---- HMM estimators against hmmlearn ------------------------------------------------------------


def _two_regime_data(d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (40, d)), rng.normal(3, 0.7, (50, d))])
    return x, [30, 60]


def _hmmlearn_criteria(ref, x, lengths):
    return ref.bic(x, lengths), ref.aic(x, lengths)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize(("k", "d"), [(2, 2), (3, 4)])
def test_gaussian_hmm_counts_equal_hmmlearn_and_hand_counts(covariance_type, k, d):
    """hmmlearn counts every parameter whatever ``params`` leaves out, and so do we."""
    ref = hmmlearn.GaussianHMM(k, covariance_type, params="st")
    ref.n_features = d
    covariances = {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]
    by_hand = (k - 1) + k * (k - 1) + k * d + covariances
    assert sum(ref._get_n_fit_scalars_per_param().values()) == by_hand
    for update in ("ste", "st"):
        model = HiddenMarkovModel(Gaussian(k, covariance_type), update=update)
        assert num_parameters(model, d) == by_hand


def _own_shape(full: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances as full matrices ``[K, D, D]`` (``covars_``) in the type's own shape, which
    hmmlearn's ``covars_`` setter takes."""
    if covariance_type == "full":
        return full
    if covariance_type == "tied":
        return full[0]
    diagonal = np.diagonal(full, axis1=-2, axis2=-1)
    return diagonal if covariance_type == "diag" else diagonal[:, 0]


@pytest.mark.parametrize(
    "covariance_type",
    ["diag", *(pytest.param(c, marks=pytest.mark.slow) for c in ("full", "tied", "spherical"))],
)
def test_gaussian_hmm_bic_aic_equal_hmmlearn(covariance_type):
    x, lengths = _two_regime_data()
    ours = jaxem.GaussianHMM(2, covariance_type, n_iter=5, random_state=0).fit(x, lengths)
    ref = hmmlearn.GaussianHMM(2, covariance_type, init_params="", params="")
    ref.n_features = x.shape[1]
    ref.startprob_, ref.transmat_ = ours.startprob_, ours.transmat_
    ref.means_, ref.covars_ = ours.means_, _own_shape(ours.covars_, covariance_type)
    want_bic, want_aic = _hmmlearn_criteria(ref, x, lengths)
    assert ours.bic(x, lengths) == pytest.approx(want_bic, rel=1e-8)
    assert ours.aic(x, lengths) == pytest.approx(want_aic, rel=1e-8)
    # The functional form on the fitted model: the same BIC, and an ICL above it (overlap).
    data = pad_sequences(x, lengths)
    assert jaxem.bic(ours.params_, ours.model_, data) == pytest.approx(want_bic, rel=1e-8)
    assert jaxem.icl(ours.params_, ours.model_, data) > want_bic


def test_categorical_hmm_bic_aic_equal_hmmlearn():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.integers(0, 2, (40, 1)), rng.integers(1, 4, (40, 1))])
    ours = jaxem.CategoricalHMM(2, n_iter=5, random_state=0).fit(x, [50, 30])
    ref = hmmlearn.CategoricalHMM(2, init_params="", params="", n_features=4)
    ref.startprob_, ref.transmat_ = ours.startprob_, ours.transmat_
    ref.emissionprob_ = ours.emissionprob_
    assert sum(ref._get_n_fit_scalars_per_param().values()) == 1 + 2 + 2 * 3
    want_bic, want_aic = _hmmlearn_criteria(ref, x, [50, 30])
    assert ours.bic(x, [50, 30]) == pytest.approx(want_bic, rel=1e-8)
    assert ours.aic(x, [50, 30]) == pytest.approx(want_aic, rel=1e-8)


@pytest.mark.slow
def test_poisson_hmm_bic_aic_equal_hmmlearn():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.poisson(1.0, (40, 3)), rng.poisson(6.0, (40, 3))])
    ours = jaxem.PoissonHMM(2, n_iter=5, random_state=0).fit(x, [20, 60])
    ref = hmmlearn.PoissonHMM(2, init_params="", params="")
    ref.n_features = 3
    ref.startprob_, ref.transmat_, ref.lambdas_ = ours.startprob_, ours.transmat_, ours.lambdas_
    assert sum(ref._get_n_fit_scalars_per_param().values()) == 1 + 2 + 2 * 3
    want_bic, want_aic = _hmmlearn_criteria(ref, x, [20, 60])
    assert ours.bic(x, [20, 60]) == pytest.approx(want_bic, rel=1e-8)
    assert ours.aic(x, [20, 60]) == pytest.approx(want_aic, rel=1e-8)


# ---- every model --------------------------------------------------------------------------------

N, D, K = 60, 3, 2


def _rows(seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "real":
        return np.concatenate([rng.normal(-2, 1, (N // 2, D)), rng.normal(2, 1, (N // 2, D))])
    if kind == "positive":
        return rng.gamma(2.0, 1.5, (N, D))
    if kind == "unit":
        x = rng.normal(size=(N, D)) + np.array([2.0, 0, 0])
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if kind == "binary":
        return rng.integers(0, 2, (N, D)).astype(float)
    if kind == "codes":
        return np.stack([rng.integers(0, n, N) for n in (3, 2, 4)], axis=1).astype(float)
    if kind == "counts":
        return rng.poisson(3.0, (N, D)).astype(float)
    raise AssertionError(kind)


def _regression(seed, target):
    rng = np.random.default_rng(seed)
    covariates = rng.normal(size=(N, D))
    eta = covariates @ np.array([1.0, -0.5, 0.3])
    y = {
        "normal": eta + rng.normal(size=N),
        "binary": (rng.random(N) < 1 / (1 + np.exp(-eta))).astype(float),
        "counts": rng.poisson(np.exp(0.3 * eta)).astype(float),
    }[target]
    return covariates, y


def _with_missing(x):
    x = x.copy()
    x[::7, 1] = np.nan
    x[3::11, 0] = np.nan
    return x


def _labelled(model, x):
    labels = np.full(N, -1)
    labels[:3], labels[-3:] = 0, 1
    return model.components.data(x, labels)


# Parameter counts by hand for K = 2 components (or states) and D = 3 features or covariates;
# every mixture adds K - 1 = 1 weight, every HMM K - 1 = 1 initial and K (K - 1) = 2 transition
# probabilities.
CASES = {
    "gaussian-full": (lambda: jaxem.Mixture(Gaussian(K, "full")), "real", 2 * 3 + 2 * 6 + 1),
    "gaussian-tied": (lambda: jaxem.Mixture(Gaussian(K, "tied")), "real", 2 * 3 + 6 + 1),
    "gaussian-diag": (lambda: jaxem.Mixture(Gaussian(K, "diag")), "real", 2 * 3 + 2 * 3 + 1),
    "gaussian-spherical": (lambda: jaxem.Mixture(Gaussian(K, "spherical")), "real", 6 + 2 + 1),
    # means, full covariances and a degree of freedom per component
    "student-t": (lambda: jaxem.Mixture(jaxem.StudentT(K)), "real", 2 * (3 + 6 + 1) + 1),
    "gamma": (lambda: jaxem.Mixture(jaxem.Gamma(K)), "positive", 2 * 2 * 3 + 1),
    # a unit direction (D - 1 free) and a concentration per component
    "von-mises-fisher": (lambda: jaxem.Mixture(jaxem.VonMisesFisher(K)), "unit", 2 * 3 + 1),
    "bernoulli": (lambda: jaxem.Mixture(jaxem.Bernoulli(K)), "binary", 2 * 3 + 1),
    # levels (3, 2, 4): 2 + 1 + 3 free probabilities per component
    "categorical": (
        lambda: jaxem.Mixture(jaxem.Categorical(K, (3, 2, 4))),
        "codes",
        2 * 6 + 1,
    ),
    "multinomial": (lambda: jaxem.Mixture(jaxem.Multinomial(K)), "counts", 2 * 2 + 1),
    "poisson": (lambda: jaxem.Mixture(jaxem.Poisson(K)), "counts", 2 * 3 + 1),
    "exponential": (lambda: jaxem.Mixture(jaxem.Exponential(K)), "positive", 2 * 3 + 1),
    # coefficients, intercept and noise variance per component
    "linear-regression": (
        lambda: jaxem.Mixture(jaxem.LinearRegression(K)),
        "regression-normal",
        2 * 5 + 1,
    ),
    "linear-regression-no-intercept": (
        lambda: jaxem.Mixture(jaxem.LinearRegression(K, fit_intercept=False)),
        "regression-normal",
        2 * 4 + 1,
    ),
    "logistic-experts": (
        lambda: jaxem.Mixture(jaxem.LogisticRegression(K)),
        "regression-binary",
        2 * 4 + 1,
    ),
    "poisson-experts": (
        lambda: jaxem.Mixture(jaxem.PoissonRegression(K)),
        "regression-counts",
        2 * 4 + 1,
    ),
    # the gate: (K - 1) x (D + 1) identifiable softmax coefficients and intercepts, no weights
    "gated-linear": (
        lambda: jaxem.GatedMixture(jaxem.LinearRegression(K)),
        "regression-normal",
        4 + 2 * 5,
    ),
    "gated-logistic": (
        lambda: jaxem.GatedMixture(jaxem.LogisticRegression(K)),
        "regression-binary",
        4 + 2 * 4,
    ),
    "gated-poisson": (
        lambda: jaxem.GatedMixture(jaxem.PoissonRegression(K)),
        "regression-counts",
        4 + 2 * 4,
    ),
    "missing-gaussian-full": (
        lambda: jaxem.Mixture(jaxem.MissingValues(Gaussian(K, "full"))),
        "missing-real",
        2 * 3 + 2 * 6 + 1,
    ),
    "missing-gaussian-spherical": (
        lambda: jaxem.Mixture(jaxem.MissingValues(Gaussian(K, "spherical"))),
        "missing-real",
        6 + 2 + 1,
    ),
    "missing-categorical": (
        lambda: jaxem.Mixture(jaxem.MissingValues(jaxem.Categorical(K, (3, 2, 4)))),
        "missing-codes",
        2 * 6 + 1,
    ),
    "missing-poisson": (
        lambda: jaxem.Mixture(jaxem.MissingValues(jaxem.Poisson(K))),
        "missing-counts",
        2 * 3 + 1,
    ),
    "labelled-gaussian-tied": (
        lambda: jaxem.Mixture(jaxem.Labelled(Gaussian(K, "tied"))),
        "labelled-real",
        2 * 3 + 6 + 1,
    ),
    "labelled-student-t": (
        lambda: jaxem.Mixture(jaxem.Labelled(jaxem.StudentT(K))),
        "labelled-real",
        2 * (3 + 6 + 1) + 1,
    ),
    "hmm-gaussian-diag": (
        lambda: HiddenMarkovModel(Gaussian(K, "diag")),
        "sequences-real",
        1 + 2 + 2 * 3 + 2 * 3,
    ),
    "hmm-categorical": (
        lambda: HiddenMarkovModel(jaxem.Categorical(K, (3, 2, 4))),
        "sequences-codes",
        1 + 2 + 2 * 6,
    ),
    "hmm-poisson": (
        lambda: HiddenMarkovModel(jaxem.Poisson(K)),
        "sequences-counts",
        1 + 2 + 2 * 3,
    ),
    # two diagonal Gaussians per state: 1 free mixture weight per state and 4 components
    "hmm-gaussian-mixture-emissions": (
        lambda: HiddenMarkovModel(MixtureEmissions(Gaussian(2 * K, "diag"), 2)),
        "sequences-real",
        1 + 2 + 2 * 1 + 4 * (3 + 3),
    ),
}


def _data(model, kind, seed=0):
    family, _, rest = kind.partition("-")
    if family == "regression":
        return _regression(seed, rest)
    if family == "missing":
        return _with_missing(_rows(seed, rest))
    if family == "labelled":
        return _labelled(model, _rows(seed, rest))
    if family == "sequences":
        return pad_sequences(_rows(seed, rest), [25, 20, 15])
    return _rows(seed, kind)


# One case per code path runs by default (each compiles an initialisation and the criteria); the
# rest are slow.
QUICK = {
    "gaussian-full",
    "student-t",
    "categorical",
    "gated-logistic",
    "missing-gaussian-full",
    "missing-poisson",
    "labelled-gaussian-tied",
    "hmm-gaussian-mixture-emissions",
}


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_every_model_has_finite_criteria_with_the_hand_counted_parameters(name):
    make, kind, expected = CASES[name]
    model = make()
    data = _data(model, kind)
    prepared, _ = prepare_data(data, allow_missing=getattr(model, "handles_missing", False))
    params = jax.jit(model.init)(jax.random.key(0), prepared, None)
    bic, aic, icl = (f(params, model, data) for f in (jaxem.bic, jaxem.aic, jaxem.icl))
    assert np.isfinite([bic, aic, icl]).all()
    assert icl >= bic
    # bic - aic = p (log n - 2): the count as the criteria use it, n = rows or time steps.
    assert (bic - aic) / (math.log(N) - 2) == pytest.approx(expected, abs=1e-8)


@dataclass(frozen=True)
class _Uncounted(jaxem.Components):
    """A family without ``num_free_parameters``."""

    num_components: int


@pytest.mark.parametrize(
    "model",
    [
        jaxem.Mixture(_Uncounted(2)),
        HiddenMarkovModel(_Uncounted(2)),
        jaxem.GatedMixture(_Uncounted(2)),
    ],
    ids=["mixture", "hmm", "gated"],
)
def test_a_family_without_a_count_is_named(model):
    message = (
        "_Uncounted does not define num_free_parameters(num_features), which the information "
        "criteria need: add that method to the family."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        num_parameters(model, 3)
