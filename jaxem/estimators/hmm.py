"""HMM estimators with hmmlearn's names and conventions.

:class:`GaussianHMM`, :class:`CategoricalHMM` and :class:`PoissonHMM` follow hmmlearn's parameters
(``n_components, n_iter, tol, params, init_params, ...``), attributes (``startprob_, transmat_,
means_, covars_, emissionprob_, lambdas_, monitor_``) and methods (``fit(X, lengths)``, ``predict``,
``predict_proba``, ``score``, ``score_samples``, ``decode``, ``sample``); :class:`HMM` does the same
for any jaxem component family. Parameters set by hand before ``fit`` are kept as the starting point
when their letter is left out of ``init_params``.

Differences from hmmlearn: the defaults fit plain maximum likelihood (no covariance prior);
``n_init`` restarts run as one vmapped computation and the best is kept; ``min_covar`` is added to
every covariance at every M-step (scikit-learn's ``reg_covar``), not only at initialisation.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import validation
from jaxem.core.algorithm import em
from jaxem.core.inputs import prepare_data, seeded_keys
from jaxem.core.model import Components
from jaxem.core.mstep import ClosedForm
from jaxem.core.program_cache import cached_jit
from jaxem.drivers.fit import start_params
from jaxem.estimators.base import EMEstimator
from jaxem.hmm.inference import INFERENCE_METHODS, sample_states
from jaxem.hmm.model import HiddenMarkovModel, HMMParams, Sequences, pad_sequences, unpad
from jaxem.models.categorical import Categorical, CategoricalParams
from jaxem.models.gaussian import COVARIANCE_TYPES, Gaussian, GaussianParams
from jaxem.models.poisson import Poisson, PoissonParams
from jaxem.select import aic as criterion_aic
from jaxem.select import bic as criterion_bic

Array = jax.Array

DECODERS = ("viterbi", "map")


class ConvergenceMonitor(NamedTuple):
    """What hmmlearn's ``monitor_`` reports.

    Attributes:
        history: total log-likelihood (plus log prior) of the training data before each
            iteration's M-step.
        iter: EM iterations run.
        converged: whether the change fell below ``tol`` before ``n_iter`` iterations.
        tol: the threshold on the change of the total log-likelihood.
    """

    history: list[float]
    iter: int
    converged: bool
    tol: float


# Compiled once per family and shapes (and so at full precision: eager float32 products on a GPU
# would be TensorFloat-32).
_params_from_covariances = cached_jit(Gaussian.params_from_covariances, static_argnames=("self",))
_precision_cholesky_from_covariances = cached_jit(
    Gaussian.precision_cholesky_from_covariances, static_argnames=("self",)
)
_covariances = cached_jit(Gaussian.covariances, static_argnames=("self",))


@partial(cached_jit, static_argnames=("model",))
def _smooth(model: HiddenMarkovModel, params: HMMParams, data: Sequences):
    return model.smooth(params, data)


@partial(cached_jit, static_argnames=("model",))
def _viterbi(model: HiddenMarkovModel, params: HMMParams, data: Sequences):
    return model.most_likely_states(params, data)


@partial(cached_jit, static_argnames=("model", "num_samples"))
def _sample(
    model: HiddenMarkovModel, params: HMMParams, key: Array, num_samples: int, first_state: Any
):
    key_states, key_draw = jax.random.split(key)
    states = sample_states(
        key_states, jnp.log(params.initial), jnp.log(params.transition), num_samples, first_state
    )
    return model.emissions.sample(key_draw, params.emissions, states), states


def _check_letters(name: str, value: Any, letters: str) -> str:
    if not isinstance(value, str) or set(value) - set(letters):
        raise ValueError(
            f"{name} must be a string of the letters {letters!r} (each letter is one group of "
            f"parameters), got {value!r}."
        )
    return value


class HMMEstimator(EMEstimator):
    """Shared fitting and inference of the HMM estimators; subclasses describe their emission
    family and which of its parameters each letter of ``params`` names."""

    max_iter_name = "n_iter"
    nonfinite_message = (
        "Fitting the HMM failed: the log-likelihood became NaN or infinite in every restart (for "
        "instance a state that lost all its data). Try fewer states, a larger min_covar, priors "
        "(startprob_prior, transmat_prior > 1) or scaled input data."
    )
    # Letter of ``params`` -> the emission parameters it names (paths in the HMM's parameters).
    _emission_paths: tuple[tuple[str, str], ...] = (("e", "emissions"),)

    # ---- what a subclass provides --------------------------------------------------------------

    def _check_observations(self, X: Any) -> np.ndarray:
        return validation.check_data(X)

    def _emission_family(self, X: np.ndarray) -> Components:
        raise NotImplementedError

    def _user_emissions(self, family: Components, drawn: Any, dtype: np.dtype) -> Any:
        """``drawn`` (a batch of initial emission parameters) with the parts set by hand."""
        return drawn

    def _set_emission_attributes(self, family: Components, params: Any) -> None:
        raise NotImplementedError

    def _emission_params(self, family: Components, dtype: np.dtype) -> Any:
        raise NotImplementedError

    # ---- configuration -------------------------------------------------------------------------

    def _observations(self, X: Any, reset: bool = False) -> np.ndarray:
        """Checked observations (their features recorded at ``fit``, checked after); integer
        codes or counts become JAX's default float type, so they are never reported as float64
        input that 32-bit mode must downcast."""
        integer = np.issubdtype(np.asarray(X).dtype, np.integer)
        array = self._check_observations(X)
        self.check_features(X, array, reset=reset)
        return array.astype(jnp.result_type(float)) if integer else array

    def _needs_init(self, letter: str, attribute: str) -> bool:
        return letter in self.init_params or not hasattr(self, attribute)

    def _check_settings(self) -> None:
        validation.check_real("startprob_prior", self.startprob_prior, 0, strict=True)
        validation.check_real("transmat_prior", self.transmat_prior, 0, strict=True)
        validation.check_real("stickiness", self.stickiness, 0)
        validation.check_choice("algorithm", self.algorithm, DECODERS)
        validation.check_choice("inference", self.inference, INFERENCE_METHODS)
        letters = "st" + "".join(letter for letter, _ in self._emission_paths)
        _check_letters("params", self.params, letters)
        _check_letters("init_params", self.init_params, letters)

    def _build_model(self, X: np.ndarray) -> HiddenMarkovModel:
        return HiddenMarkovModel(
            self._emission_family(X),
            initial_concentration=float(self.startprob_prior),
            transition_concentration=float(self.transmat_prior),
            stickiness=float(self.stickiness),
            inference=self.inference,
        )

    def _mstep(self) -> ClosedForm:
        """The closed-form M-step holding the parameters whose letter ``params`` leaves out."""
        paths = (("s", "initial"), ("t", "transition"), *self._emission_paths)
        return ClosedForm(frozen=tuple(p for letter, p in paths if letter not in self.params))

    def _check_user_probs(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        probs = validation.check_init_array(name, getattr(self, name), shape, dtype)
        if np.any(probs < 0) or not np.allclose(probs.sum(axis=-1), 1):
            raise ValueError(f"{name} must be non-negative and sum to 1 along its last axis.")
        return probs

    def _initial_params(
        self, model: HiddenMarkovModel, data: Sequences, keys: Array, chunk_size: int | None
    ) -> HMMParams:
        """One starting point per key, from the start every driver draws from a key, with the
        parts set by hand kept."""
        rows = em(model, chunk_size=chunk_size).for_data(data).rows(data)
        drawn = start_params(model, keys, rows)
        dtype = np.dtype(drawn.initial.dtype)
        k = model.num_components
        initial, transition = drawn.initial, drawn.transition
        if not self._needs_init("s", "startprob_"):
            start = self._check_user_probs("startprob_", (k,), dtype)
            initial = np.broadcast_to(np.asarray(start), initial.shape)
        if not self._needs_init("t", "transmat_"):
            trans = self._check_user_probs("transmat_", (k, k), dtype)
            transition = np.broadcast_to(np.asarray(trans), transition.shape)
        emissions = self._user_emissions(model.emissions, drawn.emissions, dtype)
        return HMMParams(initial, transition, emissions)

    # ---- fitting -------------------------------------------------------------------------------

    def fit(self, X: Any, lengths: Any = None) -> HMMEstimator:
        """Estimate the parameters by EM from sequences concatenated in ``X``.

        Args:
            X: observations, one row per time step, the sequences one after another.
            lengths: the length of each sequence (default: one sequence).
        """
        self._check_settings()
        settings = self.fit_settings()
        X = self._observations(X, reset=True)
        data = pad_sequences(X, lengths)
        if self.n_components > X.shape[0]:
            raise ValueError(
                f"X has {X.shape[0]} rows but n_components={self.n_components}: pass more data "
                "or lower n_components."
            )
        model = self._build_model(X)
        data, _ = prepare_data(data)
        keys = seeded_keys(settings.seed, settings.num_restarts)
        starts = self._initial_params(model, data, keys, settings.chunk_size)
        algo = em(model, self._mstep(), chunk_size=settings.chunk_size)
        # hmmlearn's tol is on the total log-likelihood; the fit compares the mean per sequence.
        num_sequences = int(data.lengths.shape[0])
        best, lanes, _ = self.run_restarts(
            algo, starts, data, None, settings, row_tol=settings.tol / num_sequences
        )
        self.model_ = model
        self.params_ = best.params
        self._set_attributes(model, best.params)
        history = np.asarray(best.history)[: self.n_iter_]
        self.monitor_ = ConvergenceMonitor(
            [float(h) for h in history], self.n_iter_, self.converged_, float(self.tol)
        )
        self.lower_bound_ = float(best.log_likelihood)
        self.restart_log_likelihoods_ = np.asarray(lanes.log_likelihood)
        return self

    def _set_attributes(self, model: HiddenMarkovModel, params: HMMParams) -> None:
        self.startprob_ = np.asarray(params.initial)
        self.transmat_ = np.asarray(params.transition)
        self._set_emission_attributes(model.emissions, params.emissions)

    # ---- inference -----------------------------------------------------------------------------

    def _current(self, X: Any, lengths: Any) -> tuple[HiddenMarkovModel, HMMParams, Sequences]:
        """The model and parameters (from the attributes, which users may have changed) and
        ``X`` as padded sequences."""
        X = self._observations(X)
        data, _ = prepare_data(pad_sequences(X, lengths))
        dtype = np.dtype(jax.tree.leaves(data.observations)[0].dtype)
        return self.model_, self._attribute_params(dtype), data

    def _attribute_params(self, dtype: np.dtype) -> HMMParams:
        """The parameters the fitted attributes hold now (users may have changed them), checked."""
        k = self.model_.num_components
        return HMMParams(
            self._check_user_probs("startprob_", (k,), dtype),
            self._check_user_probs("transmat_", (k, k), dtype),
            self._emission_params(self.model_.emissions, dtype),
        )

    def score_samples(self, X: Any, lengths: Any = None) -> tuple[float, np.ndarray]:
        """Total log-likelihood of ``X`` and the smoothed state posteriors ``[n_samples, K]``."""
        model, params, data = self._current(X, lengths)
        smoothed = _smooth(model, params, data)
        total = float(np.sum(np.asarray(smoothed.log_likelihood)))
        return total, unpad(smoothed.posteriors, data.lengths)

    def score(self, X: Any, lengths: Any = None) -> float:
        """Total log-likelihood of the sequences in ``X``."""
        model, params, data = self._current(X, lengths)
        return float(np.sum(np.asarray(_smooth(model, params, data).log_likelihood)))

    def bic(self, X: Any, lengths: Any = None) -> float:
        """Bayesian information criterion ``-2 log L + p log(n_samples)`` (lower is better).

        ``p`` counts every initial, transition and emission parameter, fitted or held fixed (as
        hmmlearn does); see :func:`jaxem.bic`.

        Example:
            >>> import numpy as np, jaxem
            >>> X = np.random.default_rng(0).normal(size=(200, 2))
            >>> model = jaxem.GaussianHMM(2, random_state=0).fit(X)
            >>> model.bic(X) > model.aic(X)
            True
        """
        model, params, data = self._current(X, lengths)
        return criterion_bic(params, model, data, chunk_size=self.chunk_size)

    def aic(self, X: Any, lengths: Any = None) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better); see :meth:`bic`."""
        model, params, data = self._current(X, lengths)
        return criterion_aic(params, model, data, chunk_size=self.chunk_size)

    def predict_proba(self, X: Any, lengths: Any = None) -> np.ndarray:
        """Smoothed state posteriors ``p(z_t | x)``, shape ``[n_samples, n_components]``."""
        return self.score_samples(X, lengths)[1]

    def decode(
        self, X: Any, lengths: Any = None, algorithm: str | None = None
    ) -> tuple[float, np.ndarray]:
        """The most likely states: ``(log_prob, states)``.

        ``"viterbi"``: the best joint path and ``log p(X, path)`` summed over sequences; ``"map"``:
        the most probable state at each step, with hmmlearn's sum of the largest posteriors.
        """
        algorithm = validation.check_choice(
            "algorithm", self.algorithm if algorithm is None else algorithm, DECODERS
        )
        if algorithm == "map":
            _, posteriors = self.score_samples(X, lengths)
            return float(np.max(posteriors, axis=1).sum()), np.argmax(posteriors, axis=1)
        model, params, data = self._current(X, lengths)
        paths, log_probs = _viterbi(model, params, data)
        return float(np.sum(np.asarray(log_probs))), unpad(paths, data.lengths)

    def predict(self, X: Any, lengths: Any = None) -> np.ndarray:
        """The most likely state of each step (by ``algorithm``, Viterbi by default)."""
        return self.decode(X, lengths)[1]

    def sample(
        self, n_samples: int = 1, random_state: Any = None, currstate: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence of ``n_samples`` steps: ``(X, states)``.

        ``currstate`` fixes the first state; draws are seeded from ``random_state`` (default: the
        estimator's).
        """
        validation.check_int("n_samples", n_samples, 1)
        self.check_fitted()
        family = self.model_.emissions
        if not callable(getattr(family, "sample", None)):
            raise NotImplementedError(
                f"{type(family).__name__} cannot sample: give the family a "
                "sample(key, params, labels) method that returns one draw per label."
            )
        seed = validation.check_random_state(
            self.random_state if random_state is None else random_state
        )
        params = self._attribute_params(np.dtype(jax.tree.leaves(self.params_)[0].dtype))
        first = (
            None
            if currstate is None
            else jnp.asarray(validation.check_int("currstate", currstate, 0))
        )
        x, states = _sample(self.model_, params, seeded_keys(seed), int(n_samples), first)
        return np.asarray(x), np.asarray(states)


class GaussianHMM(HMMEstimator):
    """Hidden Markov model with Gaussian emissions (hmmlearn's ``GaussianHMM``), fitted by jaxem.

    Args:
        n_components: number of states.
        covariance_type: ``"diag"`` (default), ``"full"``, ``"tied"`` or ``"spherical"``.
        min_covar: added to the diagonal of every covariance at every M-step.
        startprob_prior, transmat_prior: symmetric Dirichlet concentrations (1: maximum likelihood).
        stickiness: extra Dirichlet mass on the self-transitions (a sticky HMM).
        algorithm: decoder of :meth:`predict` and :meth:`decode`, ``"viterbi"`` or ``"map"``.
        random_state: seed (int), NumPy generator, or None.
        n_iter: the most EM iterations.
        tol: stop when the total log-likelihood changes by less than this.
        verbose: print progress.
        params: letters of the parameters EM updates: ``s`` startprob, ``t`` transmat, ``m`` means,
            ``c`` covariances.
        init_params: letters of the parameters initialised at ``fit``; the others keep the values
            set by hand.
        inference: ``"sequential"``, ``"parallel"`` (associative scan) or ``"scaled"``
            (hmmlearn's "scaling") forward-backward; see :class:`jaxem.hmm.HiddenMarkovModel`.
        n_init: restarts, run in parallel; the best is kept.
        chunk_size: sequences per E-step chunk (None: chosen from the sizes).

    Example:
        >>> import numpy as np, jaxem
        >>> X = np.concatenate([np.random.default_rng(0).normal(m, 1, (50, 2)) for m in (0, 5)])
        >>> model = jaxem.GaussianHMM(2, n_iter=50, random_state=0).fit(X, [60, 40])
        >>> model.transmat_.shape, model.predict(X).shape
        ((2, 2), (100,))
    """

    _emission_paths = (("m", "emissions.means"), ("c", "emissions.precision_cholesky"))

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: str = "diag",
        min_covar: float = 1e-3,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        stickiness: float = 0.0,
        algorithm: str = "viterbi",
        random_state: Any = None,
        n_iter: int = 10,
        tol: float = 1e-2,
        verbose: bool = False,
        params: str = "stmc",
        init_params: str = "stmc",
        inference: str = "sequential",
        n_init: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.min_covar = min_covar
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.stickiness = stickiness
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.inference = inference
        self.n_init = n_init
        self.chunk_size = chunk_size

    def _emission_family(self, X: np.ndarray) -> Components:
        validation.check_int("n_components", self.n_components, 1)
        validation.check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        validation.check_real("min_covar", self.min_covar, 0)
        return Gaussian(
            self.n_components,
            self.covariance_type,
            reg_covar=float(self.min_covar),
            init_method="kmeans",
        )

    def _covariance_shape(self, k: int, d: int) -> tuple[int, ...]:
        return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
            self.covariance_type
        ]

    def _emission_params(self, family: Gaussian, dtype: np.dtype) -> GaussianParams:
        k, d = family.num_components, self.n_features_in_
        means = validation.check_init_array("means_", self.means_, (k, d), dtype)
        covars = validation.check_init_array(
            "covars_", self._covars_, self._covariance_shape(k, d), dtype
        )
        return _params_from_covariances(family, np.asarray(means), np.asarray(covars))

    def _user_emissions(self, family: Gaussian, drawn: GaussianParams, dtype: np.dtype) -> Any:
        _, k, d = drawn.means.shape
        means, cholesky = drawn.means, drawn.precision_cholesky
        if not self._needs_init("m", "means_"):
            user = validation.check_init_array("means_", self.means_, (k, d), dtype)
            means = np.broadcast_to(np.asarray(user), means.shape)
        if not self._needs_init("c", "covars_"):
            shape = self._covariance_shape(k, d)
            covars = validation.check_init_array("covars_", self._covars_, shape, dtype)
            if self.covariance_type in ("full", "tied"):
                validation.check_positive_definite("covars_", covars)
            else:
                validation.check_positive("covars_", covars)
            user = _precision_cholesky_from_covariances(family, np.asarray(covars))
            cholesky = np.broadcast_to(np.asarray(user), cholesky.shape)
        return GaussianParams(means, cholesky)

    def _set_emission_attributes(self, family: Gaussian, params: GaussianParams) -> None:
        self.n_features = self.n_features_in_
        self.means_ = np.asarray(params.means)
        self._covars_ = np.asarray(_covariances(family, params))

    @property
    def covars_(self) -> np.ndarray:
        """Covariances as full matrices ``[K, D, D]`` whatever the type (as hmmlearn returns them);
        set them in the covariance type's own shape."""
        covars = np.asarray(self._covars_)
        k = self.n_components
        if self.covariance_type == "full":
            return covars
        if self.covariance_type == "tied":
            return np.broadcast_to(covars, (k, *covars.shape)).copy()
        if self.covariance_type == "diag":
            return np.stack([np.diag(c) for c in covars])
        d = self.means_.shape[1]
        return covars[:, None, None] * np.eye(d)[None]

    @covars_.setter
    def covars_(self, covars: Any) -> None:
        self._covars_ = np.asarray(covars).copy()

    def _needs_init(self, letter: str, attribute: str) -> bool:
        if attribute == "covars_":
            attribute = "_covars_"
        return super()._needs_init(letter, attribute)


class CategoricalHMM(HMMEstimator):
    """Hidden Markov model with categorical emissions (hmmlearn's ``CategoricalHMM``).

    ``X`` is one column of integer symbols ``0 .. n_features - 1``.

    Args:
        n_components: number of states.
        startprob_prior, transmat_prior, emissionprob_prior: symmetric Dirichlet concentrations
            (1: maximum likelihood).
        n_features: number of symbols (default: ``1 + max(X)`` at ``fit``).
        params, init_params: letters ``s`` startprob, ``t`` transmat, ``e`` emissionprob.

    The other arguments are :class:`GaussianHMM`'s.

    Example:
        >>> import numpy as np, jaxem
        >>> X = np.random.default_rng(0).integers(0, 3, (200, 1))
        >>> jaxem.CategoricalHMM(2, random_state=0, n_iter=5).fit(X).emissionprob_.shape
        (2, 3)
    """

    def __init__(
        self,
        n_components: int = 1,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        emissionprob_prior: float = 1.0,
        stickiness: float = 0.0,
        n_features: int | None = None,
        algorithm: str = "viterbi",
        random_state: Any = None,
        n_iter: int = 10,
        tol: float = 1e-2,
        verbose: bool = False,
        params: str = "ste",
        init_params: str = "ste",
        inference: str = "sequential",
        n_init: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.emissionprob_prior = emissionprob_prior
        self.stickiness = stickiness
        self.n_features = n_features
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.inference = inference
        self.n_init = n_init
        self.chunk_size = chunk_size

    def _check_observations(self, X: Any) -> np.ndarray:
        X = validation.check_data(X)
        if X.shape[1] != 1 or np.any(X < 0) or np.any(np.round(X) != X):
            raise ValueError(
                "CategoricalHMM needs X as one column of non-negative integer symbols, shape "
                f"(n_samples, 1), got shape {X.shape}: for several categorical features use "
                "jaxem.HMM(jaxem.Categorical(...))."
            )
        return X

    def _num_symbols(self, X: np.ndarray) -> int:
        if self.n_features is not None:
            return validation.check_int("n_features", self.n_features, 1)
        if hasattr(self, "emissionprob_") and "e" not in self.init_params:
            return int(np.asarray(self.emissionprob_).shape[1])
        return int(X.max()) + 1

    def _emission_family(self, X: np.ndarray) -> Components:
        validation.check_int("n_components", self.n_components, 1)
        symbols = self._num_symbols(X)
        if X.max() >= symbols:
            raise ValueError(
                f"X holds symbol {int(X.max())} but n_features={symbols}: symbols must be "
                "0 .. n_features - 1."
            )
        prior = validation.check_real("emissionprob_prior", self.emissionprob_prior, 1)
        return Categorical(self.n_components, (symbols,), dirichlet_concentration=prior)

    def _emission_params(self, family: Categorical, dtype: np.dtype) -> CategoricalParams:
        shape = (family.num_components, family.num_levels[0])
        probs = self._check_user_probs("emissionprob_", shape, dtype)
        return CategoricalParams(np.asarray(probs)[:, None, :])

    def _user_emissions(self, family: Categorical, drawn: CategoricalParams, dtype: np.dtype):
        if self._needs_init("e", "emissionprob_"):
            return drawn
        user = self._emission_params(family, dtype)
        return CategoricalParams(jnp.broadcast_to(user.probs, drawn.probs.shape))

    def _set_emission_attributes(self, family: Categorical, params: CategoricalParams) -> None:
        self.emissionprob_ = np.asarray(params.probs)[:, 0, :]

    def _current(self, X: Any, lengths: Any):
        model, params, data = super()._current(X, lengths)
        symbols = model.emissions.num_levels[0]
        if np.asarray(data.observations).max() >= symbols:
            raise ValueError(
                f"X holds symbols >= {symbols}, the number of symbols of the fitted model: pass "
                "symbols 0 .. n_features - 1."
            )
        return model, params, data


class PoissonHMM(HMMEstimator):
    """Hidden Markov model with Poisson emissions (hmmlearn's ``PoissonHMM``).

    ``X`` holds non-negative integer counts, one column per feature.

    Args:
        n_components: number of states.
        lambdas_gamma_prior: ``(shape, rate)`` of a Gamma prior on every rate; ``(1, 0)`` (the
            default) is maximum likelihood.
        params, init_params: letters ``s`` startprob, ``t`` transmat, ``l`` lambdas.

    The other arguments are :class:`GaussianHMM`'s.

    Example:
        >>> import numpy as np, jaxem
        >>> X = np.random.default_rng(0).poisson(3.0, (200, 2))
        >>> jaxem.PoissonHMM(2, random_state=0, n_iter=5).fit(X).lambdas_.shape
        (2, 2)
    """

    _emission_paths = (("l", "emissions"),)

    def __init__(
        self,
        n_components: int = 1,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        lambdas_gamma_prior: tuple[float, float] = (1.0, 0.0),
        stickiness: float = 0.0,
        algorithm: str = "viterbi",
        random_state: Any = None,
        n_iter: int = 10,
        tol: float = 1e-2,
        verbose: bool = False,
        params: str = "stl",
        init_params: str = "stl",
        inference: str = "sequential",
        n_init: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.lambdas_gamma_prior = lambdas_gamma_prior
        self.stickiness = stickiness
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.inference = inference
        self.n_init = n_init
        self.chunk_size = chunk_size

    def _check_observations(self, X: Any) -> np.ndarray:
        X = validation.check_data(X)
        if np.any(X < 0) or np.any(np.round(X) != X):
            raise ValueError(
                "PoissonHMM needs X as non-negative integer counts: round or re-encode the data."
            )
        return X

    def _emission_family(self, X: np.ndarray) -> Components:
        validation.check_int("n_components", self.n_components, 1)
        return Poisson(self.n_components, tuple(float(v) for v in self.lambdas_gamma_prior))

    def _emission_params(self, family: Poisson, dtype: np.dtype) -> PoissonParams:
        shape = (family.num_components, self.n_features_in_)
        rates = validation.check_init_array("lambdas_", self.lambdas_, shape, dtype)
        validation.check_positive("lambdas_", rates)
        return PoissonParams(np.asarray(rates))

    def _user_emissions(self, family: Poisson, drawn: PoissonParams, dtype: np.dtype):
        if self._needs_init("l", "lambdas_"):
            return drawn
        user = self._emission_params(family, dtype)
        return PoissonParams(jnp.broadcast_to(user.rates, drawn.rates.shape))

    def _set_emission_attributes(self, family: Poisson, params: PoissonParams) -> None:
        self.n_features = self.n_features_in_
        self.lambdas_ = np.asarray(params.rates)


class HMM(HMMEstimator):
    """Hidden Markov model with any jaxem component family as its emissions.

    Args:
        emissions: the family, e.g. ``jaxem.Gaussian(3, covariance_type="tied")`` or a user's own
            :class:`jaxem.Components`; its ``num_components`` is the number of states.
        params, init_params: letters ``s`` startprob, ``t`` transmat, ``e`` emissions; emission
            parameters set by hand go in ``emission_params_`` (the family's parameter pytree).

    The other arguments are :class:`GaussianHMM`'s.

    Example:
        >>> import numpy as np, jaxem
        >>> X = np.random.default_rng(0).normal(size=(200, 2))
        >>> model = jaxem.HMM(jaxem.Gaussian(2, covariance_type="tied"), random_state=0).fit(X)
        >>> model.emission_params_.means.shape
        (2, 2)
    """

    def __init__(
        self,
        emissions: Components,
        startprob_prior: float = 1.0,
        transmat_prior: float = 1.0,
        stickiness: float = 0.0,
        algorithm: str = "viterbi",
        random_state: Any = None,
        n_iter: int = 10,
        tol: float = 1e-2,
        verbose: bool = False,
        params: str = "ste",
        init_params: str = "ste",
        inference: str = "sequential",
        n_init: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        self.emissions = emissions
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.stickiness = stickiness
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.inference = inference
        self.n_init = n_init
        self.chunk_size = chunk_size

    @property
    def n_components(self) -> int:
        return self.emissions.num_components

    def _emission_family(self, X: np.ndarray) -> Components:
        if not isinstance(self.emissions, Components):
            raise ValueError(
                "emissions must be a jaxem.Components family (e.g. jaxem.Gaussian(3)), got "
                f"{type(self.emissions).__name__}."
            )
        check = getattr(self.emissions, "check_data", None)
        if callable(check):
            check(X)
        return self.emissions

    def _emission_params(self, family: Components, dtype: np.dtype) -> Any:
        return jax.tree.map(np.asarray, self.emission_params_)

    def _user_emissions(self, family: Components, drawn: Any, dtype: np.dtype) -> Any:
        if self._needs_init("e", "emission_params_"):
            return drawn
        user = jax.tree.map(lambda a: np.asarray(a, dtype), self.emission_params_)
        lanes = jax.tree.leaves(drawn)[0].shape[0]
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (lanes, *a.shape)), user)

    def _set_emission_attributes(self, family: Components, params: Any) -> None:
        self.emission_params_ = jax.tree.map(np.asarray, params)
