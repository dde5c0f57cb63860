"""The contract every family keeps, checked once here for all of them.

Each case is a model (a family in a :class:`jaxem.Mixture`, a wrapper, a gated mixture, an HMM),
small data it fits and the M-step it fits with. Closed form: Gaussian (full, tied, diag,
spherical), Bernoulli (MAP), categorical, exponential, multinomial, Poisson, linear regression,
MissingValues (Gaussian diag and full), Labelled (Gaussian), a Gaussian HMM. Gradient M-step (a few
Adam steps; the family files fit with L-BFGS): Student-t, gamma, von Mises-Fisher, logistic and
Poisson regression, gated linear and gated Poisson experts.

Over every case:

- ``jaxem.testing.check_model`` (slow; not for the second MissingValues and the second gated case,
  whose siblings run it): monotone over twenty restarts, restart lane == single fit, the data's
  dtype kept, the fitted parameters' unconstrained round trip, chunked (uneven chunks) == whole,
  no recompilation for an equal configuration, jit == no jit, and (closed-form mixtures) the
  gradient M-step reaching the closed-form fixed point; once more on float32 data;
- twenty restarts stopped by a tolerance are monotone and finite, and their lanes equal single
  fits: same iterations, history to 1e-9, parameters to 1e-9 (closed form) or the case's tolerance;
- the declared constraints (``jaxem.core.accelerate.to_unconstrained`` / ``from_unconstrained``):
  points far out in the unconstrained space map to parameters a fit can start from (finite
  log-likelihood) and back unchanged;
- float32 data give a float32 start, EM step, log-likelihood and unconstrained parameters.

Over the closed-form cases: chunked == whole to 1e-9 (parameters) and 1e-11 (history); where the
family's M-step sets every block, it maximises Q plus the log prior (MAP included). Over the
gradient cases: each of twenty fits stays monotone and finite under a deliberately bad optimizer.
Wrappers declare their family's constraints and closed-form blocks.

The checks reuse the programs ``check_model`` compiled for the same settings, so they cost little
more than their fits. The family files keep what is their own: reference densities, recovery, MAP
formulas, L-BFGS restarts on the recovery fits, errors.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_checks import assert_monotone

import jaxem
from jaxem.core.accelerate import from_unconstrained, to_unconstrained
from jaxem.hmm import HiddenMarkovModel, pad_sequences
from jaxem.models.glm import (
    GatedMixture,
    GateParams,
    GLMParams,
    LogisticRegression,
    PoissonRegression,
)
from jaxem.models.regression import RegressionParams
from jaxem.testing import check_model

pytestmark = pytest.mark.timeout(300)

NUM_ROWS = 80  # rows of most cases' data; chunks of 37 rows are uneven
NUM_RESTARTS = 20


# ---- data ----------------------------------------------------------------------------------------


def two_blobs(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.normal(size=(40, 2)), np.array([4.0, 2.0]) + 0.6 * rng.normal(size=(40, 2))]
    )


def bernoulli_data(rng):
    probs = np.where(rng.random(NUM_ROWS)[:, None] < 0.5, 0.2, 0.8)
    return (rng.random((NUM_ROWS, 5)) < probs).astype(float)


def categorical_data(rng):
    # Features with different numbers of levels (padded probabilities), as float codes: the
    # contract compares the parameters' dtype with the data's.
    groups = [
        [[0.7, 0.2, 0.1], [0.8, 0.2], [0.1, 0.2, 0.3, 0.4]],
        [[0.1, 0.3, 0.6], [0.3, 0.7], [0.5, 0.3, 0.1, 0.1]],
    ]
    half = NUM_ROWS // 2
    blocks = [np.stack([rng.choice(len(p), half, p=p) for p in g], axis=1) for g in groups]
    return np.concatenate(blocks).astype(float)


def multinomial_data(rng):
    half = NUM_ROWS // 2
    return np.concatenate(
        [
            rng.multinomial(20, [0.5, 0.3, 0.1, 0.1], half),
            rng.multinomial(20, [0.1, 0.1, 0.3, 0.5], half),
        ]
    ).astype(float)


def poisson_data(rng):
    rates = np.where(rng.random(NUM_ROWS)[:, None] < 0.4, 1.0, 6.0)
    return rng.poisson(rates, (NUM_ROWS, 3)).astype(float)


def exponential_data(rng):
    scales = np.where(rng.random(NUM_ROWS)[:, None] < 0.5, 0.5, 4.0)
    return rng.exponential(scales, (NUM_ROWS, 2))


def regression_data(rng):
    covariates = rng.normal(size=(NUM_ROWS, 2))
    slopes = np.where(rng.random(NUM_ROWS)[:, None] < 0.5, [2.0, -1.0], [-1.5, 0.5])
    target = np.sum(covariates * slopes, axis=1) + 0.5 * rng.normal(size=NUM_ROWS)
    return covariates, target


def missing_data(rng):
    x = two_blobs(rng)
    x[rng.random(x.shape) < 0.15] = np.nan
    x[np.all(np.isnan(x), axis=1), 0] = 0.0  # every row keeps one value
    return x


def labelled_data(rng):
    x = two_blobs(rng)
    labels = np.full(len(x), -1)
    labels[:5], labels[40:45] = 0, 1  # a few labelled rows per component
    return jaxem.Labelled(jaxem.Gaussian(2, "diag")).data(x, labels)


def student_t_data(rng):
    params = jaxem.StudentTParams(
        means=jnp.array([[0.0, 0.0], [4.0, 2.0]]),
        precision_cholesky=jnp.array([[[1.0, 0.5], [0.0, 2.0]], [[1.5, 0.0], [0.0, 1.0]]]),
        dof=jnp.array([3.0, 8.0]),
    )
    labels = jnp.asarray(rng.random(NUM_ROWS) < 0.5, int)
    return jax.jit(jaxem.StudentT(2).sample)(jax.random.key(0), params, labels)


def gamma_data(rng):
    params = jaxem.GammaParams(
        shapes=jnp.array([[2.0, 9.0], [12.0, 1.5]]), means=jnp.array([[1.0, 6.0], [5.0, 0.5]])
    )
    labels = jnp.asarray(rng.random(NUM_ROWS) < 0.4, int)
    return jax.jit(jaxem.Gamma(2).sample)(jax.random.key(0), params, labels)


def von_mises_fisher_data(rng):
    params = jaxem.VonMisesFisherParams(
        directions=jnp.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]),
        concentrations=jnp.array([5, 20.0]),
    )
    labels = jnp.asarray(rng.random(120) < 0.5, int)
    return jax.jit(jaxem.VonMisesFisher(2).sample)(jax.random.key(0), params, labels)


def logistic_data(rng):
    covariates = rng.normal(size=(NUM_ROWS, 2))
    truth = GLMParams(jnp.array([[5.0, 0.0], [0.0, -5.0]]), jnp.array([1.0, -1.0]))
    labels = jnp.asarray(np.arange(NUM_ROWS) % 5 >= 3, int)
    target = LogisticRegression(2).sample(jax.random.key(4), truth, labels, covariates)
    return covariates, np.asarray(target)


def poisson_regression_data(rng):
    covariates = rng.normal(size=(NUM_ROWS, 2))
    truth = GLMParams(jnp.array([[2.0, -1.0], [-1.5, 0.5]]), jnp.array([0.5, 1.5]))
    labels = jnp.asarray(np.arange(NUM_ROWS) % 5 >= 3, int)
    target = PoissonRegression(2).sample(jax.random.key(1), truth, labels, covariates)
    return covariates, np.asarray(target)


def gated_data(rng):
    covariates = rng.normal(size=(NUM_ROWS, 1))
    gate = GateParams(jnp.array([[2.5], [-2.5]]), jnp.zeros(2))
    labels = jax.random.categorical(jax.random.key(7), covariates @ gate.coefficients.T)
    experts = RegressionParams(
        jnp.array([[2.0], [-1.0]]), jnp.array([1.0, -2.0]), jnp.array([0.09, 0.25])
    )
    target = jaxem.LinearRegression(2).sample(jax.random.key(8), experts, labels, covariates)
    return covariates, np.asarray(target)


def gated_poisson_data(rng):
    covariates = rng.normal(size=(150, 2))
    gate_logits = covariates @ np.array([[2.0, -2.0], [0.0, 0.0]])
    labels = jax.random.categorical(jax.random.key(11), gate_logits)
    truth = GLMParams(jnp.array([[2.0, -1.0], [-1.5, 0.5]]), jnp.array([0.5, 1.5]))
    target = PoissonRegression(2).sample(jax.random.key(12), truth, labels, covariates)
    return covariates, np.asarray(target)


def hmm_data(rng):
    lengths = [8, 12, 6, 10]
    centres = rng.normal(size=(len(lengths), 2)) * 3
    x = rng.normal(size=(sum(lengths), 2)) + np.repeat(centres, lengths, axis=0)
    return jax.tree.map(np.asarray, pad_sequences(x, lengths))


# ---- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A model, the data it fits and the ``check_model`` settings."""

    model: Callable[[], Any]
    data: Callable[[np.random.Generator], Any]
    mstep: Any = None
    max_iter: int = 10
    chunk_size: int = 37
    fixed_point: bool = True
    check_model: bool = True  # False: the cheaper checks only (check_model covers a sibling case)
    lane_rtol: float = 1e-9  # restart lane against single fit
    lane_atol: float = 1e-12

    @property
    def closed_form(self) -> bool:
        return self.mstep is None

    def build(self) -> tuple[Any, Any]:
        """A new model and (a copy of) the case's data, drawn once."""
        return self.model(), jax.tree.map(np.copy, case_data(self))


@functools.cache
def case_data(case: Case) -> Any:
    return jax.tree.map(np.asarray, case.data(np.random.default_rng(0)))


def mixture(family: Callable[[], Any]) -> Callable[[], jaxem.Mixture]:
    return lambda: jaxem.Mixture(family())


# The contract is the family's, not the optimiser's: a few Adam steps per M-step compile in about
# half the time of L-BFGS with its line search (which the family files' own fits use throughout, and
# test_gradient.py checks in depth).
GRADIENT = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.1), num_steps=3)
CASES = {
    # The full-covariance fixed point is checked in test_gradient.py.
    **{
        f"gaussian-{kind}": Case(
            mixture(lambda kind=kind: jaxem.Gaussian(2, kind)),
            two_blobs,
            max_iter=15,
            fixed_point=kind != "full",
        )
        for kind in ("full", "tied", "diag", "spherical")
    },
    "bernoulli": Case(mixture(lambda: jaxem.Bernoulli(2, beta_prior=(4.0, 2.0))), bernoulli_data),
    "categorical": Case(
        mixture(lambda: jaxem.Categorical(2, num_levels=(3, 2, 4))), categorical_data
    ),
    "exponential": Case(mixture(lambda: jaxem.Exponential(2)), exponential_data),
    # Random responsibilities, not k-means++: nearest-seed assignment on proportions meets exact
    # ties, which the differently fused vmapped and single programs may break differently.
    "multinomial": Case(
        mixture(lambda: jaxem.Multinomial(2, init_method="random_resp")), multinomial_data
    ),
    "poisson": Case(mixture(lambda: jaxem.Poisson(2)), poisson_data),
    "linear-regression": Case(mixture(lambda: jaxem.LinearRegression(2)), regression_data),
    **{
        f"missing-gaussian-{kind}": Case(
            mixture(lambda kind=kind: jaxem.MissingValues(jaxem.Gaussian(2, kind))),
            missing_data,
            fixed_point=False,
            check_model=kind == "diag",  # full's row batches: test_gaussian_missing.py
        )
        for kind in ("full", "diag")
    },
    "labelled-gaussian": Case(
        mixture(lambda: jaxem.Labelled(jaxem.Gaussian(2, "diag"))), labelled_data
    ),
    # An optimiser inside the M-step amplifies rounding: restart lanes match single fits to the
    # tolerances below (those the family tests held them to).
    "student-t": Case(
        mixture(lambda: jaxem.StudentT(2)),
        student_t_data,
        GRADIENT,
        max_iter=6,
        fixed_point=False,
        lane_rtol=1e-6,
        lane_atol=1e-10,
    ),
    "gamma": Case(
        mixture(lambda: jaxem.Gamma(2)),
        gamma_data,
        GRADIENT,
        max_iter=8,
        fixed_point=False,
        lane_rtol=1e-7,
    ),
    "von-mises-fisher": Case(
        mixture(lambda: jaxem.VonMisesFisher(2)),
        von_mises_fisher_data,
        GRADIENT,
        max_iter=8,
        fixed_point=False,
        lane_rtol=1e-7,
    ),
    "logistic-regression": Case(
        mixture(lambda: LogisticRegression(2, coefficient_precision=0.1)),
        logistic_data,
        GRADIENT,
        max_iter=8,
        lane_rtol=1e-5,
        lane_atol=1e-6,
    ),
    "poisson-regression": Case(
        mixture(lambda: PoissonRegression(2)),
        poisson_regression_data,
        GRADIENT,
        max_iter=8,
        lane_rtol=1e-5,
        lane_atol=1e-6,
    ),
    "gated-linear-regression": Case(
        lambda: GatedMixture(jaxem.LinearRegression(2), gate_precision=0.01),
        gated_data,
        GRADIENT,
        max_iter=8,
        fixed_point=False,
        lane_rtol=1e-6,
        lane_atol=1e-10,
    ),
    "gated-poisson-regression": Case(
        lambda: GatedMixture(PoissonRegression(2)),
        gated_poisson_data,
        jaxem.Gradient(num_steps=10),
        max_iter=8,
        fixed_point=False,
        check_model=False,
        lane_rtol=1e-5,
        lane_atol=1e-6,
    ),
    # The rows of an HMM's data are sequences: chunks of 3 split the 4 sequences unevenly.
    "gaussian-hmm": Case(
        lambda: HiddenMarkovModel(jaxem.Gaussian(3, "diag")), hmm_data, chunk_size=3
    ),
}
CLOSED_FORM = sorted(name for name, case in CASES.items() if case.closed_form)
GRADIENT_CASES = sorted(name for name, case in CASES.items() if not case.closed_form)


def _params(case_names, *, slow=False, marks=None):
    """The case names as parameters, each with the marks given for it (and ``slow`` if asked)."""
    marks = marks or {}
    slow_marks = [pytest.mark.slow] if slow else []
    return [
        pytest.param(name, marks=slow_marks + marks.get(name, [])) for name in sorted(case_names)
    ]


def jitter(tree, key, scale):
    """``tree`` plus independent normal noise of standard deviation ``scale`` on every leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    moved = [
        a + scale * jax.random.normal(k, a.shape, a.dtype)
        for a, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, moved)


def random_params(model, x, key, scale):
    """Valid parameters of ``model`` for data ``x``: the image of a normal draw of standard
    deviation ``scale`` in its unconstrained space (the shapes are those of ``model.init``)."""
    shapes = jax.eval_shape(lambda: to_unconstrained(model, model.init(jax.random.key(0), x, None)))
    origin = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return from_unconstrained(model, jitter(origin, key, scale))


# ---- check_model ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", _params([name for name, case in CASES.items() if case.check_model], slow=True)
)
def test_check_model(name):
    case = CASES[name]
    model, x = case.build()
    check_model(
        model,
        x,
        mstep=case.mstep,
        max_iter=case.max_iter,
        num_restarts=NUM_RESTARTS,
        chunk_size=case.chunk_size,
        fixed_point=case.fixed_point,
    )


def test_check_model_in_float32():
    x = two_blobs(np.random.default_rng(0)).astype(np.float32)
    check_model(jaxem.Mixture(jaxem.Gaussian(2, "spherical")), x, max_iter=10, fixed_point=False)


# ---- restarts and chunks, to the last digits -----------------------------------------------------


def _assert_trees_equal(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_restart_lanes_equal_single_fits_to_the_last_digits(name):
    """Twenty restarts stopped by a tolerance are monotone and finite, and lane i is the single fit
    from key i: same iterations, same history to 1e-9, parameters to the case's tolerance (1e-9 for
    the closed form, where only summation order differs; an optimiser in the M-step amplifies
    rounding)."""
    case = CASES[name]
    model, x = case.build()
    algo = jaxem.em(model, case.mstep)
    keys = jax.random.split(jax.random.key(5), NUM_RESTARTS)
    _, lanes = jaxem.fit_restarts(algo, keys, x, max_iter=case.max_iter, tol=1e-4)
    assert np.all(np.asarray(lanes.status) != jaxem.Status.NONFINITE)
    assert_monotone(lanes.history, slack=1e-10)
    for i in (0, 7, 13):
        single = jaxem.fit(algo, keys[i], x, max_iter=case.max_iter, tol=1e-4)
        assert int(single.num_iters) == int(lanes.num_iters[i])
        np.testing.assert_allclose(single.history, lanes.history[i], rtol=1e-9)
        lane = jax.tree.map(lambda a, i=i: a[i], lanes.params)
        _assert_trees_equal(lane, single.params, case.lane_rtol, case.lane_atol)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_chunks_equal_the_whole_data_to_the_last_digits(name):
    """Chunked and whole-data fits with the closed form: parameters to 1e-9, history to 1e-11."""
    case = CASES[name]
    model, x = case.build()
    algo = jaxem.em(model)
    start = jaxem.fit(algo, jax.random.key(3), x, max_iter=case.max_iter, tol=0.0).params
    whole = jaxem.fit(algo, start, x, max_iter=case.max_iter, tol=0.0)
    chunked_algo = dataclasses.replace(algo, chunk_size=case.chunk_size)
    chunked = jaxem.fit(chunked_algo, start, x, max_iter=case.max_iter, tol=0.0)
    _assert_trees_equal(whole.params, chunked.params, 1e-9, 1e-12)
    np.testing.assert_allclose(whole.history, chunked.history, rtol=1e-11)


# ---- gradient M-step: monotone under a bad optimizer ---------------------------------------------


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradient_m_step_is_monotone_under_a_huge_learning_rate(name):
    """A deliberately bad optimizer (SGD at rate 1000): the acceptance rule of the gradient M-step
    alone keeps every one of twenty fits monotone and finite."""
    model, x = CASES[name].build()
    mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.sgd, 1e3), num_steps=3)
    keys = jax.random.split(jax.random.key(2), NUM_RESTARTS)
    _, lanes = jaxem.fit_restarts(jaxem.em(model, mstep), keys, x, max_iter=10, tol=0.0)
    assert np.all(np.asarray(lanes.status) != jaxem.Status.NONFINITE)
    assert_monotone(lanes.history)


# ---- closed form: the M-step maximises Q plus the log prior --------------------------------------


def exact_m_step(name: str) -> bool:
    """A mixture whose family's M-step sets every block exactly from the statistics of the
    observed rows (wrappers that fill in missing values maximise another Q)."""
    case = CASES[name]
    model = case.model()
    family = getattr(model, "components", None)
    return (
        case.closed_form
        and isinstance(model, jaxem.Mixture)
        and isinstance(family, jaxem.ConjugateComponents)
        and family.closed_form_blocks() is True
        and not getattr(family, "handles_missing", False)
    )


@pytest.mark.parametrize("name", sorted(filter(exact_m_step, CASES)))
def test_closed_form_m_step_maximises_q_plus_log_prior(name):
    """The M-step beats nearby parameters (moved in the unconstrained space, so they stay valid)
    on Q(. | old) + log prior: it is the exact maximiser, MAP included."""
    case = CASES[name]
    model, x = case.build()
    x = jax.tree.map(jnp.asarray, x)
    algo = jaxem.em(model)
    # From a fit's parameters (the fit compiled for the checks above).
    old = jaxem.fit(algo, jax.random.key(0), x, max_iter=case.max_iter, tol=0.0).params
    new, _ = jax.jit(algo.step)(old, x)

    @jax.jit
    def objective(params):
        return model.expected_log_joint(params, old, x, None) + model.log_prior(params)

    @jax.jit
    def nearby(key):
        return from_unconstrained(model, jitter(to_unconstrained(model, new), key, 0.01))

    best = float(objective(new))
    assert np.isfinite(best)
    for seed in range(5):
        assert float(objective(nearby(jax.random.key(seed)))) < best


# ---- constraints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_constraints_map_into_the_parameter_set_and_back(name):
    """``jaxem.core.accelerate.{to,from}_unconstrained`` (the model's ``constraints()``): points
    far out in the unconstrained space (probabilities within 1e-4 of 0 or 1, scales near their
    floor) map to parameters with a finite log-likelihood, which map back unchanged. (Fitted
    parameters round-trip in ``check_model``.)"""
    case = CASES[name]
    model, x = case.build()
    x = jax.tree.map(jnp.asarray, x)
    far = random_params(model, x, jax.random.key(1), 4.0)
    back = from_unconstrained(model, to_unconstrained(model, far))
    _assert_trees_equal(back, far, 1e-12, 1e-14)
    # A fit can start there: the first log-likelihood it records (at ``far``) is finite. (The fit
    # compiled for the checks above.)
    algo = jaxem.em(model, case.mstep)
    start = jaxem.fit(algo, far, x, max_iter=case.max_iter, tol=0.0).history[0]
    assert np.isfinite(float(start)), name


WRAPPED = {
    "missing-gaussian": (jaxem.MissingValues, lambda: jaxem.Gaussian(2)),
    "missing-bernoulli": (jaxem.MissingValues, lambda: jaxem.Bernoulli(2)),
    "missing-categorical": (jaxem.MissingValues, lambda: jaxem.Categorical(2, num_levels=(3, 2))),
    "labelled-gaussian": (jaxem.Labelled, lambda: jaxem.Gaussian(2, "diag")),
    "labelled-gamma": (jaxem.Labelled, lambda: jaxem.Gamma(2)),
    "labelled-student-t": (jaxem.Labelled, lambda: jaxem.StudentT(2)),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrappers_declare_the_constraints_and_closed_form_blocks_of_their_family(name):
    wrapper, family = WRAPPED[name]
    wrapped = wrapper(family())
    assert wrapped.constraints() == family().constraints()
    assert wrapped.closed_form_blocks() == family().closed_form_blocks()


# ---- float32 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_data_give_float32_parameters(name):
    """float32 data: float32 start, EM step (parameters and log-likelihood) and unconstrained
    parameters, as traced (float64 is what the other contract tests run)."""
    case = CASES[name]
    model, x = case.build()
    x = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32 if np.issubdtype(a.dtype, np.floating) else a.dtype),
        x,
    )
    start = jax.eval_shape(model.init, jax.random.key(0), x, None)
    new, log_likelihood = jax.eval_shape(jaxem.em(model, case.mstep).step, start, x)
    unconstrained = jax.eval_shape(partial(to_unconstrained, model), new)
    back = jax.eval_shape(partial(from_unconstrained, model), unconstrained)
    assert log_likelihood.dtype == jnp.float32
    for tree in (start, new, unconstrained, back):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32, (name, leaf.dtype)
