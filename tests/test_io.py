"""Persistence: exact round trips of models, results and estimators; clear errors for bad files."""

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import io as jio
from jaxem.sklearn import GaussianMixture, MixtureModel

pytestmark = pytest.mark.timeout(120)


def data(n: int = 120, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, (n, 2)), rng.normal(4, 1, (n, 2))]).astype(dtype)


def rewrite(path, change) -> None:
    """Rewrite a saved file with ``change(metadata)`` applied to its metadata."""
    with np.load(path, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    metadata = json.loads(entries[jio.METADATA_KEY].tobytes().decode())
    change(metadata)
    entries[jio.METADATA_KEY] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **entries)


def assert_same_tree(got, want) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert type(a) is type(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def fitted_result():
    model = jaxem.Mixture(jaxem.Gaussian(2, "diag", reg_covar=1e-5), weight_concentration=1.5)
    return model, jaxem.fit(jaxem.em(model), jax.random.key(0), data(), max_iter=20)


@pytest.fixture(scope="module")
def fitted_estimator():
    return GaussianMixture(2, covariance_type="tied", n_init=2, random_state=0).fit(data())


def test_model_and_fit_result_round_trip_exactly(tmp_path, fitted_result):
    model, result = fitted_result
    path = tmp_path / "result.npz"
    jio.save(path, model, result)
    saved = jio.load(path)
    assert isinstance(saved, jio.Saved)
    assert saved.model == model and hash(saved.model) == hash(model)
    assert isinstance(saved.params, jaxem.FitResult)
    assert_same_tree(saved.params, result)
    x = jnp.asarray(data())
    got = saved.model.log_resp(saved.params.params, x)
    want = model.log_resp(result.params, x)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    assert sorted(os.listdir(tmp_path)) == ["result.npz"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_params_keep_dtype_and_bits(tmp_path, dtype):
    model = jaxem.Mixture(jaxem.Gaussian(3))
    params = jax.jit(model.init)(jax.random.key(1), jnp.asarray(data(dtype=dtype)), None)
    jio.save(tmp_path / "p.jaxem", model, params)
    model_back, params_back = jio.load(tmp_path / "p.jaxem")
    assert model_back == model
    assert params_back.components.means.dtype == dtype
    assert_same_tree(params_back, params)


def test_other_families_round_trip(tmp_path):
    x = (data() > 1).astype(np.float64)
    model = jaxem.Mixture(jaxem.Bernoulli(2))
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x), None)
    jio.save(tmp_path / "b.npz", model, params)
    back = jio.load(tmp_path / "b.npz")
    assert back.model == model
    assert_same_tree(back.params, params)
    assert jio.read_metadata(tmp_path / "b.npz")["family"] == "Bernoulli"


def test_metadata_is_versioned_and_readable(tmp_path, fitted_result):
    model, result = fitted_result
    jio.save(tmp_path / "r.npz", model, result.params)
    metadata = jio.read_metadata(tmp_path / "r.npz")
    assert metadata["format"] == "jaxem"
    assert metadata["format_version"] == jio.FORMAT_VERSION
    assert metadata["jaxem_version"] == jaxem.__version__
    assert metadata["kind"] == "result"
    assert metadata["class"] == "jaxem.Mixture"
    assert metadata["family"] == "Gaussian"
    fields = metadata["content"]["model"]["fields"]
    assert fields["weight_concentration"] == 1.5
    assert fields["components"]["fields"]["covariance_type"] == "diag"


def test_estimator_round_trip_predicts_bit_for_bit(tmp_path, fitted_estimator):
    gm = fitted_estimator
    path = tmp_path / "gm.npz"
    gm.save(path)
    back = GaussianMixture.load(path)
    assert type(back) is GaussianMixture
    assert back.get_params() == gm.get_params()
    x = data(50)
    np.testing.assert_array_equal(back.predict_proba(x), gm.predict_proba(x))
    np.testing.assert_array_equal(back.score_samples(x), gm.score_samples(x))
    np.testing.assert_array_equal(back.predict(x), gm.predict(x))
    for name in ("means_", "covariances_", "precisions_cholesky_", "weights_", "lower_bounds_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(gm, name))
        assert getattr(back, name).dtype == getattr(gm, name).dtype
    assert back.n_iter_ == gm.n_iter_ and back.converged_ == gm.converged_
    assert back.lower_bound_ == gm.lower_bound_
    assert back.model_ == gm.model_
    assert jio.load(path).get_params() == gm.get_params()


def test_estimator_with_array_parameters_and_generic_family(tmp_path):
    x = data(40)
    weights_init = np.array([0.3, 0.7])
    gm = GaussianMixture(2, weights_init=weights_init, random_state=0, max_iter=5)
    gm.save(tmp_path / "unfitted.npz")
    back = GaussianMixture.load(tmp_path / "unfitted.npz")
    np.testing.assert_array_equal(back.weights_init, weights_init)
    assert not hasattr(back, "params_")
    generic = MixtureModel(jaxem.Gaussian(2, "spherical"), random_state=0, max_iter=50).fit(x)
    generic.save(tmp_path / "generic.npz")
    back = MixtureModel.load(tmp_path / "generic.npz")
    assert back.components == generic.components
    np.testing.assert_array_equal(back.score_samples(x), generic.score_samples(x))


def test_user_registered_family_round_trips(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class ShiftedGaussian(jaxem.Gaussian):
        shift: float = 0.0

    class Extra(NamedTuple):
        value: jax.Array

    model = jaxem.Mixture(ShiftedGaussian(2, shift=0.5))
    with pytest.raises(ValueError) as info:
        jio.save(tmp_path / "u.npz", model, Extra(jnp.ones(3)))
    assert str(info.value) == (
        "model.components is a test_user_registered_family_round_trips.<locals>.ShiftedGaussian, "
        "which is not registered for saving: call jaxem.io.register("
        "test_user_registered_family_round_trips.<locals>.ShiftedGaussian) first."
    )
    jio.register(ShiftedGaussian)
    jio.register(Extra)
    jio.save(tmp_path / "u.npz", model, Extra(jnp.arange(3.0)))
    back = jio.load(tmp_path / "u.npz")
    assert back.model == model and back.model.components.shift == 0.5
    assert_same_tree(back.params, Extra(jnp.arange(3.0)))


# ---- errors ----------------------------------------------------------------------------------


def corrupted_message(path, reason: str) -> str:
    return (
        f"{path} is not a readable jaxem file ({reason}): it may be corrupted or truncated, or "
        "written by another program; save the model again."
    )


def test_garbage_and_truncated_files_are_reported_as_corrupted(tmp_path, fitted_result):
    model, result = fitted_result
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not an archive")
    with pytest.raises(ValueError) as info:
        jio.load(garbage)
    assert str(info.value) == corrupted_message(garbage, "it is not a valid .npz archive")

    good = tmp_path / "good.npz"
    jio.save(good, model, result)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        jio.load(truncated)
    assert str(info.value) == corrupted_message(truncated, "it is not a valid .npz archive")


def test_foreign_npz_and_broken_metadata_are_reported(tmp_path, fitted_result):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError) as info:
        jio.load(foreign)
    assert str(info.value) == corrupted_message(foreign, "it has no jaxem metadata")

    model, result = fitted_result
    missing_array = tmp_path / "missing.npz"
    jio.save(missing_array, model, result.params)
    with np.load(missing_array) as archive:
        entries = {k: archive[k] for k in archive.files if k != "a0"}
    with open(missing_array, "wb") as handle:
        np.savez(handle, **entries)
    with pytest.raises(ValueError) as info:
        jio.load(missing_array)
    assert str(info.value) == corrupted_message(missing_array, "array 'a0' is missing")

    bad_json = tmp_path / "bad_json.npz"
    np.savez(bad_json, __jaxem__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(ValueError) as info:
        jio.load(bad_json)
    assert str(info.value) == corrupted_message(bad_json, "its metadata is not valid JSON")


def test_pickled_objects_are_never_loaded(tmp_path, fitted_result):
    model, result = fitted_result
    path = tmp_path / "pickled.npz"
    jio.save(path, model, result.params)
    with np.load(path) as archive:
        entries = {k: archive[k] for k in archive.files}
    entries["a0"] = np.array([{"payload": 1}], dtype=object)  # needs pickle to read
    with open(path, "wb") as handle:
        np.savez(handle, **entries)
    with pytest.raises(ValueError) as info:
        jio.load(path)
    assert str(info.value) == corrupted_message(
        path, "it holds pickled Python objects, which are never loaded"
    )


def test_newer_format_version_asks_for_an_upgrade(tmp_path, fitted_result):
    model, result = fitted_result
    path = tmp_path / "future.npz"
    jio.save(path, model, result.params)
    rewrite(path, lambda m: m.update(format_version=jio.FORMAT_VERSION + 1, jaxem_version="9.0"))
    with pytest.raises(ValueError) as info:
        jio.load(path)
    assert str(info.value) == (
        f"{path} was written in jaxem file format {jio.FORMAT_VERSION + 1} (by jaxem 9.0), newer "
        f"than the format {jio.FORMAT_VERSION} this jaxem {jaxem.__version__} reads: upgrade "
        "jaxem to load it."
    )


def test_unknown_class_in_a_file_is_refused(tmp_path, fitted_result):
    model, result = fitted_result
    path = tmp_path / "unknown.npz"
    jio.save(path, model, result.params)
    rewrite(path, lambda m: m["content"]["model"].update(dataclass="os.system"))
    with pytest.raises(ValueError) as info:
        jio.load(path)
    assert str(info.value) == (
        f"{path} holds an instance of 'os.system', a class this program has not registered: "
        "import the module that defines it and call jaxem.io.register on it before loading."
    )


def test_a_file_of_another_kind_is_refused(tmp_path, fitted_result, fitted_estimator):
    model, result = fitted_result
    result_path = tmp_path / "result.npz"
    jio.save(result_path, model, result.params)
    with pytest.raises(ValueError) as info:
        GaussianMixture.load(result_path)
    assert str(info.value) == (
        f"{result_path} holds a Mixture model with its parameters, not an estimator: load it "
        "with jaxem.io.load(path), which returns (model, params)."
    )
    estimator_path = tmp_path / "gm.npz"
    fitted_estimator.save(estimator_path)
    with pytest.raises(ValueError) as info:
        jio.load(estimator_path, kind="result")
    assert str(info.value) == (
        f"{estimator_path} holds a fitted GaussianMixture estimator, not a model with its "
        "parameters: load it with GaussianMixture.load(path) or jaxem.io.load(path)."
    )
    generic = MixtureModel(jaxem.Gaussian(2))
    generic.save(tmp_path / "generic.npz")
    with pytest.raises(ValueError) as info:
        GaussianMixture.load(tmp_path / "generic.npz")
    assert str(info.value) == (
        f"{tmp_path / 'generic.npz'} holds a fitted MixtureModel estimator, not a "
        "GaussianMixture: load it with MixtureModel.load(path) or jaxem.io.load(path)."
    )


def test_unsavable_values_are_named(tmp_path, fitted_result):
    model, _ = fitted_result
    gm = GaussianMixture(2, random_state=np.random.RandomState(0))
    with pytest.raises(ValueError) as info:
        gm.save(tmp_path / "rs.npz")
    assert str(info.value) == (
        "GaussianMixture.random_state is a RandomState, which cannot be saved: use an integer "
        "seed instead."
    )
    with pytest.raises(ValueError) as info:
        jio.save(tmp_path / "f.npz", model, {"f": print})
    assert str(info.value) == (
        "params['f'] is a builtin_function_or_method, which cannot be saved: register its class "
        "with jaxem.io.register, or leave it out."
    )
    with pytest.raises(ValueError) as info:
        jio.save(tmp_path / "n.npz", model)
    assert str(info.value) == (
        "save(path, model, params) needs the parameters (or the FitResult) to save with the model."
    )
    with pytest.raises(ValueError) as info:
        jio.load(tmp_path / "n.npz", kind="model")
    assert str(info.value) == "Unknown kind 'model': use 'result', 'estimator' or None."
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hmm_estimator_round_trips(tmp_path):
    from jaxem.hmm.estimators import GaussianHMM

    x = data(30)
    lengths = [40, 20]
    hmm = GaussianHMM(2, n_iter=3, random_state=0).fit(x, lengths)
    jio.save(tmp_path / "hmm.npz", hmm)
    back = jio.load_estimator(tmp_path / "hmm.npz", GaussianHMM)
    assert type(back) is GaussianHMM and back.get_params() == hmm.get_params()
    np.testing.assert_array_equal(back.predict(x, lengths), hmm.predict(x, lengths))
    assert back.score(x, lengths) == hmm.score(x, lengths)


# ---- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trips_a_kernel_state_exactly_and_refuses_another_fit(
    tmp_path, fitted_result
):
    x = jnp.asarray(data())
    squarem = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, "diag")), accelerate="squarem")
    rows = squarem.rows(x)
    params = squarem.model.init(jax.random.key(0), x, None)
    state = squarem.kernel.init(params, rows, tol=1e-4, max_iter=9)
    step = jax.jit(squarem.kernel.step)
    history = []
    for _ in range(3):
        state, info = step(state, rows)
        history.append(float(info.log_likelihood))
    assert state.accelerator is not None  # SQUAREM's cycle is part of the state
    path = tmp_path / "state.npz"
    jio.save_checkpoint(path, state, history)
    saved = jio.load_checkpoint(path, jax.eval_shape(lambda: state))
    assert isinstance(saved, jio.Checkpoint)
    assert_same_tree(saved.state, state)
    np.testing.assert_array_equal(saved.history, history)
    metadata = jio.read_metadata(path)
    assert (metadata["kind"], metadata["class"]) == ("checkpoint", type(state).__name__)
    assert metadata["params"] == "MixtureParams[GaussianParams]"

    # Another acceleration, or another model, is another fit.
    plain = jaxem.em(squarem.model)
    another = tmp_path / "another.npz"
    jio.save_checkpoint(another, plain.kernel.init(params, rows), [])
    wider = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3, "diag")))
    wider_params = wider.model.init(jax.random.key(0), x, None)
    for path_, like in [
        (path, plain.kernel.init(params, rows)),
        (another, squarem.kernel.init(params, rows)),
        (path, wider.kernel.init(wider_params, rows)),
    ]:
        with pytest.raises(ValueError) as info:
            jio.load_checkpoint(path_, like)
        assert str(info.value) == (
            f"The checkpoint {path_} was saved for another fit (another model, shape, dtype, "
            "M-step or acceleration): delete it, or pass the checkpoint of this fit."
        )

    # A checkpoint is not a model with its parameters, and the other way round.
    with pytest.raises(ValueError) as info:
        jio.load(path)
    message = str(info.value)
    assert message.startswith(f"{path} holds the checkpoint of a fit of ")
    assert message.endswith(
        " components, not a model with its parameters: load it with "
        "jaxem.io.load_checkpoint(path, like), or resume the fit that wrote it."
    )
    model, result = fitted_result
    result_path = tmp_path / "result.npz"
    jio.save(result_path, model, result.params)
    with pytest.raises(ValueError) as info:
        jio.load_checkpoint(result_path, state)
    assert str(info.value) == (
        f"{result_path} holds a Mixture model with its parameters, not a checkpoint: load it "
        "with jaxem.io.load(path), which returns (model, params)."
    )
