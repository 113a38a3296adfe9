"""Clinician report: both files written atomically, expected pages, tables and images, orientation."""

import dataclasses
import os
import re

import numpy as np
import pytest

from bodil.tumor import ensemble, report, report_pages


def ball(shape, centre_mm, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


def gaussian(shape, centre_mm, width_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, spacing)], indexing="ij")
    return np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) / (2 * width_mm**2))


def synthetic_content(margins=(4, 6, 8), notes=("BASIS: the last stage had a low effective sample size.",)):
    """24^3 ball brain with a ball tumour and 16 fake posterior samples (shifted Gaussians)."""
    shape = (24, 24, 24)
    spacing = (2.0, 2.0, 2.5)
    affine = np.diag([-2.0, 2.0, 2.5, 1.0])  # x flipped (LAS voxel order), as many scanners write it
    affine[:3, 3] = (24.0, -20.0, -30.0)
    brain = ball(shape, (24, 24, 30), 22.0, spacing)
    tissue = np.where(brain, 0.3 + 0.7 * np.random.default_rng(0).uniform(size=shape), 0.0)
    core = ball(shape, (26, 24, 30), 5.0, spacing)
    edema = ball(shape, (26, 24, 30), 10.0, spacing)
    classes = np.where(core, 2, np.where(edema, 1, 0))
    centres = np.array([26.0, 24.0, 30.0]) + np.random.default_rng(1).normal(scale=2.0, size=(16, 3))
    samples = np.stack([gaussian(shape, c, 6.0, spacing) for c in centres])
    ens = ensemble.ctv_ensemble(samples, core, brain, spacing, margins_mm=margins)
    origins = (affine[:3, :3] @ (centres / np.asarray(spacing)).T).T + affine[:3, 3]
    content = report.ReportContent.from_ensemble(
        ens, patient_id="SYN-0042", tissue=tissue, classes=classes, affine=affine, origin_samples=origins,
        run={"grid": "24 x 24 x 24", "samples": 16, "seed": 0, "labels": "BraTS 2021", "input": "/data/seg.nii.gz"},
        parameters=[{"name": "Dw", "unit": "mm^2/day", "map": 0.123, "mean": 0.131, "q05": 0.101, "q95": 0.162},
                    {"name": "rho", "unit": "1/day", "map": None, "mean": 0.0271, "q05": 0.0133, "q95": 0.0415}],
        notes=list(notes), origin_truth=origins.mean(axis=0), origin_map=origins[0])
    return content, ens


def count_pages(pdf_bytes: bytes) -> int:
    """Page objects (``/Type /Page``), not the page tree (``/Type /Pages``)."""
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", pdf_bytes))


def test_report_writes_both_files(tmp_path):
    content, ens = synthetic_content()
    out = tmp_path / "new" / "report"  # created on demand
    pdf_path, html_path = report.write_report(content, out)
    assert pdf_path == os.path.join(out, "report.pdf") and html_path == os.path.join(out, "report.html")
    assert sorted(os.listdir(out)) == ["report.html", "report.pdf"]  # no temporary files left behind
    pdf = open(pdf_path, "rb").read()
    assert pdf.startswith(b"%PDF")
    assert count_pages(pdf) == 4  # summary, slices (3 margins on one page), initial position, notes
    text = open(html_path, encoding="utf-8").read()
    assert "SYN-0042" in text
    for row in ens.table():
        for key in ("standard_volume_cm3", "spread_median_mm", "spread_p95_mm"):
            assert f"<td>{row[key]:.1f}</td>" in text
        assert f"<td>{row['dice_mean']:.2f}</td>" in text
        assert f"<td>{row['margin_mm']:g}</td>" in text
    assert "<td>0.123</td>" in text and "<td>0.0415</td>" in text and "<td>mm^2/day</td>" in text
    assert text.count('src="data:image/png;base64,') == 2  # the slices page and the histograms
    assert "not a medical device" in text and "low effective sample size" in text
    assert "/data/seg.nii.gz" in text


def test_report_paginates_margins(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_png", lambda fig: "AAAA")  # the PNG path is checked above; save the time
    content, _ = synthetic_content(margins=(2, 4, 6, 8))
    pdf_path, html_path = report.write_report(content, tmp_path)
    # summary + 2 slice pages (3 + 1 margins) + initial position + notes
    assert count_pages(open(pdf_path, "rb").read()) == 5
    assert open(html_path, encoding="utf-8").read().count("data:image/png;base64,") == 3
    # an extra figure (the registration's quality control) is one more page and one more image
    from matplotlib.figure import Figure

    content = dataclasses.replace(content, figures=(("Atlas registration: quality control", Figure()),))
    pdf_path, html_path = report.write_report(content, tmp_path / "qc")
    assert count_pages(open(pdf_path, "rb").read()) == 6
    html = open(html_path, encoding="utf-8").read()
    assert html.count("data:image/png;base64,") == 4 and "Atlas registration: quality control" in html


def test_long_notes_continue_on_new_pages():
    content, _ = synthetic_content(margins=(4,))
    content.notes = [f"note {i}: " + "a long warning from the run " * 8 for i in range(25)]
    pages = report_pages.note_pages(content)
    assert len(pages) >= 2  # 25 notes of 3 lines each do not fit on one page
    placed = [t.get_text() for fig in pages for t in fig.texts]
    for i in range(25):
        assert sum(t.startswith(f"- note {i}: ") for t in placed) == 1
    body = [t for fig in pages for t in fig.texts if not t.get_text().startswith("Patient SYN-0042  |")]
    assert all(t.get_position()[1] > 0.05 for t in body)  # the text stays clear of the footer


def test_first_page_states_the_notes_from_the_run(tmp_path):
    """An unconverged solve (any note from the run) is said on page 1 and at the top of the HTML."""
    note = "The MAP solve did not reach its tolerance (maximum number of iterations reached); results may be off."
    content, _ = synthetic_content(margins=(4,), notes=(note,))
    page = report_pages.title_page(content, "today")
    texts = " ".join(t.get_text().replace("\n", " ") for t in page.texts)
    assert "Warning: The MAP solve did not reach its tolerance" in texts
    html = open(report.write_report(content, tmp_path)[1], encoding="utf-8").read()
    assert html.index("Warning: The MAP solve") < html.index("<h2>Run</h2>")
    clean, _ = synthetic_content(margins=(4,), notes=())
    assert "Warning" not in " ".join(t.get_text() for t in report_pages.title_page(clean, "today").texts)


def test_failure_leaves_no_report(tmp_path, monkeypatch):
    content, _ = synthetic_content(margins=(4,))
    bad = report.ReportContent(**{**content.__dict__, "probability": {4: content.probability[4] * 2 + 0.1}})
    with pytest.raises(ValueError, match=r"probability\[4\] must lie in \[0, 1\]"):
        report.write_report(bad, tmp_path / "a")
    assert not (tmp_path / "a" / "report.pdf").exists()

    # a crash while drawing, after the PDF was started: no new report, the old one untouched, no temp files
    out = tmp_path / "b"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"old")

    def boom(_content):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report, "histogram_page", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        report.write_report(content, out)
    assert sorted(os.listdir(out)) == ["report.pdf"]
    assert (out / "report.pdf").read_bytes() == b"old"


def test_validation_messages():
    content, _ = synthetic_content(margins=(4,))

    def changed(**kw):
        return report.ReportContent(**{**content.__dict__, **kw})

    with pytest.raises(ValueError, match="disagrees with the affine"):
        changed(spacing=(1.0, 1.0, 1.0)).validate()
    with pytest.raises(ValueError, match="no entry for the 6 mm margin"):
        changed(margins_mm=(4, 6)).validate()
    with pytest.raises(ValueError, match="lacks"):
        changed(table=[{"margin_mm": 4}]).validate()
    with pytest.raises(ValueError, match=r"\(S, 3\)"):
        changed(origin_samples=np.zeros((5, 2))).validate()
    with pytest.raises(ValueError, match="label convention"):
        changed(classes=np.full(content.classes.shape, 4)).validate()


def test_slices_follow_the_affine():
    """The same anatomy stored with flipped and permuted voxel axes is displayed identically."""
    rng = np.random.default_rng(0)
    shape = (6, 7, 8)
    vol = rng.uniform(size=shape)
    classes = np.zeros(shape, int)
    classes[2, 3, 4] = 2
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = (-5.0, 7.0, 2.0)

    def content_of(v, c, a):
        sp = tuple(np.linalg.norm(a[:3, :3], axis=0))
        return report.ReportContent(patient_id="p", run={}, tissue=v, classes=c, spacing=sp, affine=a,
                                    margins_mm=(), standard_ctv={}, probability={},
                                    origin_samples=np.zeros((1, 3)), table=[])

    # flip voxel axis 0 and move it last: voxel (i, j, k) -> (j, k, 5 - i)
    flip_perm = np.zeros((4, 4))
    flip_perm[:3, :3] = [[0, 0, -1], [1, 0, 0], [0, 1, 0]]
    flip_perm[:3, 3] = (5, 0, 0)
    flip_perm[3, 3] = 1
    affine2 = affine @ flip_perm  # world of new voxel (j, k, l) = world of old voxel (5 - l, j, k)
    vol2 = np.transpose(vol[::-1], (1, 2, 0))
    classes2 = np.transpose(classes[::-1], (1, 2, 0))
    a, b = content_of(vol, classes, affine), content_of(vol2, classes2, affine2)
    ia, ib = report_pages.centre_index(classes), report_pages.centre_index(classes2)
    assert ib == (3, 4, 5 - 2)
    for _, fixed, h, v in report_pages.PLANES:
        pa, pb = report_pages.Plane(a, fixed, h, v, ia), report_pages.Plane(b, fixed, h, v, ib)
        assert np.array_equal(pa.take(vol), pb.take(vol2))
        assert np.allclose(pa.extent, pb.extent) and pa.position_mm == pytest.approx(pb.position_mm)
    # on the axial plane the image has x to the right and y upwards, in mm from the affine
    axial = report_pages.Plane(a, 2, 0, 1, ia)
    assert np.array_equal(axial.take(vol), vol[:, :, 4].T)
    assert axial.extent == pytest.approx([-6.0, 6.0, 6.5, 13.5])
    assert axial.position_mm == pytest.approx(14.0)


def test_report_states_which_parameters_were_fixed_fitted_and_sampled():
    """The assumptions page says what the run did: thresholds fixed at their values are never called
    inferred, MAP-only parameters are named as not part of the spread, sampled ones as part of it."""
    from bodil.tumor.report_content import run_assumptions

    text = " ".join(run_assumptions({"ratio": 10.0, "tau_lo": 0.25, "tau_up": 0.675}, ("Dw", "rho", "x0", "y0", "z0"),
                                    ("x0", "y0", "z0")))
    assert "inferred" not in text.replace("not inferred", "")
    assert "the edema threshold = 0.25" in text and "the diffusivity ratio Dw/Dg = 10" in text
    assert "held at that best fit in the ensemble: the white-matter diffusivity Dw, the proliferation rate rho" in text
    assert "Sampled in the posterior (their uncertainty is in the CTV ensemble): the initial position." in text
    sampled = " ".join(run_assumptions({}, ("Dw", "x0"), ("Dw", "x0")))
    assert "Fixed" not in sampled and "held at" not in sampled and "Dw/Dg" not in sampled
    ratio = " ".join(run_assumptions({}, ("Dw", "ratio", "x0"), ("x0", "ratio")))
    assert "in the CTV ensemble): the diffusivity ratio Dw/Dg, the initial position." in ratio
    assert "One image hardly informs the diffusivity ratio Dw/Dg" in ratio


def test_report_says_whether_the_growth_rates_include_the_model_error():
    """Default settings: the sentence on the calibrated model error, with the factor from the fitted rho T shift;
    other settings: that the error is not included, and why."""
    from bodil.tumor import CTVSettings
    from bodil.tumor.discrepancy import GROWTH_DISCREPANCY, growth_with_model_error
    from bodil.tumor.report_content import run_assumptions

    theta = {"Dw": 0.3, "rho": 0.05}
    text = " ".join(run_assumptions({}, ("Dw", "rho"), ("x0",), None, growth_with_model_error(CTVSettings(), theta)))
    assert "model error incl." in text and "the CTVs do not use them" in text
    assert f"low by a factor {np.exp(GROWTH_DISCREPANCY['rho'].mu):.2g}" in text
    other = " ".join(run_assumptions({}, ("Dw", "rho"), ("x0",), None,
                                     growth_with_model_error(CTVSettings(grid=16), theta)))
    assert "its own error is not included" in other and "grid=16" in other and "model error incl." not in other


def test_report_says_how_the_origin_includes_the_model_error():
    """Default settings: the initial position's sentence gives the discrepancy's sd on this box (0.1985 of a
    4 mm spacing, 0.8 mm) and says that the CTV ensemble does not use it; other settings: no such sentence."""
    from bodil.tumor import CTVSettings
    from bodil.tumor.discrepancy import ORIGIN_DISCREPANCY, origin_with_model_error
    from bodil.tumor.report_content import run_assumptions

    samples = np.random.default_rng(0).normal(size=(64, 3))
    origin = origin_with_model_error(CTVSettings(), samples, 4.0)
    text = " ".join(run_assumptions({}, ("Dw", "rho"), ("x0",), None, None, origin))
    assert f"sd {ORIGIN_DISCREPANCY.per_spacing * 4.0:.2g} mm per axis" in text
    assert "The CTV ensemble uses the posterior's own spread." in text
    other = " ".join(run_assumptions({}, ("Dw", "rho"), ("x0",), None, None,
                                     origin_with_model_error(CTVSettings(grid=16), samples, 4.0)))
    assert "Initial position" not in other
