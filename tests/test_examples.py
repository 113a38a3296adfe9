"""The example notebooks run from top to bottom without error.

The kernel gets ``BODIL_EXAMPLES_QUICK=1``: notebooks that run samplers at the paper's size use fewer draws
(their committed outputs are the full runs). The notebooks assert their scientific checks (coverage of the truth,
agreement between methods, converged solves) in both modes, with bounds derived for the size that runs: Monte
Carlo comparisons within Bonferroni z-bounds of their ESS-based standard errors, coverage by chi-square quantiles,
at a family-wise false-alarm rate of 1e-4 per notebook. A failed check fails this test with its message.
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

# notebooks whose sampling runs are long enough to pay for XLA's optimisation passes (tests/conftest.py)
XLA_OPTIMIZED = ("oscillator_uq", "reaction_diffusion_basis", "tumor")
EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.ipynb"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BODIL_EXAMPLES_QUICK", "1")  # inherited by the kernel process
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0" if path.stem in XLA_OPTIMIZED else "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
