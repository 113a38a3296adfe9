"""Atlas registration to a patient's T1 (``bodil.tumor.registration``), the BraTS case finder and the refusals
of bad T1 input, without real MRI.

The patient is the MNI152 atlas warped by a known transform (``bodil.tumor.warped_patient``: affine, smooth
random displacement, mass effect, bias field, noise, a lesion of altered intensity), on a coarse 4 mm grid and
registered on a 6 mm working grid with few iterations, so that the test stays fast. The recovered maps are
compared with the true ones outside the lesion with the issue's thresholds (WM Dice >= 0.85, GM >= 0.75; set
for 1 mm patients and a 2 mm registration, benchmarks/registration.py: about 0.98 there). The coarse, short
registration here measures WM 0.90, GM 0.92, a margin of 0.05 and 0.17 that a broken stage would not keep; and
the test asserts what fails when the registration does nothing useful: the atlas placed without registration
misses the thresholds by far, and SyN must beat its own affine stage.
"""

import os

import nibabel as nib
import numpy as np
import pytest

from bodil.cli import main
from bodil.io import InputError, Volume, save_nifti
from bodil.tumor.brats import find_brats_case
from bodil.tumor.registration import RegistrationSettings, fill_lesion, register_atlas, resample, similarity
from bodil.tumor.registration_qc import native_tissue, t1_on_segmentation_grid
from bodil.tumor.segmentation import load_segmentation
from bodil.tumor.warped_patient import tissue_dice, warped_patient

FAST = RegistrationSettings(spacing_mm=6.0, affine_iterations=(30, 10), syn_iterations=(10, 5),
                            atlas_resolution=2, lesion_margin_mm=6.0)
SHAPE, SPACING = (60, 60, 40), 4.0  # 240 x 240 x 160 mm


@pytest.fixture(scope="module")
def patient():
    return warped_patient(3, shape=SHAPE, spacing_mm=SPACING, resolution=2, lesion_radius_mm=14.0, edema_mm=8.0,
                          mass_mm=4.0)


@pytest.fixture(scope="module")
def registered(patient):
    return register_atlas(patient.t1, patient.lesion, FAST)


def test_registration_recovers_the_tissue_maps_outside_the_lesion(patient, registered):
    got = tissue_dice(patient.anatomy, registered.anatomy, ~patient.lesion)
    assert got["wm"] >= 0.85 and got["gm"] >= 0.75, got
    assert registered.anatomy.shape == SHAPE and np.allclose(registered.anatomy.affine, patient.t1.affine)
    # the atlas resampled into the patient grid without registration fails the same thresholds by far, and the
    # affine stage alone is less accurate than with SyN
    from bodil.tumor.anatomy import Anatomy, mni152

    atlas, grid = mni152(2), patient.t1.affine

    def placed(out_affine):
        return Anatomy(*(resample(getattr(atlas, k), atlas.affine, SHAPE, out_affine) for k in ("wm", "gm", "csf")),
                       affine=grid)

    baseline = tissue_dice(patient.anatomy, placed(grid), ~patient.lesion)
    assert baseline["wm"] < 0.7 and baseline["gm"] < 0.6, baseline
    affine = tissue_dice(patient.anatomy, placed(registered.affine @ grid), ~patient.lesion)
    assert got["wm"] > affine["wm"] and got["gm"] > affine["gm"], (got, affine)
    # the similarity figure: SyN improves on the affine, and a good registration is not flagged
    sim = registered.similarity
    assert sim["ncc"] > sim["ncc_affine"] and sim["local_ncc"] > sim["local_ncc_affine"]
    assert not registered.poor and sim["voxels"] > 1000


def test_a_t1_with_skull_and_scalp_registers_like_a_skull_stripped_one(patient, registered):
    """Item 1: the brain is extracted by the affinely aligned atlas's dilated brain mask before SyN. The same
    patient with a head (scalp brighter than WM, dark skull, CSF) meets the thresholds, and its brain mask is
    recovered; with the extraction disabled (margin 60 mm: no mask in the affine metric, nothing stripped)
    the thresholds are missed (measured WM 0.73-0.76, GM 0.59-0.68 over seeds 0, 1, 3) and it is flagged."""
    import dataclasses

    from bodil.tumor.warped_patient import HEAD_LAYERS

    headed = warped_patient(3, shape=SHAPE, spacing_mm=SPACING, resolution=2, lesion_radius_mm=14.0,
                            edema_mm=8.0, mass_mm=4.0, head=True)
    brain, t1 = patient.anatomy.brain, headed.t1.data
    assert np.array_equal(headed.labels, patient.labels) and np.array_equal(headed.anatomy.wm, patient.anatomy.wm)
    scalp = max(v for _, _, v in HEAD_LAYERS)
    assert np.sum(t1[~brain] > 0.9 * scalp) > 1000 and np.percentile(t1[~brain], 99) > np.median(t1[brain])
    region = ~headed.lesion
    for margin, ok in ((RegistrationSettings().head_margin_mm, True), (60.0, False)):
        r = register_atlas(headed.t1, headed.lesion, dataclasses.replace(FAST, head_margin_mm=margin))
        got = tissue_dice(headed.anatomy, r.anatomy, region)
        found = r.anatomy.brain
        brain_dice = 2 * np.sum(found & brain) / (found.sum() + brain.sum())
        if ok:
            assert got["wm"] >= 0.85 and got["gm"] >= 0.75 and brain_dice >= 0.95, (got, brain_dice)
            ref = tissue_dice(patient.anatomy, registered.anatomy, region)
            assert abs(got["wm"] - ref["wm"]) < 0.03 and abs(got["gm"] - ref["gm"]) < 0.03, (got, ref)
            assert not r.poor
        else:
            assert got["wm"] < 0.85 and got["gm"] < 0.75 and r.poor, (got, r.similarity)


def test_warped_patient_is_reproducible_from_its_seed(patient):
    again = warped_patient(3, shape=SHAPE, spacing_mm=SPACING, resolution=2, lesion_radius_mm=14.0, edema_mm=8.0,
                           mass_mm=4.0)
    assert np.array_equal(again.t1.data, patient.t1.data) and np.array_equal(again.labels, patient.labels)
    other = warped_patient(4, shape=(20, 20, 14), spacing_mm=12.0, resolution=2)
    assert set(np.unique(patient.labels)) == {0, 1, 2, 4} and other.truth["seed"] == 4
    assert not np.allclose(other.truth["affine_patient_to_atlas"], patient.truth["affine_patient_to_atlas"])


def test_fill_lesion_and_similarity_on_closed_forms():
    rng = np.random.default_rng(0)
    template = rng.uniform(0.2, 1.0, (20, 20, 20))
    lesion = np.zeros(template.shape, bool)
    lesion[8:12, 8:12, 8:12] = True
    static = 2.0 * template
    static[lesion] = 0.0  # a dark lesion
    brain = np.ones(template.shape, bool)
    filled = fill_lesion(static, template, lesion, brain, sigma_vox=3.0)
    # gain G(2 T w) / G(T w) = 2 exactly, so the lesion is filled with 2 T and the rest is untouched
    assert np.allclose(filled, 2.0 * template)
    ncc, local = similarity(template, 3.0 * template + 1.0, brain, 2.0)
    assert ncc == pytest.approx(1.0) and local == pytest.approx(1.0, abs=1e-6)
    ncc, _ = similarity(template, -template, brain, 2.0)
    assert ncc == pytest.approx(-1.0)


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


def test_brats_finder_reads_both_namings_and_refuses_ambiguous_folders(tmp_path):
    d = touch(tmp_path / "a", *(f"BraTS2021_00012_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")), "x.txt")
    case = find_brats_case(d)
    assert (case.labels, case.case_id) == ("brats2021", "BraTS2021_00012")
    assert case.t1.endswith("_t1.nii.gz") and case.t1c.endswith("_t1ce.nii.gz") and case.seg.endswith("_seg.nii.gz")
    d = touch(tmp_path / "b", "BraTS-GLI-00003-000-t1n.nii", "BraTS-GLI-00003-000-seg.nii.gz")
    case = find_brats_case(d)
    assert case.labels == "brats2023" and case.t2 is None and case.flair is None and case.t1.endswith("-t1n.nii")
    assert "BraTS 2023+" in case.describe() and "(not found)" in case.describe()
    refusals = {
        "c": (["P_t1ce.nii.gz", "P_seg.nii.gz"], "no t1"),
        "d": (["P_t1.nii.gz", "P_t1.nii", "P_seg.nii.gz"], "more than one file for the t1"),
        "e": (["P_t1.nii.gz", "P_seg.nii.gz", "Q-t1n.nii.gz"], "both"),
        "f": (["P_t1.nii.gz", "P_seg.nii.gz", "Q_seg.nii.gz"], "more than one case"),
        "g": (["notes.txt"], "no BraTS file"),
    }
    for sub, (names, message) in refusals.items():
        with pytest.raises(InputError, match=message):
            find_brats_case(touch(tmp_path / sub, *names))
    with pytest.raises(InputError, match="not a folder"):
        find_brats_case(tmp_path / "missing")


@pytest.fixture
def seg_files(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[8:12, 8:12, 8:12] = 2
    labels[9:11, 9:11, 9:11] = 4
    path = save_nifti(tmp_path / "seg.nii.gz", labels, affine, dtype=np.uint8)
    return load_segmentation(path, "brats2021"), affine


def test_t1_input_is_resampled_when_it_shares_world_space_and_refused_otherwise(seg_files, tmp_path):
    seg, affine = seg_files
    x = np.indices((40, 40, 40)).sum(0).astype(float) + 1.0  # linear in the index: resampling is exact
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = -0.5
    on_seg = t1_on_segmentation_grid(Volume(x, fine), seg)
    assert on_seg.shape == seg.shape and np.allclose(on_seg.affine, affine)
    centre = np.argwhere(seg.tumor)[0]
    assert on_seg.data[tuple(centre)] == pytest.approx(float(np.sum(2 * centre + 0.5)) + 1.0, rel=1e-3)
    away = fine.copy()
    away[:3, 3] += 200.0  # the same image 20 cm away: no shared world space
    with pytest.raises(InputError, match="does not cover the tumour") as err:
        t1_on_segmentation_grid(Volume(x, away), seg)
    assert "199.5" in str(err.value) and "segmentation affine" in str(err.value)
    with pytest.raises(InputError, match="constant"):
        t1_on_segmentation_grid(Volume(np.full((20, 20, 20), 3.0), affine), seg)
    with pytest.raises(InputError, match="empty"):
        t1_on_segmentation_grid(Volume(np.zeros((20, 20, 20)), affine), seg)
    hole = np.ones((20, 20, 20))
    hole[seg.tumor] = 0.0
    with pytest.raises(InputError, match="misses the tumour"):
        t1_on_segmentation_grid(Volume(hole, affine), seg)
    four_d = tmp_path / "t1_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 3), np.float32), affine), str(four_d))
    with pytest.raises(InputError, match="3-D"):
        native_tissue(str(four_d), seg)


def test_cli_brats_dir_says_what_it_found_and_writes_nothing_on_bad_input(tmp_path, capsys):
    d = touch(tmp_path / "case", "BraTS-GLI-00001-000-t1n.nii.gz", "BraTS-GLI-00001-000-seg.nii.gz")
    out = tmp_path / "out"
    assert main(["ctv", "--brats-dir", str(d), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "brats2023" in captured.out and "t1n" in captured.out
    assert "cannot read" in captured.err and not out.exists()
    assert main(["ctv", "--brats-dir", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a folder" in capsys.readouterr().err and not out.exists()


def test_cli_refuses_a_t1_in_another_world_space_before_writing_anything(seg_files, tmp_path, capsys):
    seg, affine = seg_files
    away = affine.copy()
    away[:3, 3] = 500.0
    t1 = save_nifti(tmp_path / "t1.nii.gz", np.random.default_rng(0).uniform(size=(20, 20, 20)), away)
    out = tmp_path / "out"
    assert main(["ctv", "--seg", seg.path, "--t1", t1, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not cover the tumour" in err and "500." in err and not out.exists()
    # an output folder in use is refused before the registration's minute of work, and left as it was
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    t1_here = save_nifti(tmp_path / "t1_here.nii.gz", np.random.default_rng(0).uniform(size=(20, 20, 20)), affine)
    assert main(["ctv", "--seg", seg.path, "--t1", t1_here, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_native_tissue_writes_its_maps_and_flags_a_poor_registration(patient, registered, tmp_path):
    import dataclasses

    from bodil.tumor.registration_qc import NativeTissue

    native = NativeTissue(patient.t1, patient.lesion, registered)
    files = native.write(str(tmp_path))
    assert {os.path.basename(v) for v in files.values()} == {"wm.nii.gz", "gm.nii.gz", "csf.nii.gz",
                                                             "brain_mask.nii.gz", "registration_qc.png"}
    assert (tmp_path / "registration_qc.png").read_bytes().startswith(b"\x89PNG")
    wm = nib.load(tmp_path / "wm.nii.gz")
    assert wm.shape == SHAPE and np.allclose(wm.affine, patient.t1.affine)
    assert native.notes == [] and native.summary["similarity"]["ncc"] == registered.similarity["ncc"]
    poor = dataclasses.replace(registered, similarity={**registered.similarity, "local_ncc": 0.5})
    notes = NativeTissue(patient.t1, patient.lesion, poor).notes
    assert len(notes) == 1 and "registration to the T1 is poor" in notes[0]
