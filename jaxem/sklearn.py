"""scikit-learn-compatible estimators over the functional API.

:class:`MixtureModel` turns any component family (a :class:`jaxem.Components`) into an estimator
with scikit-learn's methods; :class:`GaussianMixture` is a drop-in replacement for
``sklearn.mixture.GaussianMixture``. The estimators are thin: they validate their input, run
:func:`jaxem.fit_restarts` (all ``n_init`` restarts as one vmapped computation) and make one more
chunked pass over the data for the final statistics. Per-row outputs (``predict``,
``predict_proba``, ``score_samples``) are computed chunk by chunk as well.

scikit-learn is optional: when it is importable the estimators derive from its ``BaseEstimator``
and ``DensityMixin`` (so ``clone``, pipelines and grid searches work) and raise its
``ConvergenceWarning`` and ``NotFittedError`` classes; without it they keep the same interface.
"""

from __future__ import annotations

import inspect
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem import validation
from jaxem.core.algorithm import EM, em
from jaxem.core.inputs import ConvergenceWarning, prepare_data
from jaxem.core.kernel import Status
from jaxem.core.mixture import Mixture, MixtureParams
from jaxem.core.model import Components
from jaxem.core.mstep import default_mstep
from jaxem.core.online import OnlineEM
from jaxem.core.precision import jit
from jaxem.core.rows import chunk_width, default_chunk_size, reduce_chunks
from jaxem.core.subsample import initial_params
from jaxem.drivers.fit import fit_restarts, start_params, take_lane
from jaxem.init import nearest_center
from jaxem.labels import Labelled, check_labels
from jaxem.missing import MISSING_OPTIONS, fill_column_means, impute, marginalize_missing
from jaxem.models.gaussian import COVARIANCE_TYPES, Gaussian, GaussianParams

Array = jax.Array

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning
    from sklearn.exceptions import NotFittedError

    class _EstimatorConvergenceWarning(ConvergenceWarning, _SklearnConvergenceWarning):
        """Caught both as ``jaxem.ConvergenceWarning`` and as scikit-learn's."""

    _ESTIMATOR_BASES: tuple[type, ...] = (DensityMixin, BaseEstimator)

except ImportError:  # scikit-learn is optional

    class NotFittedError(ValueError, AttributeError):
        """An estimator was used before ``fit``."""

    _EstimatorConvergenceWarning = ConvergenceWarning

    class _ParamsBase:
        """``get_params`` / ``set_params`` from the constructor's signature, as scikit-learn's."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            signature = inspect.signature(cls.__init__)
            return sorted(name for name in signature.parameters if name != "self")

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            del deep
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params: Any) -> Any:
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for {type(self).__name__}.")
                setattr(self, name, value)
            return self

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    _ESTIMATOR_BASES = (_ParamsBase,)


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


@partial(jit, static_argnames=("model", "output", "batch_size"))
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


@partial(jit, static_argnames=("algo",))
def _final_counts(algo: EM, params: MixtureParams, x: Array, weights: Array | None) -> Array:
    """Summed responsibilities per component at ``params`` (the final E-step)."""
    return algo.e_pass(params, x, weights)[0].counts


# Compiled once per model and shapes, for every call (each of partial_fit's mini-batches).
online_update = jit(OnlineEM.update, static_argnums=0)


@partial(jit, static_argnames=("model", "num_samples"))
def _sample(model: Mixture, params: MixtureParams, key: Array, num_samples: int):
    key_labels, key_draw = jax.random.split(key)
    labels = jax.random.categorical(key_labels, jnp.log(params.weights), shape=(num_samples,))
    # Sorted like scikit-learn's sample: all draws of component 0, then of component 1, ...
    labels = jnp.sort(labels)
    return model.components.sample(key_draw, params.components, labels), labels


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


class MixtureModel(*_ESTIMATOR_BASES):
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
        verbose: print the mean log-likelihood every ``verbose`` iterations (0: silent).
        chunk_size: rows per chunk of every pass over the data (``None``: chosen from the sizes).
        weight_concentration: symmetric Dirichlet prior on the mixture weights (1: none).
        accelerate: ``None`` (plain EM) or ``"squarem"``: SQUAREM extrapolation, still monotone,
            usually several times fewer passes over the data; ``n_iter_`` then counts E-steps.
        missing: ``"error"`` (the default: NaN in ``X`` is refused, as in scikit-learn) or
            ``"marginalize"``: NaN marks a missing value, marginalised exactly in every E-step
            (see :mod:`jaxem.missing`); ``predict``, ``predict_proba`` and ``score_samples`` then
            accept rows with NaN and ``impute`` fills them in. A row must have one observed value.

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
        chunk_size: int | None = None,
        weight_concentration: float = 1.0,
        accelerate: str | None = None,
        missing: str = "error",
    ) -> None:
        self.components = components
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.chunk_size = chunk_size
        self.weight_concentration = weight_concentration
        self.accelerate = accelerate
        self.missing = missing

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

    def _progress_interval(self) -> int:
        return validation.check_int("verbose", self.verbose, 0)

    def _initial_params(
        self, model: Mixture, keys: Array, x: Array, weights: Array | None, checked: Any
    ) -> MixtureParams | None:
        """Initial parameters with a leading restart axis, or ``None`` to draw them from keys."""
        del model, keys, x, weights, checked
        return None

    def _set_family_attributes(self, model: Mixture, params: MixtureParams, counts: Array) -> None:
        del model, params, counts

    def _partial_labels(self, y: Any, num_samples: int, num_components: int) -> np.ndarray | None:
        """Checked partial labels from ``fit``'s ``y``, or ``None`` to ignore ``y`` (the default,
        as scikit-learn's mixtures do)."""
        del y, num_samples, num_components
        return None

    # ---- fitting

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MixtureModel:
        """Fit the mixture by EM with ``n_init`` parallel restarts; returns ``self``.

        Args:
            X: array-like ``(n_samples, n_features)``.
            y: ignored (partial labels for :class:`SemiSupervisedMixture`).
            sample_weight: optional non-negative weight per row (an integer weight counts a row
                that many times).
        """
        marginalize = validation.check_choice("missing", self.missing, MISSING_OPTIONS) != "error"
        array = validation.check_data(X, allow_missing=marginalize)
        num_samples, num_features = array.shape
        n_init = validation.check_int("n_init", self.n_init, 1)
        max_iter = validation.check_int("max_iter", self.max_iter, 0)
        tol = validation.check_real("tol", self.tol, 0.0)
        chunk_size = validation.check_optional_int("chunk_size", self.chunk_size, 1)
        warm = validation.check_bool("warm_start", self.warm_start) and hasattr(self, "params_")
        verbose = self._progress_interval()
        seed = None if warm else validation.check_random_state(self.random_state)
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(array.dtype))
        checked = self._check_family_settings(num_samples, num_features, dtype)
        sample_weight = validation.check_sample_weight(sample_weight, num_samples)
        model = plain_model = self._build_model(num_features)
        if marginalize:
            model = marginalize_missing(plain_model)
        labels = self._partial_labels(y, num_samples, model.num_components)
        # A family that restricts its data (binary, counts, codes) says so before any work.
        check_family_data = getattr(model.components, "check_data", None)
        if check_family_data is not None:
            check_family_data(array)
        if warm and (
            num_features != self.n_features_in_ or self.weights_.shape[0] != model.num_components
        ):
            raise ValueError(
                f"warm_start continues the previous fit ({self.weights_.shape[0]} components, "
                f"{self.n_features_in_} features), but this fit has {model.num_components} "
                f"components and {num_features} features: set warm_start=False to start afresh."
            )

        x, weights = prepare_data(array, sample_weight, allow_missing=marginalize)
        fit_model, data = model, x
        if labels is not None:
            fit_model = Mixture(Labelled(model.components), model.weight_concentration)
            data = (x, jnp.asarray(labels))
        width = chunk_width(fit_model, data)
        restart_chunk = chunk_size or default_chunk_size(num_samples, width, n_init)
        # A family without a closed form for every block (a gamma shape) takes the gradient path.
        mstep = default_mstep(fit_model)
        algo = em(fit_model, mstep, chunk_size=restart_chunk, accelerate=self.accelerate)
        if warm:
            n_init = 1
            init = jax.tree.map(lambda a: jnp.asarray(a, x.dtype)[None], self.params_)
        else:
            keys = jax.random.split(jax.random.key(seed), n_init)
            # User-given starts are estimated from the data with column means filled in.
            start_x = fill_column_means(x, weights) if marginalize else x
            init = self._initial_params(plain_model, keys, start_x, weights, checked)
            init = keys if init is None else init
        best, lanes = fit_restarts(
            algo, init, data, weights, max_iter=max_iter, tol=tol, verbose=verbose
        )
        if int(best.status) == Status.NONFINITE:
            raise ValueError(ILL_DEFINED_MESSAGE)
        final = em(fit_model, chunk_size=chunk_size or default_chunk_size(num_samples, width))
        counts = _final_counts(final, best.params, data, weights)

        n_iter = int(best.num_iters)
        self.model_ = model
        self.params_ = _to_numpy(best.params)
        self.weights_ = self.params_.weights
        self.n_features_in_ = num_features
        self.n_iter_ = n_iter
        self.converged_ = int(best.status) == Status.CONVERGED
        # scikit-learn's lower bound is the mean per sample (per unit of sample weight).
        total = np.asarray(num_samples if weights is None else jnp.sum(weights), x.dtype)
        self.lower_bounds_ = np.asarray(best.history[:n_iter]) / total
        self.lower_bound_ = float(
            self.lower_bounds_[-1] if n_iter else np.asarray(best.log_likelihood) / total
        )
        self.restart_log_likelihoods_ = np.asarray(lanes.log_likelihood) / total
        self.restart_n_iters_ = np.asarray(lanes.num_iters)
        self.restart_statuses_ = np.asarray(lanes.status)
        self._set_family_attributes(model, best.params, counts)
        if not self.converged_ and max_iter > 0:
            warnings.warn(
                f"The best of {n_init} restart(s) did not converge within max_iter={max_iter} "
                f"iterations (tol={tol:g}): increase max_iter or tol, try other initial "
                "parameters, or check the data for degenerate features.",
                _EstimatorConvergenceWarning,
                stacklevel=2,
            )
        return self

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MixtureModel:
        """One online EM step (:class:`jaxem.streaming.OnlineEM`) on a mini-batch; returns ``self``.

        The first call starts from the fitted parameters if there are any, else initialises from
        this batch; each call moves the running statistics toward the batch's by the step
        ``(t + 1) ** -0.6`` and refits the parameters from them. ``n_iter_`` counts the batches.
        """
        del y
        array = validation.check_data(X)
        num_samples, num_features = array.shape
        sample_weight = validation.check_sample_weight(sample_weight, num_samples)
        x, weights = prepare_data(array, sample_weight)
        state = getattr(self, "_online_state", None)
        if state is None or state.params is not getattr(self, "_online_params", None):
            if hasattr(self, "params_"):
                validation.check_num_features(array, self.n_features_in_, type(self).__name__)
                model = self.model_
                params = jax.tree.map(lambda a: jnp.asarray(a, x.dtype), self.params_)
            else:
                checked = self._check_family_settings(num_samples, num_features, x.dtype)
                model = self._build_model(num_features)
                key = jax.random.key(validation.check_random_state(self.random_state))
                init = self._initial_params(model, key[None], x, weights, checked)
                if init is None:
                    rows = em(model).for_data(x).rows(x, weights)
                    init = start_params(model, key[None], rows)
                params = take_lane(init, 0)
            state = OnlineEM(model).init(params)
        else:
            validation.check_num_features(array, self.n_features_in_, type(self).__name__)
        online = OnlineEM(self.model_ if hasattr(self, "model_") else model)
        state, batch_log_likelihood = online_update(online, state, x, weights)
        self.model_ = online.model
        self.params_ = _to_numpy(state.params)
        self._online_state, self._online_params = state, state.params
        self.weights_ = self.params_.weights
        self.n_features_in_ = num_features
        self.n_iter_ = int(state.count)
        self.converged_ = False
        self.lower_bound_ = float(batch_log_likelihood) / float(
            num_samples if weights is None else jnp.sum(weights)
        )
        self._set_family_attributes(online.model, state.params, state.stats.counts * state.seen)
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then return each row's most probable component (equals ``fit(X).predict(X)``)."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    # ---- using the fitted model

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "params_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _fitted_rows(self, X: Any, allow_missing: bool = False) -> Array:
        self._check_fitted()
        fitted_model = getattr(self, "model_", None)
        allow_missing = allow_missing or getattr(fitted_model, "handles_missing", False)
        array = validation.check_data(X, allow_missing=allow_missing)
        validation.check_num_features(array, self.n_features_in_, type(self).__name__)
        return jnp.asarray(array.astype(self.weights_.dtype, copy=False))

    def _rows_output(self, X: Any, output: str) -> np.ndarray:
        x = self._fitted_rows(X)
        size = self.chunk_size or default_chunk_size(x.shape[0], chunk_width(self.model_, x))
        return np.asarray(_per_row(self.model_, self.params_, x, output, int(size)))

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
        self._check_fitted()
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
        key = jax.random.key(validation.check_random_state(self.random_state))
        x, labels = _sample(self.model_, self.params_, key, int(n_samples))
        return np.asarray(x), np.asarray(labels)

    # ---- persistence

    def save(self, path: Any) -> None:
        """Write the estimator (parameters and fitted attributes) to ``path``; see :mod:`jaxem.io`.

        Example:
            >>> import numpy as np, jaxem, tempfile, os
            >>> x = np.random.default_rng(0).normal(size=(100, 2))
            >>> gm = jaxem.GaussianMixture(2, random_state=0).fit(x)
            >>> path = os.path.join(tempfile.mkdtemp(), "gm.npz")
            >>> gm.save(path)
            >>> loaded = jaxem.GaussianMixture.load(path)
            >>> bool((loaded.predict_proba(x) == gm.predict_proba(x)).all())
            True
        """
        from jaxem import io

        io.save(path, self)

    @classmethod
    def load(cls, path: Any) -> Any:
        """Read an estimator written by :meth:`save`; the file must hold an instance of ``cls``."""
        from jaxem import io

        return io.load_estimator(path, cls)


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

    def _progress_interval(self) -> int:
        verbose = validation.check_int("verbose", self.verbose, 0)
        interval = validation.check_int("verbose_interval", self.verbose_interval, 1)
        return interval if verbose else 0

    def _initial_params(
        self, model: Mixture, keys: Array, x: Array, weights: Array | None, checked: Any
    ) -> MixtureParams | None:
        weights_init, means_init, precisions_init = checked
        if weights_init is None and means_init is None and precisions_init is None:
            return None
        return _gaussian_initial_params(
            model, keys, x, weights, weights_init, means_init, precisions_init
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


@partial(jit, static_argnames=("gaussian",))
def _gaussian_attributes(
    gaussian: Gaussian, params: GaussianParams, counts: Array
) -> tuple[Array, Array, Array]:
    # Compiled (at full precision): eager float32 products on a GPU would be TensorFloat-32.
    return (
        gaussian.covariances(params),
        gaussian.precisions(params),
        gaussian.degenerate(params, counts),
    )


@partial(jit, static_argnames=("model",))
def _gaussian_initial_params(
    model: Mixture,
    keys: Array,
    x: Array,
    weights: Array | None,
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

        stats = reduce_chunks(chunk, x, weights, chunk_size)
        # As scikit-learn: 10 eps per count keeps an empty component's weight above zero.
        counts = stats.counts + 10 * jnp.finfo(x.dtype).eps
        components = gaussian.m_step(reference, stats)._replace(means=means_init)
        return MixtureParams(counts / jnp.sum(counts), components)

    def one(key: Array) -> MixtureParams:
        params = initial_params(model, key, x, weights) if means_init is None else from_means()
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
