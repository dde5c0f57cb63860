"""Worker scripts on 4 host devices: run one in a subprocess, read back what it saved, compare.

A sharded fit needs several devices, and JAX fixes the number of host devices when its backend
starts, so the test files write a worker script, run it here in a fresh Python with 4 host (CPU)
devices and float64 enabled, and compare the arrays it saved with fits on one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
# The subprocess's own limit, for the longest worker of the suite (test_matrix's); a test's own
# pytest timeout stops a shorter one sooner (subprocess.run kills the worker when interrupted).
WORKER_TIMEOUT_S = 900


def run_on_four_devices(source: str, tmp: Path) -> None:
    """Run the Python ``source`` in a subprocess with 4 host devices and float64 enabled.

    The script is written to ``tmp / "worker.py"``; it imports the repository's ``jaxem``. A
    non-zero exit fails the calling test with the end of the worker's stderr.
    """
    script = tmp / "worker.py"
    script.write_text(source)
    env = dict(
        os.environ,
        # Keep the caller's flags (conftest's faster compiles) and add the 4 host devices.
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
        JAX_ENABLE_X64="1",
        # The 4 devices are host (CPU) devices, also where a GPU would be the default backend.
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def run_worker(tmp_path_factory: Any, name: str, worker: str) -> dict[str, np.ndarray]:
    """Run ``worker`` on 4 devices, formatted with ``tests`` (the tests folder, for the worker's
    ``sys.path``) and ``out`` (the ``.npz`` file it must save); the arrays it saved."""
    tmp = tmp_path_factory.mktemp(name)
    out = tmp / "out.npz"
    run_on_four_devices(worker.format(tests=str(TESTS), out=str(out)), tmp)
    return dict(np.load(out))


def leaves_by_name(results: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"<name>_<i>": leaf i of results[name]}``: what a worker saves with ``np.savez``."""
    return {
        f"{name}_{i}": np.asarray(leaf)
        for name, result in results.items()
        for i, leaf in enumerate(jax.tree.leaves(result))
    }


def assert_same_leaves(
    out: dict[str, np.ndarray], name: str, expected: Any, rtol: float = 0.0, atol: float = 1e-10
) -> None:
    """The worker's leaves saved under ``name`` equal ``expected``'s, integers exactly."""
    leaves = jax.tree.leaves(expected)
    assert len(leaves) == sum(key.rsplit("_", 1)[0] == name for key in out)
    for i, leaf in enumerate(leaves):
        got = out[f"{name}_{i}"]
        assert got.shape == leaf.shape
        if np.issubdtype(got.dtype, np.integer):
            np.testing.assert_array_equal(got, leaf)
        else:
            np.testing.assert_allclose(got, leaf, rtol=rtol, atol=atol)


__all__ = [
    "REPO",
    "TESTS",
    "WORKER_TIMEOUT_S",
    "assert_same_leaves",
    "leaves_by_name",
    "run_on_four_devices",
    "run_worker",
]
