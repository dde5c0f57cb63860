"""Saving and loading fitted models and estimators, safely.

A file is one ``.npz`` archive: every array of the saved object under a short key, plus one entry
``__jaxem__`` holding UTF-8 JSON metadata (format version, jaxem version, kind, class, family and
the structure of the object with its hyperparameters). Loading uses ``allow_pickle=False`` and only
ever instantiates classes from a registry (jaxem's own models, parameter tuples and estimators, and
whatever :func:`register` adds), so an untrusted file cannot run code. Arrays come back with their
dtype and bits, so predictions after a round trip are identical.

Three kinds of file:

* ``save(path, model, params)``: a model configuration (a frozen dataclass such as
  ``jaxem.Mixture(jaxem.Gaussian(3))``) and its parameters or a whole :class:`jaxem.FitResult`;
  ``load(path)`` returns them as a :class:`Saved` ``(model, params)`` pair.
* ``save(path, estimator)``: a fitted estimator (``jaxem.GaussianMixture`` and friends): its
  constructor parameters and fitted attributes; ``load(path)`` returns an equal estimator
  (``GaussianMixture.load(path)`` also checks the class).
* ``save_checkpoint(path, state, history)``: the state of an EM kernel (parameters, stopping rule,
  an M-step's optimizer memory, an accelerator's cycle) and the log-likelihood history so far;
  ``load_checkpoint(path, like)`` reads it back into the structure of ``like``. Out-of-core fits
  write one after every pass and resume from it.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import json
import os
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np

FORMAT_VERSION = 1
METADATA_KEY = "__jaxem__"
KINDS = ("result", "estimator", "checkpoint")

_REGISTRY: dict[str, type] = {}
# Modules whose dataclasses, NamedTuples and estimators are registered on first use.
_BUILTIN_MODULES = (
    "jaxem.core.mixture",
    "jaxem.core.kernel",
    "jaxem.core.online",
    "jaxem.drivers.fit",
    "jaxem.drivers.bound",
    "jaxem.core.mstep",
    "jaxem.core.accelerate",
    "jaxem.models",
    "jaxem.labels",
    "jaxem.missing",
    "jaxem.hmm",
    "jaxem.estimators.mixture",
    "jaxem.estimators.hmm",
)
_builtins_loaded = False


class Saved(NamedTuple):
    """What :func:`load` returns for a model saved with its parameters.

    Attributes:
        model: the model configuration (e.g. a :class:`jaxem.Mixture`).
        params: the parameters, or the :class:`jaxem.FitResult` that was saved.
    """

    model: Any
    params: Any


def _is_namedtuple_class(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _is_estimator_class(cls: type) -> bool:
    return callable(getattr(cls, "get_params", None)) and callable(getattr(cls, "fit", None))


def _registry_name(cls: type) -> str:
    if cls.__module__.split(".")[0] == "jaxem":
        return f"jaxem.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type) -> type:
    """Allow instances of ``cls`` (a frozen dataclass, a NamedTuple or an estimator) in files.

    Usable as a class decorator on a user's own component family or parameter tuple.

    Example:
        >>> import dataclasses, jaxem
        >>> @register
        ... @dataclasses.dataclass(frozen=True)
        ... class Scaled(jaxem.Gaussian):
        ...     scale: float = 1.0
        >>> register(Scaled) is Scaled
        True
    """
    if not isinstance(cls, type) or not (
        dataclasses.is_dataclass(cls) or _is_namedtuple_class(cls) or _is_estimator_class(cls)
    ):
        raise ValueError(
            f"register takes a dataclass, a NamedTuple or an estimator class, got {cls!r}."
        )
    name = _registry_name(cls)
    known = _REGISTRY.get(name)
    if known is not None and known is not cls:
        raise ValueError(
            f"Another class is already registered as {name!r}: give this one another name or "
            "module."
        )
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module_name in _BUILTIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an optional part that is not installed
            continue
        for value in vars(module).values():
            if not isinstance(value, type) or not value.__module__.startswith("jaxem"):
                continue
            public_estimator = _is_estimator_class(value) and not value.__name__.startswith("_")
            if dataclasses.is_dataclass(value) or _is_namedtuple_class(value) or public_estimator:
                register(value)
    _builtins_loaded = True


def _lookup(name: str) -> type:
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise _UnknownClass(name)
    return cls


class _Corrupt(Exception):
    """The file's content does not have the structure this module writes."""


class _UnknownClass(Exception):
    """The file names a class missing from the registry."""


# ---- encoding ------------------------------------------------------------------------------------


class _Encoder:
    """Turns an object into JSON-able nodes, moving its arrays into ``self.arrays``."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value: Any, where: str) -> dict:
        if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise ValueError(
                f"{where} is a typed PRNG key, which cannot be saved: save "
                "jax.random.key_data(key) instead."
            )
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"{where} is an array of Python objects, which cannot be saved.")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = array
        return {"array": key, "jax": isinstance(value, jax.Array)}

    def __call__(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (np.ndarray, np.generic, jax.Array)):
            node = self.array(value, where)
            return {**node, "scalar": True} if isinstance(value, np.generic) else node
        if isinstance(value, enum.Enum):
            return self(value.value, where)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        cls = type(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {
                f.name: self(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)
                if f.init
            }
            return {"dataclass": self.registered(cls, where), "fields": fields}
        if isinstance(value, tuple) and _is_namedtuple_class(cls):
            fields = {name: self(item, f"{where}.{name}") for name, item in value._asdict().items()}
            return {"namedtuple": self.registered(cls, where), "fields": fields}
        if isinstance(value, (tuple, list)):
            items = [self(item, f"{where}[{i}]") for i, item in enumerate(value)]
            return {"tuple": items} if isinstance(value, tuple) else {"list": items}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"dict": {k: self(v, f"{where}[{k!r}]") for k, v in value.items()}}
        hint = (
            ": use an integer seed instead"
            if isinstance(value, np.random.RandomState | np.random.Generator)
            else ": register its class with jaxem.io.register, or leave it out"
        )
        raise ValueError(f"{where} is a {cls.__name__}, which cannot be saved{hint}.")

    @staticmethod
    def registered(cls: type, where: str) -> str:
        _load_builtins()
        name = _registry_name(cls)
        if _REGISTRY.get(name) is not cls:
            raise ValueError(
                f"{where} is a {cls.__qualname__}, which is not registered for saving: call "
                f"jaxem.io.register({cls.__qualname__}) first."
            )
        return name


def _decode(node: Any, arrays: Any) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if not isinstance(node, dict) or not 1 <= len(node) <= 3:
        raise _Corrupt("an entry of its metadata has an unknown form")
    if "array" in node:
        key = node["array"]
        if key not in arrays:
            raise _Corrupt(f"array {key!r} is missing")
        array = arrays[key]
        if node.get("scalar"):
            return array[()]
        return jax.numpy.asarray(array) if node.get("jax") else array
    if "tuple" in node:
        return tuple(_decode(item, arrays) for item in node["tuple"])
    if "list" in node:
        return [_decode(item, arrays) for item in node["list"]]
    if "dict" in node:
        return {k: _decode(v, arrays) for k, v in node["dict"].items()}
    for kind in ("dataclass", "namedtuple"):
        if kind in node:
            cls = _lookup(node[kind])
            fields = {k: _decode(v, arrays) for k, v in node["fields"].items()}
            return cls(**fields)
    raise _Corrupt("an entry of its metadata has an unknown form")


# ---- files ---------------------------------------------------------------------------------------


def _jaxem_version() -> str:
    import jaxem

    return jaxem.__version__


def _family(model: Any) -> str:
    inner = getattr(model, "components", None) or getattr(model, "emissions", None)
    return type(inner if inner is not None else model).__name__


def _params_class(params: Any) -> str:
    """The parameters' class, with the component parameters' for a mixture (a checkpoint holds
    parameters, not the model): ``MixtureParams[GaussianParams]``."""
    inner = getattr(params, "components", None)
    name = type(params).__name__
    return name if inner is None else f"{name}[{type(inner).__name__}]"


def _write(path: Any, metadata: dict, arrays: dict[str, np.ndarray]) -> None:
    text = json.dumps(metadata, sort_keys=True)
    entries = dict(arrays)
    entries[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    path = os.fspath(path)
    temporary = f"{path}.partial-{os.getpid()}"
    # Through a file object, so numpy does not append ".npz"; renamed at the end, so an
    # interrupted save never leaves a half-written file under the final name.
    with open(temporary, "wb") as handle:
        np.savez(handle, **entries)
    os.replace(temporary, path)


def save(path: str | os.PathLike, obj: Any, params: Any = None) -> None:
    """Save a model with its parameters (or :class:`jaxem.FitResult`), or a fitted estimator.

    Args:
        path: the file to write (any name; ``.npz`` or ``.jaxem`` is customary). It is replaced.
        obj: a model configuration (e.g. ``jaxem.Mixture(jaxem.Gaussian(3))``) or a fitted
            estimator (e.g. ``jaxem.GaussianMixture``).
        params: with a model, its parameters or the whole :class:`jaxem.FitResult`; nothing with an
            estimator.

    Example:
        >>> import jax, jaxem, tempfile, os
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> result = jaxem.fit(jaxem.em(model), jax.random.key(0), x)
        >>> path = os.path.join(tempfile.mkdtemp(), "fit.npz")
        >>> save(path, model, result)
        >>> saved = load(path)
        >>> saved.model == model, bool((saved.params.params.weights == result.params.weights).all())
        (True, True)
    """
    _load_builtins()
    encode = _Encoder()
    if _is_estimator_class(type(obj)):
        if params is not None:
            raise ValueError(
                "An estimator is saved on its own: call save(path, estimator) without params."
            )
        kind, name = "estimator", encode.registered(type(obj), type(obj).__name__)
        constructor = obj.get_params(deep=False)
        # scikit-learn's convention: fitted state ends with "_" (hmmlearn keeps some as "_covars_").
        fitted = {k: v for k, v in vars(obj).items() if k.endswith("_") and not k.startswith("__")}
        content = {
            "params": {k: encode(v, f"{type(obj).__name__}.{k}") for k, v in constructor.items()},
            "fitted": {k: encode(v, f"{type(obj).__name__}.{k}") for k, v in fitted.items()},
        }
        family = _family(getattr(obj, "model_", obj))
        if not fitted:
            family = type(obj).__name__
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if params is None:
            raise ValueError(
                "save(path, model, params) needs the parameters (or the FitResult) to save with "
                "the model."
            )
        kind, name = "result", encode.registered(type(obj), "model")
        content = {"model": encode(obj, "model"), "params": encode(params, "params")}
        family = _family(obj)
    else:
        raise ValueError(
            f"save takes a model configuration with its params, or a fitted estimator; got a "
            f"{type(obj).__name__}."
        )
    metadata = {
        "format": "jaxem",
        "format_version": FORMAT_VERSION,
        "jaxem_version": _jaxem_version(),
        "kind": kind,
        "class": name,
        "family": family,
        "content": content,
    }
    _write(path, metadata, encode.arrays)


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns.

    Attributes:
        state: the kernel's state (a :class:`jaxem.core.kernel.EMState`).
        history: the total log-likelihood before each iteration's M-step, one entry per step done.
    """

    state: Any
    history: np.ndarray


def save_checkpoint(path: str | os.PathLike, state: Any, history: Any) -> None:
    """Write a kernel's ``state`` and the ``history`` so far to ``path``, atomically.

    Every leaf of the state is stored as an array, its structure as text (checked on loading).

    Example:
        >>> import jax, jaxem, tempfile, os
        >>> from jaxem.core.kernel import EMKernel
        >>> from jaxem.core.rows import Rows
        >>> x = jax.random.normal(jax.random.key(0), (50, 2))
        >>> kernel = EMKernel(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> state = kernel.init(kernel.model.init(jax.random.key(1), x, None), Rows.in_memory(x))
        >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
        >>> save_checkpoint(path, state, [])
        >>> int(load_checkpoint(path, state).state.iteration)
        0
    """
    leaves, treedef = jax.tree.flatten(state)
    arrays = {f"leaf{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["history"] = np.asarray(history, dtype=np.float64)
    metadata = {
        "format": "jaxem",
        "format_version": FORMAT_VERSION,
        "jaxem_version": _jaxem_version(),
        "kind": "checkpoint",
        "class": type(state).__name__,
        "params": _params_class(getattr(state, "params", state)),
        "content": {"structure": str(treedef), "leaves": len(leaves)},
    }
    _write(path, metadata, arrays)


def load_checkpoint(path: str | os.PathLike, like: Any) -> Checkpoint:
    """Read a state written by :func:`save_checkpoint`; ``like`` (a state, or its shapes from
    ``jax.eval_shape``) gives the structure, shapes and dtypes it must have.

    Raises:
        ValueError: the file is not a checkpoint, or was saved for another model, shape, M-step
            or acceleration.
    """
    metadata, arrays = _read(path)
    if metadata["kind"] != "checkpoint":
        raise ValueError(_wrong_kind(path, metadata, "checkpoint"))
    leaves, treedef = jax.tree.flatten(like)
    content = metadata["content"]
    saved = [arrays.get(f"leaf{i}") for i in range(len(leaves))]
    if (
        content.get("structure") != str(treedef)
        or content.get("leaves") != len(leaves)
        or any(
            a is None or a.shape != np.shape(leaf) or a.dtype != np.dtype(leaf.dtype)
            for a, leaf in zip(saved, leaves, strict=True)
        )
    ):
        raise ValueError(
            f"The checkpoint {os.fspath(path)} was saved for another fit (another model, shape, "
            "dtype, M-step or acceleration): delete it, or pass the checkpoint of this fit."
        )
    state = treedef.unflatten([jax.numpy.asarray(a) for a in saved])
    return Checkpoint(state, np.asarray(arrays.get("history", np.zeros(0))))


def _read(path: Any) -> tuple[dict, dict[str, np.ndarray]]:
    def corrupt(reason: str) -> ValueError:
        return ValueError(
            f"{os.fspath(path)} is not a readable jaxem file ({reason}): it may be corrupted or "
            "truncated, or written by another program; save the model again."
        )

    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"No such file: {os.fspath(path)}") from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            if METADATA_KEY not in archive.files:
                raise corrupt("it has no jaxem metadata")
            text = archive[METADATA_KEY].tobytes().decode("utf-8")
            arrays = {name: archive[name] for name in archive.files if name != METADATA_KEY}
    except ValueError as error:
        if str(error).startswith(os.fspath(path)):
            raise
        if str(error).startswith("Object arrays cannot be loaded"):
            raise corrupt("it holds pickled Python objects, which are never loaded") from None
        raise corrupt("it is not a valid .npz archive") from error
    except (OSError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as error:
        raise corrupt("it is not a valid .npz archive") from error
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise corrupt("its metadata is not valid JSON") from error
    if not isinstance(metadata, dict) or metadata.get("format") != "jaxem":
        raise corrupt("its metadata is not jaxem's")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise corrupt("its format version is missing")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)} was written in jaxem file format {version} (by jaxem "
            f"{metadata.get('jaxem_version', '?')}), newer than the format {FORMAT_VERSION} this "
            f"jaxem {_jaxem_version()} reads: upgrade jaxem to load it."
        )
    if metadata.get("kind") not in KINDS or not isinstance(metadata.get("content"), dict):
        raise corrupt("its kind or content is missing")
    return metadata, arrays


def _decode_file(path: Any, metadata: dict, arrays: dict) -> Any:
    content = metadata["content"]
    try:
        if metadata["kind"] == "result":
            return Saved(_decode(content["model"], arrays), _decode(content["params"], arrays))
        cls = _lookup(metadata["class"])
        estimator = cls(**{k: _decode(v, arrays) for k, v in content["params"].items()})
        for name, value in content["fitted"].items():
            setattr(estimator, name, _decode(value, arrays))
        return estimator
    except _UnknownClass as error:
        raise ValueError(
            f"{os.fspath(path)} holds an instance of {error.args[0]!r}, a class this program has "
            "not registered: import the module that defines it and call jaxem.io.register on it "
            "before loading."
        ) from None
    except (_Corrupt, KeyError, TypeError, AttributeError, ValueError) as error:
        reason = str(error) if isinstance(error, _Corrupt) else "its content does not match"
        raise ValueError(
            f"{os.fspath(path)} is not a readable jaxem file ({reason}): it may be corrupted or "
            "truncated, or written by another program; save the model again."
        ) from error


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata (format and jaxem versions, kind, class, family, content) as a dict."""
    return _read(path)[0]


def load(path: str | os.PathLike, kind: str | None = None) -> Any:
    """Load what :func:`save` wrote: a :class:`Saved` ``(model, params)`` pair, or an estimator.

    Args:
        path: the file.
        kind: ``"result"`` or ``"estimator"`` to insist on one kind (``None``: either).

    Raises:
        ValueError: the file is corrupted or not jaxem's, comes from a newer file format, holds
            another kind than ``kind``, or names a class that is not registered.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}: use 'result', 'estimator' or None.")
    metadata, arrays = _read(path)
    if kind is not None and metadata["kind"] != kind:
        raise ValueError(_wrong_kind(path, metadata, kind))
    if metadata["kind"] == "checkpoint":
        raise ValueError(_wrong_kind(path, metadata, "result"))
    return _decode_file(path, metadata, arrays)


def _describe(metadata: dict) -> str:
    name = metadata.get("class", "?").rsplit(".", 1)[-1]
    if metadata["kind"] == "estimator":
        return f"a fitted {name} estimator"
    if metadata["kind"] == "checkpoint":
        return f"the checkpoint of a fit of {metadata.get('family', '?')} components"
    return f"a {name} model with its parameters"


def _wrong_kind(path: Any, metadata: dict, wanted: str) -> str:
    wanted_text = {
        "estimator": "an estimator",
        "checkpoint": "a checkpoint",
        "result": "a model with its parameters",
    }[wanted]
    how = {
        "estimator": f"{metadata['class'].rsplit('.', 1)[-1]}.load(path) or jaxem.io.load(path)",
        "checkpoint": "jaxem.io.load_checkpoint(path, like), or resume the fit that wrote it",
        "result": "jaxem.io.load(path), which returns (model, params)",
    }[metadata["kind"]]
    return f"{os.fspath(path)} holds {_describe(metadata)}, not {wanted_text}: load it with {how}."


def load_estimator(path: str | os.PathLike, cls: type | None = None) -> Any:
    """Load a fitted estimator, checking that it is an instance of ``cls`` when given.

    This is what ``GaussianMixture.load(path)`` (and the other estimators' ``load``) calls.
    """
    metadata, arrays = _read(path)
    if metadata["kind"] != "estimator":
        raise ValueError(_wrong_kind(path, metadata, "estimator"))
    if cls is not None:
        _load_builtins()
        stored = _REGISTRY.get(metadata.get("class", ""))
        if stored is None or not issubclass(stored, cls):
            raise ValueError(
                f"{os.fspath(path)} holds {_describe(metadata)}, not a {cls.__name__}: load it "
                f"with {metadata.get('class', '?').rsplit('.', 1)[-1]}.load(path) or "
                "jaxem.io.load(path)."
            )
    return _decode_file(path, metadata, arrays)
