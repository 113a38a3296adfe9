"""The tumour command end to end on a tiny grid, and its refusals of bad input.

``bodil synth`` grows a synthetic patient on MNI152 (2 mm); ``bodil ctv`` then reads the files it wrote and
must produce every product: the NIfTI maps on the input grid and affine, ``posterior.nc``, ``summary.json``
and a report whose PDF has all its pages. Bad input exits with status 2, a message, and no output folder.
"""

import json
import re

import nibabel as nib
import numpy as np
import pytest

from bodil.cli import main

# a sharper posterior than the default's, so that BASIS takes several stages; Dw / Dg held at 10, a third cheaper
# (the default's sampled ratio runs end to end in `make demo` and in examples/tumor.ipynb at full size)
TINY = ["--grid", "8", "--time-points", "4", "--samples", "6", "--inner-iterations", "2",
        "--error-correlation", "15", "--fit", "Dw", "rho", "x0", "y0", "z0"]


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    out = tmp_path_factory.mktemp("patient") / "p"
    assert main(["synth", "--out", str(out)]) == 0
    return out


def ctv_args(patient, out, *extra):
    return ["ctv", "--seg", str(patient / "seg.nii.gz"), "--wm", str(patient / "wm.nii.gz"),
            "--gm", str(patient / "gm.nii.gz"), "--csf", str(patient / "csf.nii.gz"), "--labels", "brats2021",
            "--out", str(out), *TINY, *extra]


def test_synth_then_ctv_writes_every_product_and_a_killed_run_resumes_to_them(patient, tmp_path, capsys):
    # one test, so that the kill-and-resume check reuses the uninterrupted run (a pipeline run each costs 20 s)
    out = tmp_path / "ctv"
    assert main(ctv_args(patient, out)) == 0
    printed = capsys.readouterr().out
    check_every_product(patient, out, printed)
    check_a_killed_run_resumes_to_the_same_result(patient, out, tmp_path / "killed", capsys)


def check_every_product(patient, out, printed):
    assert "report:" in printed and str(out) in printed
    names = {p.name for p in out.iterdir()}
    expected = {"map_concentration.nii.gz", "posterior_mean.nii.gz", "posterior_std.nii.gz", "posterior.nc",
                "summary.json", "report.pdf", "report.html"}
    for m in ("10mm", "15mm", "20mm"):
        expected |= {f"ctv_probability_{m}.nii.gz", f"ctv_standard_{m}.nii.gz", f"ctv_model_map_{m}.nii.gz",
                     f"ctv_ensemble_{m}.nii.gz"}
    assert names == expected  # everything, and no temporary left behind
    seg = nib.load(patient / "seg.nii.gz")
    for name in ("map_concentration", "ctv_probability_15mm", "ctv_standard_15mm"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == seg.shape and np.allclose(img.affine, seg.affine)
    prob = np.asarray(nib.load(out / "ctv_probability_10mm.nii.gz").dataobj)
    standard = np.asarray(nib.load(out / "ctv_standard_10mm.nii.gz").dataobj) > 0
    model_map = np.asarray(nib.load(out / "ctv_model_map_10mm.nii.gz").dataobj) > 0
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    # every sample's model CTV has the standard plan's volume, so the probabilities sum to that volume
    assert model_map.sum() == standard.sum()
    ensemble = np.asarray(nib.load(out / "ctv_ensemble_10mm.nii.gz").dataobj) > 0
    assert ensemble.sum() == standard.sum() and prob[ensemble].min() >= prob[~ensemble].max()
    assert prob.sum() == pytest.approx(standard.sum(), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["num_samples"] == 6 and len(summary["ctv"]) == 3
    assert set(summary["posterior"]["origin_world_mm"]) == {"x", "y", "z"}
    thresholds = summary["posterior"]["thresholds"]  # integrated out by default: a posterior inside the prior
    assert thresholds["treatment"] == "marginalised" and thresholds["quadrature_error_nats"] < 0.1
    for name, (low, high) in thresholds["prior"].items():
        t = thresholds[name]
        assert low < t["q05"] <= t["q50"] <= t["q95"] < high and low < t["mean"] < high
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 4  # summary, slices, histograms, notes


def check_a_killed_run_resumes_to_the_same_result(patient, reference, tmp_path, capsys):
    """``kill -9`` mid-BASIS (the run's own process, mid-stage) keeps ``OUT.checkpoint`` and leaves no
    ``OUT``; a second run without ``--resume`` refuses to throw the checkpoint away, one with other settings is
    refused; ``--resume`` finishes with exactly the samples of an uninterrupted run and cleans up."""
    import subprocess
    import sys

    import arviz as az

    def args(out, *extra):
        return ctv_args(patient, out, *extra)

    tmp_path.mkdir()
    out, checkpoint = tmp_path / "ctv", tmp_path / "ctv.checkpoint"
    killer = (
        "import os, signal, sys\n"
        "from bodil.cli import main\n"
        "from bodil.tumor import pipeline\n"
        "evaluate, calls = pipeline.ForwardLikelihood.batch, []\n"
        "def call(self, thetas):\n"
        "    calls.append(len(next(iter(thetas.values()))) > 1)  # the MAP fit's runs are batches of one\n"
        "    if sum(calls) == 3:  # BASIS: stage 0 is one batch of 6, stage 1 one batch per Metropolis sweep\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return evaluate(self, thetas)\n"
        "pipeline.ForwardLikelihood.batch = call\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", killer, *args(out)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and (checkpoint / "basis.pkl").exists()
    assert list(tmp_path.glob(".ctv.tmp-*"))  # the killed run's half-built folder, hidden
    capsys.readouterr()
    assert main(args(out)) == 2
    assert "--resume" in capsys.readouterr().err and checkpoint.exists()
    assert main(args(out, "--samples", "7", "--resume")) == 2  # other settings: refused, checkpoint kept
    assert "samples: 6 -> 7" in capsys.readouterr().err and checkpoint.exists()
    assert main(args(out, "--resume")) == 0
    assert not checkpoint.exists() and not list(tmp_path.glob(".ctv.tmp-*"))
    ref, got = (az.from_netcdf(d / "posterior.nc").posterior for d in (reference, out))
    for name in ("x0", "y0", "z0"):
        np.testing.assert_array_equal(got[name].values, ref[name].values)
    for name in ("ctv_probability_15mm", "posterior_mean"):
        a, b = (np.asarray(nib.load(d / f"{name}.nii.gz").dataobj) for d in (reference, out))
        np.testing.assert_array_equal(a, b)


def _seg_with(tmp_path, data, affine=np.eye(4), name="seg.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("labels", "label"),
    ("empty", "core"),
    ("grid", "grid"),
    ("parameter", "fit them too"),
])
def test_bad_input_exits_2_and_writes_nothing(patient, tmp_path, capsys, case, message):
    seg = np.asarray(nib.load(patient / "seg.nii.gz").dataobj).astype(np.int16)
    affine = nib.load(patient / "seg.nii.gz").affine
    if case == "missing":
        path = tmp_path / "nope.nii.gz"
    elif case == "labels":
        bad = seg.copy()
        bad[seg == 2] = 7
        path = _seg_with(tmp_path, bad, affine)
    elif case == "empty":
        path = _seg_with(tmp_path, np.where(seg == 2, 2, 0).astype(np.int16), affine)
    elif case == "grid":
        path = _seg_with(tmp_path, seg[:-1], affine)
    else:  # an unknown name, and one sampled without being fitted: both refused before any work
        path = patient / "seg.nii.gz"
        assert main(["ctv", "--seg", str(path), "--atlas", "mni152", "--out", str(tmp_path / "o2"), *TINY,
                     "--sample", "Dx"]) == 2
        assert "unknown: ['dx']" in capsys.readouterr().err.lower()
        assert not (tmp_path / "o2").exists()
    out = tmp_path / "out"
    code = main(["ctv", "--seg", str(path), "--atlas", "mni152", "--out", str(out), *TINY,
                 *(["--fit", "Dw", "x0", "y0", "z0", "--sample", "rho"] if case == "parameter" else [])])
    assert code == 2
    err = capsys.readouterr().err.lower()
    assert message in err
    assert not out.exists()
