"""Shared helpers for the benchmark scripts: timing, machine peak, peak memory, tables and JSON.

Every benchmark measures jaxem and its reference in the same process on the same data, prints the
ratio and writes a JSON record to ``benchmarks/results/`` (git-ignored). Typical use::

    from common import Timing, best_time, block, machine_info, print_table, write_json

    timing = best_time(lambda: block(step(params, x)), repeat=5)
    print_table(rows, ["case", "jaxem_s", "sklearn_s", "ratio"])
    write_json("my_benchmark", {"machine": machine_info(), "rows": rows})

Scripts are run from the repository root (``python benchmarks/<name>.py``) or from ``benchmarks/``;
both find this module because Python puts the script's folder on ``sys.path``. Importing it puts
this checkout's root on ``sys.path`` right after the ``PYTHONPATH`` entries, so that the scripts
measure this checkout's jaxem (installed or not) unless ``PYTHONPATH`` names another one:
``PYTHONPATH=/other/checkout python benchmarks/<name>.py --out /tmp/other`` measures the jaxem at
``/other/checkout`` with these scripts, subprocesses included (see :func:`subprocess_env`), and
:func:`machine_info` records which jaxem ran.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
REPO_ROOT = HERE.parent


def _use_this_checkout() -> None:
    # sys.path is [script folder, *PYTHONPATH, stdlib..., site-packages]: after PYTHONPATH, so that
    # PYTHONPATH picks another checkout, and before site-packages, so that an installed jaxem does
    # not hide this one.
    if str(REPO_ROOT) in sys.path:
        return
    pythonpath = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)}
    after = [i + 1 for i, entry in enumerate(sys.path) if os.path.abspath(entry) in pythonpath]
    sys.path.insert(max(after, default=1), str(REPO_ROOT))


_use_this_checkout()


def jaxem_root() -> Path:
    """The folder holding the ``jaxem`` package that ``import jaxem`` finds here (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("jaxem")
    if spec is None or spec.origin is None:
        raise ImportError("jaxem is not importable: run from a checkout or set PYTHONPATH")
    return Path(spec.origin).resolve().parent.parent


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark's Python subprocess: it imports the same jaxem as this
    process. Run it with ``cwd=HERE`` (``python -c`` puts its working folder first on
    ``sys.path``, and a checkout's root would shadow ``PYTHONPATH``)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(jaxem_root()), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env.update(env or {})
    return full_env


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls: the best (least disturbed) and the median."""

    best: float
    median: float
    repeat: int


def block(value: Any) -> Any:
    """Wait until every JAX array in ``value`` is computed (a no-op for NumPy results)."""
    import jax

    return jax.block_until_ready(value)


def best_time(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 0) -> Timing:
    """Time ``fn()`` ``repeat`` times after ``warmup`` untimed calls.

    ``fn`` must return only once its work is done (wrap JAX calls in :func:`block`). The best of
    several runs is the figure to compare on a shared, noisy machine; the median is kept alongside.
    """
    for _ in range(warmup):
        fn()
    return interleaved_best_times({"fn": fn}, repeat=repeat)["fn"]


def interleaved_best_times(
    fns: dict[str, Callable[[], Any]], *, repeat: int = 5
) -> dict[str, Timing]:
    """:func:`best_time` of several functions, timed in turns (one call of each per round).

    On a shared machine the background load drifts over seconds; taking turns gives every
    function the same chance of a quiet moment, where timing one after the other can leave one of
    them (often the faster one, whose calls all fit in a few seconds) entirely in a busy spell.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(repeat, 1)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: Timing(best=min(values), median=sorted(values)[len(values) // 2], repeat=len(values))
        for name, values in times.items()
    }


def first_call_time(fn: Callable[[], Any]) -> float:
    """Seconds of one call, e.g. the first call of a jitted function (compile plus one run)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak_gflops(dtype: str = "float64", size: int = 2048, repeat: int = 5) -> float:
    """Achieved GFLOP/s of a large square ``jnp`` matmul: this machine's practical peak for JAX.

    Used as the denominator of "fraction of peak" figures.
    """
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    block(matmul(a, b))
    timing = best_time(lambda: block(matmul(a, b)), repeat=repeat)
    return 2.0 * size**3 / timing.best / 1e9


def peak_rss_of(code: str, *, env: dict[str, str] | None = None, timeout: float = 1800) -> float:
    """High-water resident set size in MiB of a fresh Python process running ``code``.

    The process imports the same jaxem as this one (see :func:`subprocess_env`); its own
    high-water mark (``VmHWM`` on Linux, else ``ru_maxrss``) is read at exit, so the figure
    includes the interpreter and the imported libraries (measure an import-only baseline with the
    same imports to separate them).
    """
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child forked from a large parent
    # would report the parent's high-water mark.
    epilogue = textwrap.dedent(
        """
        import resource as _resource, sys as _sys
        try:
            with open("/proc/self/status") as _status:
                _hwm = [l for l in _status if l.startswith("VmHWM:")][0]
            _peak = int(_hwm.split()[1]) * 1024
        except (OSError, IndexError):
            _scale = 1 if _sys.platform == "darwin" else 1024
            _peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss * _scale
        print("PEAK_RSS_BYTES", _peak)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + epilogue],
        env=subprocess_env(env),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("PEAK_RSS_BYTES"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"memory probe failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import jax
    import numpy as np

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }
    info.update(jaxem_source())
    if hasattr(os, "getloadavg"):
        info["load_average"] = os.getloadavg()
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        pass
    return info


def jaxem_source() -> dict[str, Any]:
    """Which jaxem is measured: its folder and, in a git checkout, the commit and whether the
    work tree differs from it."""
    root = jaxem_root()
    info: dict[str, Any] = {"jaxem_path": str(root / "jaxem")}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit:
        info["jaxem_commit"] = commit
        info["jaxem_modified"] = bool(git("status", "--porcelain", "--", "jaxem"))
    return info


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts); a missing cell prints as ``-``."""
    cells = [[_cell(row.get(c, "-")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    print(format_table(rows, columns), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Timing):
        return asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(name: str, payload: dict[str, Any], directory: Path | None = None) -> Path:
    """Write ``payload`` plus a UTC timestamp to ``<directory>/<name>.json``; return the path."""
    directory = RESULTS_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "utc": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    record.update(payload)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares: ``--quick``, ``--repeat``,
    ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (best is kept)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the JSON record (default: %(default)s)",
    )
    return parser
