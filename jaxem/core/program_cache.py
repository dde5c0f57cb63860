"""Compiled programs that outlive the process: jaxem's own store of serialised executables.

Tracing, lowering and compiling an EM program takes a second or more on a CPU, every time a new
process meets it. :func:`cached_jit` is :func:`jaxem.core.precision.jit` with a second-level
store: each program it compiles is serialised (``jax.experimental.serialize_executable``) into a
file named by a hash of everything that decides the program, and a later process loads the file
instead of tracing and compiling again. Only jaxem's own configuration objects enter that hash
(a program whose static arguments hold a user-defined class or a function is compiled as usual and
kept in memory only), together with the argument shapes and dtypes, the versions of jaxem's
source, JAX and jaxlib, the backend and device kind, and the JAX options that change a trace. A
stale entry therefore never matches, and an unreadable one is deleted and rebuilt; nothing in the
store can change a result. The store keeps the ``MAX_STORED_PROGRAMS`` most recently used
programs. Its files are read with ``pickle``: like any file in your cache directory, trust it as
you trust your account.

The store lives in the user's cache directory (``$XDG_CACHE_HOME/jaxem`` or ``~/.cache/jaxem`` on
Linux, ``~/Library/Caches/jaxem`` on macOS, ``%LOCALAPPDATA%\\jaxem\\cache`` on Windows). The
environment variable ``JAXEM_CACHE_DIR`` moves it; set to ``off`` (or ``0``, or the empty string)
it turns the store off, and programs are then only kept for the life of the process. JAX's global
configuration is never touched: JAX's own persistent compilation cache
(``jax.config.update("jax_compilation_cache_dir", ...)``) is the user's to switch on, and both
may be on at once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import os
import pickle
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxem.core.precision import jit

CACHE_ENV = "JAXEM_CACHE_DIR"
# The store keeps at most this many programs; past it the least recently used quarter goes.
MAX_STORED_PROGRAMS = 4096
DISABLED_VALUES = ("", "0", "off", "false", "no")
FORMAT_VERSION = 1
SUFFIX = ".jaxem-program"

# The JAX options that change what a function traces to (and so what a program computes).
TRACE_OPTIONS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_threefry_partitionable",
    "jax_default_prng_impl",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
    "jax_debug_nans",
    "jax_disable_jit",
)


def default_cache_dir() -> Path:
    """The platform's per-user cache folder for jaxem (not created here)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "jaxem" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "jaxem"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxem"


def cache_dir() -> Path | None:
    """Where compiled programs are stored, or ``None`` when ``JAXEM_CACHE_DIR`` turns it off.

    Example:
        >>> folder = cache_dir()  # e.g. ~/.cache/jaxem, or None with JAXEM_CACHE_DIR=off
        >>> folder is None or folder.name in ("jaxem", "cache") or CACHE_ENV in os.environ
        True
    """
    setting = os.environ.get(CACHE_ENV)
    if setting is None:
        return default_cache_dir()
    if setting.strip().lower() in DISABLED_VALUES:
        return None
    return Path(setting).expanduser()


def clear_cache() -> int:
    """Delete every stored program in :func:`cache_dir`; returns how many files went."""
    folder = cache_dir()
    if folder is None or not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(f"*{SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


@functools.cache
def source_digest() -> str:
    """A hash of jaxem's source files: a program stored by other code never matches."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def backend_description() -> str:
    """JAX and jaxlib versions, backend, its version and device kind: what an executable needs."""
    import jaxlib

    device = jax.devices()[0]
    return "|".join(
        [
            jax.__version__,
            jaxlib.__version__,
            device.platform,
            str(getattr(device.client, "platform_version", "")),
            str(device.device_kind),
            str(jax.device_count()),
        ]
    )


@functools.cache
def prepare_native_kernels() -> None:
    """Load what compiled CPU programs call into (LAPACK from SciPy) before a stored one runs.

    JAX does this while lowering the first linear-algebra operation of a process; a program
    loaded from the store was never lowered here, and would call into kernels not yet loaded.
    """
    if jax.default_backend() != "cpu":
        return
    try:
        from jaxlib import lapack

        lapack.prepare_lapack_call("potrf", np.float64)
    except (ImportError, AttributeError):  # another jaxlib layout: lower one factorisation
        jax.jit(jax.numpy.linalg.cholesky).lower(np.eye(1))


class NotStable(Exception):
    """A static argument has no description that means the same in another process."""


def stable_description(value: Any) -> str:
    """A text that names ``value`` in any process, or :class:`NotStable`.

    Plain values (``None``, booleans, numbers, strings, dtypes), tuples of them, and jaxem's own
    frozen dataclasses, named tuples and enums built of them qualify; anything else (a function,
    a class from outside jaxem, an array) does not, since two processes could hold different
    things under the same description.

    Example:
        >>> stable_description((1, 2.5, "full", None))
        "(1,2.5,'full',None,)"
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return f"{type(value).__name__}:{value!r}" if isinstance(value, bool) else repr(value)
    if isinstance(value, np.dtype):
        return f"dtype:{value.str}"
    cls = type(value)
    own = cls.__module__.split(".")[0] == "jaxem"
    if isinstance(value, enum.Enum) and own:
        return f"{cls.__module__}.{cls.__qualname__}.{value.name}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        if not own:
            raise NotStable(cls.__qualname__)
        fields = ",".join(stable_description(getattr(value, name)) for name in value._fields)
        return f"{cls.__module__}.{cls.__qualname__}({fields})"
    if type(value) in (tuple, list, frozenset):
        items = sorted(value, key=repr) if isinstance(value, frozenset) else value
        return "(" + "".join(stable_description(item) + "," for item in items) + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and own:
        fields = ",".join(
            f"{field.name}={stable_description(getattr(value, field.name))}"
            for field in dataclasses.fields(value)
        )
        return f"{cls.__module__}.{cls.__qualname__}({fields})"
    raise NotStable(cls.__qualname__)


def abstract_signature(tree: Any) -> tuple[Any, ...]:
    """The structure, shapes and dtypes of the dynamic arguments: what a compiled program fixes."""
    leaves, treedef = jax.tree.flatten(tree)
    signature = []
    for leaf in leaves:
        if isinstance(leaf, (bool, int, float, complex)):
            signature.append(type(leaf).__name__)
        else:
            signature.append(
                (tuple(np.shape(leaf)), str(leaf.dtype), bool(getattr(leaf, "weak_type", False)))
            )
    return (treedef, tuple(signature))


# Programs whose work (the elements of their array arguments, times the restart lanes they run) is
# at most this are compiled with XLA's cheapest CPU settings: about three times faster to compile
# (0.4 s against 1.3 s for a first Gaussian mixture fit), for code about three times slower, which
# at this size costs milliseconds. Above it the code's speed wins: a command-line grid of 24 cells
# x 16 restarts on 272 rows ran 2.3x longer with the cheap settings, every time it ran.
SMALL_PROGRAM_WORK = 1 << 12
SMALL_PROGRAM_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


def compile_options(arguments: dict[str, Any], lanes_argname: str | None = None) -> dict[str, Any]:
    """XLA options for a program on these arguments: the cheapest for a small CPU program.

    The work is the number of elements of the arguments other than ``lanes_argname``, times the
    leading axis of that one (the restarts a program runs, each over all the data).
    """
    if jax.default_backend() != "cpu":
        return {}
    lanes = 1
    if lanes_argname is not None and jax.tree.leaves(arguments[lanes_argname]):
        lanes = int(np.shape(jax.tree.leaves(arguments[lanes_argname])[0])[0])
    others = [value for name, value in arguments.items() if name != lanes_argname]
    work = lanes * sum(int(np.size(leaf)) for leaf in jax.tree.leaves(others))
    return dict(SMALL_PROGRAM_OPTIONS) if work <= SMALL_PROGRAM_WORK else {}


def plain_call(tree: Any) -> bool:
    """Whether every argument is a concrete value on the default device (no tracer, no array on
    another device): the calls a compiled program of its own serves."""
    default = jax.devices()[0]
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.core.Tracer):
            return False
        if isinstance(leaf, jax.Array) and leaf.sharding.device_set != {default}:
            return False
    return True


def trace_context() -> tuple[Any, ...]:
    return tuple(getattr(jax.config, name, None) for name in TRACE_OPTIONS)


PROGRAMS: weakref.WeakSet = weakref.WeakSet()


def clear_memory() -> None:
    """Drop the compiled programs every :func:`cached_jit` function holds in this process (as
    ``jax.clear_caches`` does for JAX's own); the store on disk is kept."""
    for program in list(PROGRAMS):
        program.programs.clear()


class CachedProgram:
    """A jitted function whose compiled programs are kept by value of their static arguments and
    shapes, in memory and, where :func:`stable_description` names them, in :func:`cache_dir`.

    Calls take the function's own arguments; ``jitted`` is the plain
    :func:`jaxem.core.precision.jit` of it (its ``lower`` works as usual). ``stats`` counts where
    programs came from.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        static_argnames: tuple[str, ...],
        lanes_argname: str | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static_argnames = static_argnames
        self.lanes_argname = lanes_argname
        self.signature = inspect.signature(fn)
        self.jitted = jit(fn, static_argnames=static_argnames)
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.programs: dict[Any, Any] = {}
        self.stats = {"compiled": 0, "loaded": 0, "stored": 0}
        PROGRAMS.add(self)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self.jitted.lower(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if jax.config.jax_disable_jit:
            return self.jitted(*args, **kwargs)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        static = tuple(arguments[name] for name in self.static_argnames)
        dynamic = {k: v for k, v in arguments.items() if k not in self.static_argnames}
        if not plain_call(dynamic):
            # Inside a trace (jit, vmap, grad) or on other devices: JAX's own jit does it all.
            return self.jitted(*args, **kwargs)
        shapes = abstract_signature(dynamic)
        context = trace_context()
        key = (static, shapes, context)
        program = self.programs.get(key)
        if program is None:
            program = self.build(arguments, dynamic, static, shapes, context)
            self.programs[key] = program
        return program(**dynamic)

    def build(
        self,
        arguments: dict[str, Any],
        dynamic: dict[str, Any],
        static: tuple[Any, ...],
        shapes: Any,
        context: Any,
    ) -> Any:
        options = compile_options(dynamic, self.lanes_argname)
        folder = cache_dir()
        path = None
        if folder is not None:
            try:
                description = stable_description(static)
            except NotStable:
                description = None
            if description is not None:
                text = "\n".join(
                    [
                        str(FORMAT_VERSION),
                        self.name,
                        description,
                        repr(shapes),
                        repr(context),
                        repr(sorted(options.items())),
                        backend_description(),
                        source_digest(),
                    ]
                )
                path = folder / (hashlib.sha256(text.encode()).hexdigest() + SUFFIX)
                program = self.load(path)
                if program is not None:
                    self.stats["loaded"] += 1
                    return program
        lowered = self.jitted.lower(**arguments)
        try:
            program = lowered.compile(options)
        except Exception:  # an XLA that does not know these options
            if not options:
                raise
            program = lowered.compile()
        self.stats["compiled"] += 1
        if path is not None and self.store(path, program):
            self.stats["stored"] += 1
        return program

    @staticmethod
    def load(path: Path) -> Any:
        from jax.experimental.serialize_executable import deserialize_and_load

        try:
            prepare_native_kernels()
            with open(path, "rb") as file:
                version, payload, in_tree, out_tree = pickle.load(file)
            if version != FORMAT_VERSION:
                raise ValueError("another format")
            program = deserialize_and_load(payload, in_tree, out_tree)
            os.utime(path)  # recently used: kept when the store is pruned
            return program
        except FileNotFoundError:
            return None
        except Exception:  # a stale or corrupt entry is dropped and rebuilt
            path.unlink(missing_ok=True)
            return None

    @staticmethod
    def store(path: Path, program: Any) -> bool:
        from jax.experimental.serialize_executable import serialize

        try:
            # A program with host callbacks (progress printing) cannot be serialised.
            payload, in_tree, out_tree = serialize(program)
            data = pickle.dumps((FORMAT_VERSION, payload, in_tree, out_tree))
        except Exception:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole under another name, then renamed: readers never see half a file.
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
            prune(path.parent)
        except OSError:  # a read-only or full disk costs the store, never the fit
            return False
        return True


def prune(folder: Path, limit: int | None = None) -> int:
    """Delete the least recently used quarter of the stored programs when there are more than
    ``limit`` (default ``MAX_STORED_PROGRAMS``); returns how many went."""
    limit = MAX_STORED_PROGRAMS if limit is None else limit
    paths = list(folder.glob(f"*{SUFFIX}"))
    if len(paths) <= limit:
        return 0

    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    paths.sort(key=last_used)
    doomed = paths[: len(paths) - limit + limit // 4]
    for path in doomed:
        path.unlink(missing_ok=True)
    return len(doomed)


def cached_jit(
    fn: Callable[..., Any] | None = None,
    *,
    static_argnames: tuple[str, ...] | str = (),
    lanes_argname: str | None = None,
) -> Any:
    """:func:`jaxem.core.precision.jit` whose compiled programs persist across processes (see the
    module docstring); usable as ``@cached_jit`` or ``@partial(cached_jit, static_argnames=...)``.
    Static arguments must be passed by name or position, like ``jax.jit``'s ``static_argnames``.
    ``lanes_argname`` names an argument whose leading axis counts restarts, each a pass over the
    other arguments (it weighs the choice of compile settings: see :func:`compile_options`).

    Example:
        >>> import jax.numpy as jnp
        >>> from functools import partial
        >>> @partial(cached_jit, static_argnames=("power",))
        ... def gram(a, power):
        ...     return (a.T @ a) ** power
        >>> gram(jnp.eye(2), power=2).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if isinstance(static_argnames, str):
        static_argnames = (static_argnames,)
    if fn is None:
        return functools.partial(
            cached_jit, static_argnames=tuple(static_argnames), lanes_argname=lanes_argname
        )
    return CachedProgram(fn, tuple(static_argnames), lanes_argname)


__all__ = [
    "CACHE_ENV",
    "CachedProgram",
    "NotStable",
    "abstract_signature",
    "cache_dir",
    "cached_jit",
    "clear_cache",
    "clear_memory",
    "prune",
    "compile_options",
    "default_cache_dir",
    "stable_description",
]
