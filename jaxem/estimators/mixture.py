"""Mixture estimators with scikit-learn's interface over the functional API.

:class:`MixtureModel` turns any component family (a :class:`jaxem.Components`) into an estimator
with scikit-learn's methods; :class:`GaussianMixture` is a drop-in replacement for
``sklearn.mixture.GaussianMixture``; :class:`SemiSupervisedMixture` takes partial labels. Their
shared machinery (settings, restarts, warnings, persistence) is :class:`EMEstimator`'s. They
validate their input, run all ``n_init`` restarts as one vmapped computation and make one more
chunked pass over the data for the final statistics; per-row outputs (``predict``,
``predict_proba``, ``score_samples``) are computed chunk by chunk as well.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem import validation
from jaxem.core.algorithm import em
from jaxem.core.estep import total_weight
from jaxem.core.inputs import (
    PAD_FIT_MAX_ROWS,
    pad_rows,
    power_of_two_bucket,
    prepare_data,
    seeded_keys,
)
from jaxem.core.mixture import Mixture, MixtureParams
from jaxem.core.model import Components
from jaxem.core.mstep import ClosedForm, Gradient, default_mstep
from jaxem.core.online import OnlineEM
from jaxem.core.program_cache import cached_jit
from jaxem.core.rows import Rows, chunk_width, default_chunk_size, initial_params, reduce_chunks
from jaxem.core.subsample import sample_size
from jaxem.drivers.fit import start_params, take_lane
from jaxem.estimators.base import DENSITY_BASES, EMEstimator
from jaxem.init import nearest_center
from jaxem.labels import Labelled, check_labels
from jaxem.missing import MISSING_OPTIONS, fill_column_means, impute, marginalize_missing
from jaxem.models.gaussian import COVARIANCE_TYPES, Gaussian, GaussianParams

Array = jax.Array


ILL_DEFINED_MESSAGE = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)

# scikit-learn's init_params names and the matching jaxem.Gaussian init_method.
INIT_PARAMS = {
    "kmeans": "kmeans",
    "k-means++": "kmeans++",
    "random": "random_resp",
    "random_from_data": "random_rows",
}


@partial(cached_jit, static_argnames=("model", "output", "batch_size"))
def _per_row(model: Mixture, params: MixtureParams, x: Array, output: str, batch_size: int):
    """Labels, responsibilities or log-densities of every row, ``batch_size`` rows at a time."""

    def one(x_one: Array) -> Array:
        log_resp, log_norm = model.log_resp(params, x_one[None])
        if output == "labels":
            return jnp.argmax(log_resp[0])
        if output == "proba":
            return jnp.exp(log_resp[0])
        return log_norm[0]

    return lax.map(one, x, batch_size=batch_size)


# Compiled once per model and shapes, for every call (each of partial_fit's mini-batches).
online_update = cached_jit(OnlineEM.update, static_argnames=("self",))


@partial(cached_jit, static_argnames=("model", "bucket"))
def _sample(model: Mixture, params: MixtureParams, key: Array, num_samples: Array, bucket: int):
    key_labels, key_draw = jax.random.split(key)
    labels = jax.random.categorical(key_labels, jnp.log(params.weights), shape=(bucket,))
    # Sorted like scikit-learn's sample (all draws of component 0, then of component 1, ...), the
    # dropped draws last (label K). JAX's random bits of a row do not depend on how many rows are
    # drawn, so the first num_samples rows are exactly the draws of a sample of that size.
    k = params.weights.shape[0]
    labels = jnp.sort(jnp.where(jnp.arange(bucket) < num_samples, labels, k))
    draws = model.components.sample(key_draw, params.components, jnp.minimum(labels, k - 1))
    return draws, labels


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


class MixtureModel(*DENSITY_BASES, EMEstimator):
    """A scikit-learn-style estimator for a finite mixture of any component family.

    Args:
        components: the family (a :class:`jaxem.Components` frozen dataclass), e.g.
            ``jaxem.Gaussian(3, covariance_type="diag")``.
        n_init: restarts, run in parallel as one vmapped computation; the best is kept.
        max_iter: the most EM iterations per restart.
        tol: convergence threshold on the change of the mean log-likelihood per iteration.
        random_state: ``None``, an integer seed (restart ``i`` then starts from
            ``jax.random.split(jax.random.key(seed), n_init)[i]``), or a NumPy ``RandomState``.
        warm_start: a second ``fit`` starts from the previous solution (one restart).
        verbose: print progress (0: silent, as in scikit-learn); verbose_interval: iterations
            between progress lines.
        chunk_size: rows per chunk of every pass over the data (``None``: chosen from the sizes).
        weight_concentration: symmetric Dirichlet prior on the mixture weights (1: none).
        accelerate: ``None`` (plain EM) or ``"squarem"``: SQUAREM extrapolation, still monotone,
            usually several times fewer passes over the data; ``n_iter_`` then counts E-steps.
        missing: ``"error"`` (the default: NaN in ``X`` is refused, as in scikit-learn) or
            ``"marginalize"``: NaN marks a missing value, marginalised exactly in every E-step
            (see :mod:`jaxem.missing`); ``predict``, ``predict_proba`` and ``score_samples`` then
            accept rows with NaN and ``impute`` fills them in. A row must have one observed value.

    mstep: ``None`` (a :class:`jaxem.ClosedForm` where the family has one, else a
            :class:`jaxem.Gradient`), or the M-step to use, e.g. ``ClosedForm(frozen=...)``.

    ``bic``/``aic`` need the family's ``num_free_parameters(num_features)``; ``sample`` needs its
    ``sample(key, params, labels)`` returning one draw per label from that component.

    Attributes (after ``fit``):
        params_: the fitted :class:`jaxem.MixtureParams` (NumPy leaves), usable with the
            functional API; model_: the fitted :class:`jaxem.Mixture`.
        weights_: mixture weights. converged_, n_iter_: of the best restart.
        lower_bound_, lower_bounds_: mean log-likelihood per sample before the last M-step, and
            before each.
        restart_log_likelihoods_, restart_n_iters_, restart_statuses_: per restart (the first
            as a mean per sample, like ``lower_bound_``)
            (statuses are :class:`jaxem.Status` codes).
        n_features_in_: number of features seen in ``fit``.

    Example:
        >>> import numpy as np, jaxem
        >>> x = np.random.default_rng(0).normal(size=(200, 2))
        >>> est = jaxem.MixtureModel(jaxem.Gaussian(2), n_init=4, random_state=0).fit(x)
        >>> est.predict(x).shape
        (200,)
    """

    max_iter_name = "max_iter"
    nonfinite_message = ILL_DEFINED_MESSAGE

    def __init__(
        self,
        components: Components,
        *,
        n_init: int = 1,
        max_iter: int = 100,
        tol: float = 1e-3,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        chunk_size: int | None = None,
        weight_concentration: float = 1.0,
        accelerate: str | None = None,
        missing: str = "error",
        mstep: ClosedForm | Gradient | None = None,
    ) -> None:
        self.components = components
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.chunk_size = chunk_size
        self.weight_concentration = weight_concentration
        self.accelerate = accelerate
        self.missing = missing
        self.mstep = mstep

    # ---- hooks a family-specific estimator overrides

    def _check_family_settings(self, num_samples: int, num_features: int, dtype: np.dtype) -> Any:
        """Validate the family's settings; what is returned is passed to :meth:`_initial_params`."""
        del num_features, dtype
        if not isinstance(self.components, Components):
            raise ValueError(
                f"components must be a jaxem.Components (e.g. jaxem.Gaussian(3)), got "
                f"{type(self.components).__name__}."
            )
        validation.check_num_components(self.components.num_components, num_samples)
        validation.check_real("weight_concentration", self.weight_concentration, 1.0)
        return None

    def _build_model(self, num_features: int) -> Mixture:
        del num_features
        return Mixture(self.components, float(self.weight_concentration))

    def _initial_params(
        self, model: Mixture, keys: Array, x: Array, row_weights: Array | None, checked: Any
    ) -> MixtureParams | None:
        """Initial parameters with a leading restart axis, or ``None`` to draw them from keys."""
        del model, keys, x, row_weights, checked
        return None

    def _set_family_attributes(self, model: Mixture, params: MixtureParams, counts: Array) -> None:
        del model, params, counts

    def _partial_labels(self, y: Any, num_samples: int, num_components: int) -> np.ndarray | None:
        """Checked partial labels from ``fit``'s ``y``, or ``None`` to ignore ``y`` (the default,
        as scikit-learn's mixtures do)."""
        del y, num_samples, num_components
        return None

    # ---- the problem a fit solves

    def _marginalizes(self) -> bool:
        return validation.check_choice("missing", self.missing, MISSING_OPTIONS) != "error"

    def _mstep(self, model: Mixture) -> ClosedForm | Gradient:
        mstep = getattr(self, "mstep", None)
        if mstep is None:
            # A family without a closed form for every block (a gamma shape) takes the gradient.
            return default_mstep(model)
        if not isinstance(mstep, (ClosedForm, Gradient)):
            raise ValueError(
                "mstep must be None (chosen from the family), a jaxem.ClosedForm or a "
                f"jaxem.Gradient, got {type(mstep).__name__}."
            )
        return mstep

    def _problem(
        self,
        model: Mixture,
        array: np.ndarray,
        y: Any,
        sample_weight: Any,
        marginalize: bool,
        pad: bool = False,
    ) -> tuple[Mixture, Any, Array, Array | None]:
        """The model EM fits (with the labels' wrapper), its data, the rows and row weights.

        With ``pad`` the rows are padded to their
        :func:`jaxem.core.inputs.row_bucket` with rows of weight 0, so that fits of nearby sizes
        (cross-validation folds, subsets) share their compiled programs."""
        num_samples = array.shape[0]
        sample_weight = validation.check_sample_weight(sample_weight, num_samples)
        labels = self._partial_labels(y, num_samples, model.num_components)
        # A family that restricts its data (binary, counts, codes) says so before any work.
        check_family_data = getattr(model.components, "check_data", None)
        if check_family_data is not None:
            check_family_data(array)
        if pad:
            array, sample_weight = pad_rows(array, sample_weight)
            if labels is not None:
                labels = np.concatenate([labels, np.full(array.shape[0] - num_samples, -1)])
        x, row_weights = prepare_data(array, sample_weight, allow_missing=marginalize)
        if labels is None:
            return model, x, x, row_weights
        labelled = Mixture(Labelled(model.components), model.weight_concentration)
        return labelled, (x, jax.device_put(labels)), x, row_weights

    # ---- fitting

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MixtureModel:
        """Fit the mixture by EM with ``n_init`` parallel restarts; returns ``self``.

        Args:
            X: array-like ``(n_samples, n_features)``.
            y: ignored (partial labels for :class:`SemiSupervisedMixture`).
            sample_weight: optional non-negative weight per row (an integer weight counts a row
                that many times).
        """
        marginalize = self._marginalizes()
        warm = self.is_warm()
        previous = (self.n_features_in_, self.weights_.shape[0]) if warm else None
        array = self.check_input(X, reset=True, allow_missing=marginalize)
        num_samples, num_features = array.shape
        settings = self.fit_settings()
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(array.dtype))
        checked = self._check_family_settings(num_samples, num_features, dtype)
        plain_model = self._build_model(num_features)
        model = marginalize_missing(plain_model) if marginalize else plain_model
        if warm and previous != (num_features, model.num_components):
            raise ValueError(
                f"warm_start continues the previous fit ({previous[1]} components, "
                f"{previous[0]} features), but this fit has {model.num_components} "
                f"components and {num_features} features: set warm_start=False to start afresh."
            )
        # A small fit runs on rows padded to a bucket, and its restarts in a bucket of lanes, the
        # extra ones copies of lane 0 (so the best lane is the same): another N or n_init of the
        # buckets compiles nothing.
        small = num_samples <= PAD_FIT_MAX_ROWS
        fit_model, data, x, row_weights = self._problem(
            model, array, y, sample_weight, marginalize, pad=small
        )
        width = chunk_width(fit_model, data)
        num_rows = x.shape[0]  # padded
        num_lanes = power_of_two_bucket(settings.num_restarts) if small else settings.num_restarts
        restart_chunk = settings.chunk_size or default_chunk_size(num_rows, width, num_lanes)
        algo = em(fit_model, self._mstep(fit_model), restart_chunk, accelerate=self.accelerate)
        if warm:
            starts = jax.tree.map(lambda a: np.asarray(a, x.dtype)[None], self.params_)
        else:
            keys = seeded_keys(settings.seed, settings.num_restarts, num_lanes)
            # User-given starts are estimated from the data with column means filled in.
            start_x = fill_column_means(x, row_weights) if marginalize else x
            starts = self._initial_params(plain_model, keys, start_x, row_weights, checked)
            starts = keys if starts is None else starts
        best, lanes, final = self.run_restarts(algo, starts, data, row_weights, settings)
        counts = final.stats.counts
        total = np.asarray(final.total_weight)

        self.model_ = model
        self.params_ = _to_numpy(best.params)
        self.weights_ = self.params_.weights
        # scikit-learn's lower bound is the mean per sample (per unit of sample weight).
        self.lower_bounds_ = np.asarray(best.history)[: self.n_iter_] / total
        self.lower_bound_ = float(
            self.lower_bounds_[-1] if self.n_iter_ else np.asarray(best.log_likelihood) / total
        )
        restarts = settings.num_restarts
        self.restart_log_likelihoods_ = np.asarray(lanes.log_likelihood)[:restarts] / total
        self._set_family_attributes(model, best.params, counts)
        return self

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MixtureModel:
        """One online EM step (:class:`jaxem.streaming.OnlineEM`) on a mini-batch; returns ``self``.

        The first call starts from the fitted parameters if there are any, else initialises from
        this batch; each call moves the running statistics toward the batch's by the step
        ``(t + 1) ** -0.6`` and refits the parameters from them. ``n_iter_`` counts the batches.
        Row weights, missing values (``missing="marginalize"``), partial labels
        (:class:`SemiSupervisedMixture`) and frozen parameters work as in ``fit``; online EM has
        no closed-form statistics to average under a gradient M-step, and is not an EM map that
        SQUAREM could extrapolate, so those settings are refused.
        """
        if self.accelerate is not None:
            raise ValueError(
                f"partial_fit runs online EM, and online EM is not an EM map that SQUAREM can "
                f"extrapolate: set accelerate=None (got {self.accelerate!r}) or use fit."
            )
        marginalize = self._marginalizes()
        continuing = self.__sklearn_is_fitted__()
        array = self.check_input(X, reset=not continuing, allow_missing=marginalize)
        num_samples, num_features = array.shape
        if continuing:
            model = self.model_
        else:
            checked = self._check_family_settings(num_samples, num_features, array.dtype)
            plain_model = self._build_model(num_features)
            model = marginalize_missing(plain_model) if marginalize else plain_model
        fit_model, data, x, row_weights = self._problem(model, array, y, sample_weight, marginalize)
        online = OnlineEM(fit_model, mstep=self._mstep(fit_model))
        state = getattr(self, "_online_state", None)
        if state is None or state.params is not getattr(self, "_online_params", None):
            if continuing:
                params = jax.tree.map(lambda a: np.asarray(a, x.dtype), self.params_)
            else:
                key = seeded_keys(validation.check_random_state(self.random_state))
                start_x = fill_column_means(x, row_weights) if marginalize else x
                starts = self._initial_params(plain_model, key[None], start_x, row_weights, checked)
                if starts is None:
                    rows = em(fit_model).for_data(data).rows(data, row_weights)
                    starts = start_params(fit_model, key[None], rows)
                params = take_lane(starts, 0)
            state = online.init(params)
        state, batch_log_likelihood = online_update(online, state, data, row_weights)
        self.model_ = model
        self.params_ = _to_numpy(state.params)
        self._online_state, self._online_params = state, state.params
        self.weights_ = self.params_.weights
        self.n_iter_ = int(state.count)
        self.converged_ = False
        self.lower_bound_ = float(batch_log_likelihood) / float(
            total_weight(x, row_weights, x.dtype)
        )
        self._set_family_attributes(model, state.params, state.stats.counts * state.seen)
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then return each row's most probable component (equals ``fit(X).predict(X)``)."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    # ---- using the fitted model

    def _fitted_rows(self, X: Any, allow_missing: bool = False) -> np.ndarray:
        fitted_model = getattr(self, "model_", None)
        allow_missing = allow_missing or getattr(fitted_model, "handles_missing", False)
        array = self.check_input(X, reset=False, allow_missing=allow_missing)
        return array.astype(self.weights_.dtype, copy=False)

    def _rows_output(self, X: Any, output: str) -> np.ndarray:
        x = self._fitted_rows(X)
        num_samples = x.shape[0]
        # Padded to a bucket of rows: every size of a bucket runs one compiled program, and each
        # row's output is computed on its own, so the copies change nothing.
        x, _ = pad_rows(x)
        size = self.chunk_size or default_chunk_size(x.shape[0], chunk_width(self.model_, x))
        values = _per_row(self.model_, self.params_, x, output, int(size))
        return np.asarray(values)[:num_samples]

    def predict(self, X: Any) -> np.ndarray:
        """The most probable component of each row, shape ``(n_samples,)``."""
        return self._rows_output(X, "labels")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities (posterior component probabilities), shape ``(n_samples, K)``."""
        return self._rows_output(X, "proba")

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row under the mixture, shape ``(n_samples,)``."""
        return self._rows_output(X, "log_density")

    def impute(self, X: Any) -> np.ndarray:
        """``X`` with each NaN replaced by its conditional mean given the row's observed values.

        Each component's conditional mean (for Gaussians ``E[x_m | x_o, k]``) is weighted by the
        row's responsibilities, computed from its observed values; categorical codes get their
        most probable level. ``X`` itself is not modified. See :func:`jaxem.missing.impute`.
        """
        x = self._fitted_rows(X, allow_missing=True)
        return np.asarray(impute(self.model_, self.params_, x, self.chunk_size))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-density of the rows of ``X``."""
        del y
        return float(np.mean(self.score_samples(X)))

    def _n_parameters(self) -> int:
        family = self.model_.components
        count = getattr(family, "num_free_parameters", None)
        if count is None:
            raise NotImplementedError(
                f"bic and aic need the number of free parameters, but {type(family).__name__} has "
                "no num_free_parameters(num_features) method: add one that counts the free "
                "parameters of the K components (without the mixture weights)."
            )
        return int(count(self.n_features_in_)) + self.model_.num_components - 1

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        log_density = self.score_samples(X)
        n = log_density.shape[0]
        return float(-2 * np.sum(log_density) + self._n_parameters() * np.log(n))

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return float(-2 * np.sum(self.score_samples(X)) + 2 * self._n_parameters())

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture; returns ``(X, component labels)``.

        The labels come sorted, as in scikit-learn. Draws are seeded from ``random_state``.
        """
        self.check_fitted()
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or n_samples < 1
        ):
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least "
                "one sample."
            )
        family = self.model_.components
        if not callable(getattr(family, "sample", None)):
            raise NotImplementedError(
                f"{type(family).__name__} cannot sample: give the family a "
                "sample(key, params, labels) method that returns one draw per label."
            )
        key = seeded_keys(validation.check_random_state(self.random_state))
        n_samples = int(n_samples)
        x, labels = _sample(
            self.model_, self.params_, key, n_samples, power_of_two_bucket(n_samples, minimum=16)
        )
        return np.asarray(x)[:n_samples], np.asarray(labels)[:n_samples]


class GaussianMixture(MixtureModel):
    """Gaussian mixture with scikit-learn's ``GaussianMixture`` interface, fitted by jaxem.

    The parameters mean what they mean in scikit-learn; in addition ``chunk_size`` bounds the
    rows processed at once, and ``accelerate="squarem"`` fits with SQUAREM (monotone; ``n_iter_``
    then counts E-steps), and ``missing="marginalize"`` fits data with NaN entries by exact EM for
    incomplete data (see :class:`MixtureModel`). ``init_params`` maps to :class:`jaxem.Gaussian`'s
    ``init_method``:
    ``"kmeans"`` (Lloyd's k-means from k-means++ seeds), ``"k-means++"``, ``"random"`` (random
    responsibilities) and ``"random_from_data"`` (random rows as means). The ``n_init`` restarts
    run in parallel; restart ``i`` with an integer ``random_state`` starts from
    ``jax.random.split(jax.random.key(random_state), n_init)[i]``.

    User initialisation: ``weights_init``, ``means_init`` and ``precisions_init`` have
    scikit-learn's shapes for the covariance type. Given all three, every restart starts there.
    Given some, the others are filled in: with ``means_init``, each row is assigned to its nearest
    given mean and the weights and covariances are those of this hard partition (a deterministic
    start); without it, means, covariances and (uniform) weights come from ``init_params``.

    dtype policy: float32 input is fitted in float32; float64 input is fitted in float64 when
    JAX's 64-bit mode is on (``JAX_ENABLE_X64=1``), and in float32 with a
    :class:`jaxem.PrecisionWarning` when it is off; integer input is fitted in JAX's default float
    type. Fitted attributes are NumPy arrays of the fitting dtype, and later input is converted to
    it.

    Attributes (besides :class:`MixtureModel`'s): ``means_``, ``covariances_``, ``precisions_``,
    ``precisions_cholesky_`` in scikit-learn's shapes, and ``degenerate_``: per component, whether
    it has fewer points than it needs or a covariance at the ``reg_covar`` floor (from the final
    E-step's counts).

    Example:
        >>> import numpy as np, jaxem
        >>> x = np.random.default_rng(0).normal(size=(300, 2))
        >>> gm = jaxem.GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
        >>> gm.means_.shape, gm.predict_proba(x).shape
        ((3, 2), (300, 3))
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        chunk_size: int | None = None,
        accelerate: str | None = None,
        missing: str = "error",
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.chunk_size = chunk_size
        self.accelerate = accelerate
        self.missing = missing

    def _check_family_settings(
        self, num_samples: int, num_features: int, dtype: np.dtype
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        k = validation.check_num_components(self.n_components, num_samples)
        covariance_type = validation.check_choice(
            "covariance_type", self.covariance_type, COVARIANCE_TYPES
        )
        validation.check_choice("init_params", self.init_params, tuple(INIT_PARAMS))
        validation.check_real("reg_covar", self.reg_covar, 0.0)
        weights = means = precisions = None
        if self.weights_init is not None:
            weights = validation.check_weights_init(self.weights_init, k, dtype)
        if self.means_init is not None:
            means = validation.check_init_array(
                "means_init", self.means_init, (k, num_features), dtype
            )
        if self.precisions_init is not None:
            d = num_features
            shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
            precisions = validation.check_init_array(
                "precisions_init", self.precisions_init, shape[covariance_type], dtype
            )
            if covariance_type in ("full", "tied"):
                validation.check_positive_definite("precisions_init", precisions)
            else:
                validation.check_positive("precisions_init", precisions)
        return weights, means, precisions

    def _build_model(self, num_features: int) -> Mixture:
        del num_features
        gaussian = Gaussian(
            int(self.n_components),
            self.covariance_type,
            float(self.reg_covar),
            INIT_PARAMS[self.init_params],
        )
        return Mixture(gaussian)

    def _initial_params(
        self, model: Mixture, keys: Array, x: Array, row_weights: Array | None, checked: Any
    ) -> MixtureParams | None:
        weights_init, means_init, precisions_init = checked
        if weights_init is None and means_init is None and precisions_init is None:
            return None
        return _gaussian_initial_params(
            model, keys, x, row_weights, weights_init, means_init, precisions_init
        )

    def _set_family_attributes(self, model: Mixture, params: MixtureParams, counts: Array) -> None:
        self.means_ = np.asarray(params.components.means)
        self.precisions_cholesky_ = np.asarray(params.components.precision_cholesky)
        covariances, precisions, degenerate = _gaussian_attributes(
            model.components, params.components, counts
        )
        self.covariances_ = np.asarray(covariances)
        self.precisions_ = np.asarray(precisions)
        self.degenerate_ = np.asarray(degenerate)


@partial(cached_jit, static_argnames=("gaussian",))
def _gaussian_attributes(
    gaussian: Gaussian, params: GaussianParams, counts: Array
) -> tuple[Array, Array, Array]:
    # Compiled (at full precision): eager float32 products on a GPU would be TensorFloat-32.
    return (
        gaussian.covariances(params),
        gaussian.precisions(params),
        gaussian.degenerate(params, counts),
    )


@partial(cached_jit, static_argnames=("model",))
def _gaussian_initial_params(
    model: Mixture,
    keys: Array,
    x: Array,
    row_weights: Array | None,
    weights_init: Array | None,
    means_init: Array | None,
    precisions_init: Array | None,
) -> MixtureParams:
    """One start per key from scikit-learn-style user initial parameters (some may be ``None``)."""
    gaussian = model.components
    chunk_size = default_chunk_size(x.shape[0], gaussian.num_components * x.shape[1])

    def from_means() -> MixtureParams:
        reference = GaussianParams(means_init, jnp.zeros((), x.dtype))

        def chunk(xc: Array, wc: Array | None, _rows: Array) -> Any:
            resp = nearest_center(xc, means_init)
            return gaussian.chunk_stats(reference, xc, resp if wc is None else resp * wc[:, None])

        stats = reduce_chunks(chunk, x, row_weights, chunk_size)
        # As scikit-learn: 10 eps per count keeps an empty component's weight above zero.
        counts = stats.counts + 10 * jnp.finfo(x.dtype).eps
        components = gaussian.m_step(reference, stats)._replace(means=means_init)
        return MixtureParams(counts / jnp.sum(counts), components)

    if not any(init is None for init in (weights_init, means_init, precisions_init)):
        # All given: every restart starts there, with no pass over the data.
        start = MixtureParams(
            weights_init, gaussian.params_from_precisions(means_init, precisions_init)
        )
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (keys.shape[0], *a.shape)), start)

    def one(key: Array) -> MixtureParams:
        if means_init is None:
            params = initial_params(model, key, Rows.in_memory(x, row_weights), sample_size(x))
        else:
            params = from_means()
        components = params.components
        if precisions_init is not None:
            components = gaussian.params_from_precisions(components.means, precisions_init)
        mixture_weights = params.weights if weights_init is None else weights_init
        return MixtureParams(mixture_weights, components)

    return jax.vmap(one)(keys)


class SemiSupervisedMixture(MixtureModel):
    """A :class:`MixtureModel` whose ``fit(X, y)`` takes partial labels, for any family.

    ``y[n]`` is the component of row ``n``, or -1 when unknown (``y=None``: no labels). Labelled
    rows keep their responsibilities fixed to their label (see :class:`jaxem.Labelled`), so the
    fitted components follow the labels' order; ``predict`` on new rows is the plain mixture's.

    Example:
        >>> import numpy as np, jaxem
        >>> x = np.concatenate([np.zeros((20, 3)), np.ones((20, 3))])
        >>> y = np.full(40, -1); y[0], y[-1] = 1, 0
        >>> est = jaxem.SemiSupervisedMixture(jaxem.Bernoulli(2), random_state=0).fit(x, y)
        >>> est.predict(x[[0, -1]]).tolist()
        [1, 0]
    """

    def _partial_labels(self, y: Any, num_samples: int, num_components: int) -> np.ndarray | None:
        return None if y is None else check_labels(y, num_samples, num_components)
