"""The README's Python examples run, in order, as a new user would run them.

The examples that need a cluster (``jax.distributed`` under SLURM) are left out; the two-process
test (tests/test_multihost.py) runs that path. The data the examples name (``X, lengths``, a
``points.npy`` file) are made up in a fresh directory first.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SETUP = """
import numpy as np
rng = np.random.default_rng(0)
X = rng.poisson(3.0, (300, 2)).astype(float)  # counts: the Poisson HMM example fits them too
lengths = [100, 200]
np.save("points.npy", rng.normal(size=(3000, 8)).astype(np.float32))
"""


def examples() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return [block for block in blocks if "initialize_distributed()" not in block]


def test_the_examples_are_found():
    blocks = examples()
    assert len(blocks) >= 6
    assert any("fit_stream" in block for block in blocks)
    assert any("kernel.step" in block for block in blocks)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_examples_run(tmp_path):
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join([SETUP, *examples()]))
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "gm.npz").exists() and (tmp_path / "fit.npz").exists()
