"""Tumour inputs: NIfTI validation, atomic outputs, label conventions, boxes, MNI152 and synthetic patients."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bodil.io import InputError, atomic_directory, check_same_grid, load_nifti, save_nifti, write_json
from bodil.tumor.segmentation import CORE, EDEMA, HEALTHY, IGNORE
from bodil.tumor import (Crop, classes_from_labels, crop_around, label_convention, load_segmentation, load_tissue,
                         load_tissue_labels, mni152, synthetic_patient, write_synthetic)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# a flipped, permuted, anisotropic voxel grid: array axis 0 runs along -y (1.5 mm), axis 1 along +x
# (2 mm), axis 2 along -z (1 mm)
ODD_AFFINE = np.array([[0.0, 2.0, 0.0, -20.0],
                       [-1.5, 0.0, 0.0, 30.0],
                       [0.0, 0.0, -1.0, 12.0],
                       [0.0, 0.0, 0.0, 1.0]])


def _write(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return str(path)


def _seg(shape=(12, 12, 12)):
    seg = np.zeros(shape)
    seg[4:8, 4:8, 4:8] = 2
    seg[5:7, 5:7, 5:7] = 4
    seg[6, 6, 6] = 1
    return seg


def _tissue(shape=(12, 12, 12)):
    wm = np.full(shape, 0.6)
    gm = np.full(shape, 0.3)
    csf = np.full(shape, 0.1)
    return wm, gm, csf


# ------------------------------------------------------------------ every bad input: message, nothing written
def _bad_inputs(tmp):
    """name -> (function raising InputError, expected message fragment)."""
    os.makedirs(tmp, exist_ok=True)
    wm, gm, csf = _tissue()
    p = {}
    p["wm"] = _write(os.path.join(tmp, "wm.nii.gz"), wm)
    p["gm"] = _write(os.path.join(tmp, "gm.nii.gz"), gm)
    p["gm_shape"] = _write(os.path.join(tmp, "gm_shape.nii.gz"), np.full((12, 12, 13), 0.3))
    p["gm_affine"] = _write(os.path.join(tmp, "gm_affine.nii.gz"), gm, np.diag([2.0, 2.0, 2.5, 1.0]))
    p["wm_over"] = _write(os.path.join(tmp, "wm_over.nii.gz"), np.full((12, 12, 12), 1.2))
    p["wm_sum"] = _write(os.path.join(tmp, "wm_sum.nii.gz"), np.full((12, 12, 12), 0.8))
    nan = wm.copy()
    nan[3, 3, 3] = np.nan
    p["wm_nan"] = _write(os.path.join(tmp, "wm_nan.nii.gz"), nan)
    p["garbage"] = os.path.join(tmp, "garbage.nii.gz")
    with open(p["garbage"], "wb") as f:
        f.write(np.random.default_rng(0).bytes(500))
    p["four_d"] = _write(os.path.join(tmp, "four_d.nii.gz"), np.zeros((12, 12, 12, 2)))
    seg = _seg()
    seg[2, 2, 2] = 3  # not a BraTS 2021 label
    p["seg_unknown"] = _write(os.path.join(tmp, "seg_unknown.nii.gz"), seg)
    seg = _seg()
    seg[seg != 2] = 0  # edema only
    p["seg_nocore"] = _write(os.path.join(tmp, "seg_nocore.nii.gz"), seg)
    seg = _seg()
    seg[0, 6, 6] = 2  # edema on the outermost layer
    p["seg_border"] = _write(os.path.join(tmp, "seg_border.nii.gz"), seg)
    seg = _seg()
    seg[6, 6, 7] = np.nan
    p["seg_nan"] = _write(os.path.join(tmp, "seg_nan.nii.gz"), seg)
    seg = _seg() * 0.5  # linear resampling gone wrong
    p["seg_float"] = _write(os.path.join(tmp, "seg_float.nii.gz"), seg)
    missing = os.path.join(tmp, "nope.nii.gz")
    return {
        "missing file": (lambda: load_tissue(missing, p["gm"]), "white-matter map: file not found"),
        "unreadable file": (lambda: load_tissue(p["wm"], p["garbage"]), "grey-matter map: cannot read"),
        "4-D image": (lambda: load_nifti(p["four_d"], what="T1"), "expected a 3-D volume"),
        "different shapes": (lambda: load_tissue(p["wm"], p["gm_shape"]), "resample/register"),
        "different affines": (lambda: load_tissue(p["wm"], p["gm_affine"]), "different voxel-to-world affines"),
        "NaN tissue": (lambda: load_tissue(p["wm_nan"], p["gm"]), "1 NaN or infinite"),
        "fraction above 1": (lambda: load_tissue(p["wm_over"], p["gm"]), "must lie in [0, 1]"),
        "fractions sum above 1": (lambda: load_tissue(p["wm_sum"], p["gm"]), "wm + gm + csf exceeds 1"),
        "unknown labels": (lambda: load_segmentation(p["seg_unknown"], "brats2021"), "label(s) [3] are not part"),
        "empty core": (lambda: load_segmentation(p["seg_nocore"]), "tumour core is empty"),
        "tumour on the border": (lambda: load_segmentation(p["seg_border"]), "border of the volume"),
        "NaN labels": (lambda: load_segmentation(p["seg_nan"]), "NaN or infinite"),
        "non-integer labels": (lambda: load_segmentation(p["seg_float"]), "non-integer values"),
        "bad convention": (lambda: load_segmentation(p["seg_unknown"], "brats2020"), "unknown label convention"),
    }


CASES = ["missing file", "unreadable file", "4-D image", "different shapes", "different affines", "NaN tissue",
         "fraction above 1", "fractions sum above 1", "unknown labels", "empty core", "tumour on the border",
         "NaN labels", "non-integer labels", "bad convention"]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return _bad_inputs(str(tmp_path_factory.mktemp("inputs")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_its_message_and_writes_nothing(case, bad_inputs, tmp_path):
    fn, fragment = bad_inputs[case]
    out = tmp_path / "results" / "patient"
    with pytest.raises(InputError) as err:
        with atomic_directory(out) as tmp:
            with open(os.path.join(tmp, "partial.txt"), "w") as f:
                f.write("half a result")
            fn()
    assert fragment in str(err.value), str(err.value)
    assert not out.exists()
    assert os.listdir(tmp_path / "results") == []  # no temporary leftovers either


def test_error_messages_name_the_input_and_the_fix(bad_inputs):
    with pytest.raises(InputError, match=r"nope\.nii\.gz.*check the path"):
        bad_inputs["missing file"][0]()
    with pytest.raises(InputError) as err:
        bad_inputs["unknown labels"][0]()
    msg = str(err.value)
    assert "seg_unknown.nii.gz" in msg and "'brats2021'" in msg and "1:core,2:edema,4:core" in msg
    with pytest.raises(InputError, match=r"grey-matter map .*gm_shape.* has shape \(12, 12, 13\) but white-matter map"):
        bad_inputs["different shapes"][0]()
    # InputError is a ValueError (library users catch ValueError)
    assert issubclass(InputError, ValueError)


def test_nifti_round_trip_and_singleton_fourth_axis(tmp_path):
    data = np.random.default_rng(0).uniform(size=(5, 6, 7))
    path = save_nifti(tmp_path / "x.nii.gz", data, ODD_AFFINE)
    vol = load_nifti(path, what="x")
    assert vol.data.dtype == np.float64 and vol.shape == (5, 6, 7)
    np.testing.assert_allclose(vol.data, data.astype(np.float32))
    np.testing.assert_allclose(vol.affine, ODD_AFFINE)
    assert vol.spacing == pytest.approx((1.5, 2.0, 1.0))
    p4 = _write(tmp_path / "y.nii", data[..., None])
    assert load_nifti(p4, what="y").shape == (5, 6, 7)
    assert sorted(os.listdir(tmp_path)) == ["x.nii.gz", "y.nii"]  # no temporary files left


def test_check_same_grid_tolerance():
    from bodil.io import Volume

    a = Volume(np.zeros((2, 2, 2)), AFFINE)
    b = Volume(np.zeros((2, 2, 2)), AFFINE + 1e-5)
    check_same_grid({"a": a, "b": b})
    with pytest.raises(InputError, match="c and a have different"):
        check_same_grid({"a": a, "c": Volume(np.zeros((2, 2, 2)), AFFINE + 0.01)})


# ------------------------------------------------------------------ atomic outputs
def test_atomic_directory_success_refusal_and_overwrite(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        assert not out.exists()
        write_json(os.path.join(tmp, "a.json"), {"x": np.float32(1.5), "v": np.arange(3), "n": np.int64(2)})
    assert json.loads((out / "a.json").read_text()) == {"x": 1.5, "v": [0, 1, 2], "n": 2}
    with pytest.raises(InputError, match="not empty"):
        with atomic_directory(out):
            raise AssertionError("must not run")
    assert os.listdir(out) == ["a.json"]
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            write_json(os.path.join(tmp, "b.json"), 1)
            raise RuntimeError("crash")
    assert os.listdir(out) == ["a.json"]  # untouched by the crash
    with atomic_directory(out, overwrite=True) as tmp:
        write_json(os.path.join(tmp, "b.json"), 1)
    assert os.listdir(out) == ["b.json"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        write_json(os.path.join(tmp, "c.json"), [1])
    assert os.listdir(tmp_path / "empty") == ["c.json"]


# ------------------------------------------------------------------ tissue and labels
def test_load_tissue_and_label_maps(tmp_path):
    wm, gm, csf = _tissue()
    wm[0] = gm[0] = csf[0] = 0.0
    an = load_tissue(_write(tmp_path / "wm.nii.gz", wm), _write(tmp_path / "gm.nii.gz", gm))
    assert an.spacing == (2.0, 2.0, 2.0) and an.shape == (12, 12, 12)
    assert np.all(an.csf == 0)  # not given: no CSF invented
    np.testing.assert_array_equal(an.brain, wm + gm >= 0.5)
    an = load_tissue(tmp_path / "wm.nii.gz", tmp_path / "gm.nii.gz", _write(tmp_path / "csf.nii.gz", csf))
    np.testing.assert_allclose(an.csf, csf, atol=1e-7)
    labels = np.zeros((6, 6, 6))
    labels[1:5, 1:5, 1:5] = 3
    labels[1, 1:5, 1:5] = 2
    labels[2, 2, 2] = 1
    an = load_tissue_labels(_write(tmp_path / "lab.nii.gz", labels))
    np.testing.assert_array_equal(an.wm, labels == 3)
    np.testing.assert_array_equal(an.gm, labels == 2)
    np.testing.assert_array_equal(an.csf, labels == 1)
    labels[3, 3, 3] = 7
    with pytest.raises(InputError, match=r"label\(s\) \[7\] are not in the mapping"):
        load_tissue_labels(_write(tmp_path / "lab7.nii.gz", labels))
    an = load_tissue_labels(tmp_path / "lab7.nii.gz", {"csf": 1, "gm": 2, "wm": [3, 7]})
    assert an.wm[3, 3, 3] == 1.0


def test_label_conventions():
    seg = np.array([0, 1, 2, 4, 0, 2])
    np.testing.assert_array_equal(classes_from_labels(seg, "brats2021"), [HEALTHY, CORE, EDEMA, CORE, HEALTHY, EDEMA])
    assert classes_from_labels(seg, "brats2021").dtype == np.int8
    np.testing.assert_array_equal(classes_from_labels(np.array([0, 1, 2, 3]), "BraTS2023"),
                                  [HEALTHY, CORE, EDEMA, CORE])
    with pytest.raises(InputError, match=r"label\(s\) \[4\] are not part of the 'brats2023'"):
        classes_from_labels(seg, "brats2023")
    conv = label_convention("1:core, 2:edema, 4:core, 9:ignore")
    np.testing.assert_array_equal(classes_from_labels(np.array([0, 9, 4]), conv), [HEALTHY, IGNORE, CORE])
    assert label_convention({1: "core", 2: "edema"}).classes == {0: HEALTHY, 1: CORE, 2: EDEMA}
    for bad, fragment in [("1:core,2:tumour", "is not one of"), ("1=core", "unknown label convention"),
                          ("2:edema", "no 'core' label"), ("x:core", "not an integer"), (3, "must be a name")]:
        with pytest.raises(InputError, match=fragment):
            label_convention(bad)


# ------------------------------------------------------------------ boxes
def _linear(shape, coef=(0.3, -0.2, 0.1), c0=5.0):
    i, j, k = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    return c0 + coef[0] * i + coef[1] * j + coef[2] * k


def test_crop_reproduces_linear_fields_exactly_on_an_odd_affine():
    shape = (30, 24, 40)
    f = _linear(shape)
    crop = Crop(n=16, input_shape=shape, input_affine=ODD_AFFINE, start=(6.3, 4.1, 10.7), side_mm=20.0)
    box = crop.to_box(f)
    pts = (np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1) + 0.5) * crop.spacing_mm
    v = crop.box_to_voxel(pts)
    np.testing.assert_allclose(box, 5.0 + v @ np.array([0.3, -0.2, 0.1]), rtol=1e-12)
    # back onto the input grid: exact wherever the voxel lies between box points
    back = crop.to_input(box)
    window = crop.input_window()
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in window], indexing="ij"), -1)
    b = crop.voxel_to_box(idx) / crop.spacing_mm - 0.5  # box index coordinates
    interior = np.all((b >= 0) & (b <= 15), axis=-1)
    assert interior.sum() > 1000
    np.testing.assert_allclose(back[window][interior], f[window][interior], rtol=1e-12)
    outside = np.ones(shape, bool)
    outside[window] = False
    assert np.all(back[outside] == 0)
    # the window holds exactly the voxels whose centres are inside the box
    assert np.all((b >= -0.5 - 1e-9) & (b <= 15.5 + 1e-9))
    grow = [slice(max(s.start - 1, 0), s.stop + 1) for s in window]
    idx = np.stack(np.meshgrid(*[np.arange(s.start, min(s.stop, n)) for s, n in zip(grow, shape)], indexing="ij"), -1)
    b = crop.voxel_to_box(idx) / crop.spacing_mm - 0.5
    inside = np.all((b >= -0.5) & (b <= 15.5), axis=-1)
    assert inside.sum() == np.prod([s.stop - s.start for s in window])


def test_box_holds_the_largest_margin_around_the_core():
    """A core at one end of an elongated tumour: the box centred on the tumour must reach the margin around
    the core; every voxel within the margin of the core (Euclidean, with the voxel spacing) lies inside it."""
    from bodil.tumor.box import side_to_contain

    shape, spacing = (60, 50, 40), (1.0, 1.5, 2.0)
    affine = np.diag([*spacing, 1.0])
    tumour = np.zeros(shape, bool)
    tumour[10:30, 20:26, 15:19] = True
    core = np.zeros(shape, bool)
    core[26:30, 22:24, 16:18] = True
    side = side_to_contain(tumour, core, affine, 20.0)
    crop = crop_around(tumour, affine, scale=1.5, n=16, min_side_mm=side)
    near = ndimage.distance_transform_edt(~core, sampling=spacing) <= 20.0
    idx = np.argwhere(near)
    b = crop.voxel_to_box(idx)  # mm from the box corner
    assert np.all((b >= -1e-9) & (b <= crop.side_mm + 1e-9))
    assert side < 2 * (20.0 + 20.0)  # not a blanket bound: the core's reach from the centre plus the margin


def test_crop_matches_scipy_map_coordinates():
    rng = np.random.default_rng(3)
    shape = (14, 11, 9)
    f = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    crop = Crop(n=12, input_shape=shape, input_affine=ODD_AFFINE, start=(-2.2, 1.3, -1.7), side_mm=22.0)
    pos = [crop.start[k] + (np.arange(12) + 0.5) * crop.step[k] for k in range(3)]
    coords = np.stack(np.meshgrid(*pos, indexing="ij"))
    inside = np.all([(coords[k] >= -0.5) & (coords[k] <= shape[k] - 0.5) for k in range(3)], axis=0)
    for order in (0, 1, 3):
        ref = np.where(inside, ndimage.map_coordinates(f, coords, order=order, mode="nearest"), 0.0)
        np.testing.assert_allclose(crop.to_box(f, order=order), ref, atol=1e-12)
    assert (~inside).any() and inside.any()  # the box leaves the volume


def test_crop_round_trip_of_a_smooth_field_and_batches():
    shape = (40, 40, 40)
    affine = np.diag([1.0, 1.2, 0.9, 1.0])
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    sigma = 5.0  # mm
    r2 = ((i - 20) * 1.0) ** 2 + ((j - 19) * 1.2) ** 2 + ((k - 21) * 0.9) ** 2
    f = np.exp(-r2 / (2 * sigma**2))
    mask = f > 0.5
    crop = crop_around(mask, affine, scale=3.0, n=24)
    back = crop.to_input(crop.to_box(f))
    # two linear interpolations: |error| <= 2 * sum_k h_k^2 / 8 * max|f_kk| with |f_kk| <= 1 / sigma^2
    h = max(crop.spacing_mm, 1.2)
    bound = 2 * 3 * h**2 / 8 / sigma**2
    win = crop.input_window()
    assert np.abs(back[win] - f[win]).max() < bound
    assert np.abs(back[win] - f[win]).max() > 1e-4  # not trivially exact
    batch = np.stack([crop.to_box(f), 2 * crop.to_box(f)])
    both = crop.to_input(batch)
    assert both.shape == (2, *shape)
    np.testing.assert_allclose(both[1], 2 * back)


def test_a_labelled_voxel_lands_where_the_affine_says():
    shape = (20, 16, 24)
    labels = np.zeros(shape, np.int16)
    vox = np.array([7, 5, 15])
    labels[tuple(vox)] = 4
    labels[8, 5, 15] = 2
    crop = crop_around(labels > 0, ODD_AFFINE, scale=2.0, n=20, min_side_mm=12.0)
    assert crop.spacing_mm <= min(crop.input_spacing)  # box finer than the voxels: nearest sees each voxel
    world = ODD_AFFINE[:3, :3] @ vox + ODD_AFFINE[:3, 3]
    p = crop.world_to_box(world)
    np.testing.assert_allclose(crop.box_to_world(p), world)
    np.testing.assert_allclose(crop.box_to_voxel(p), vox)
    idx = np.floor(p / crop.spacing_mm).astype(int)  # the box cell containing the point
    box = crop.to_box(labels, order=0)
    assert box.dtype == np.int16 and box[tuple(idx)] == 4
    assert set(np.unique(box)) == {0, 2, 4}
    # the box affine maps box indices to the same world points as box_to_world
    np.testing.assert_allclose(crop.affine @ np.append(idx, 1.0),
                               np.append(crop.box_to_world((idx + 0.5) * crop.spacing_mm), 1.0))
    np.testing.assert_allclose(np.linalg.norm(crop.affine[:3, :3], axis=0), crop.spacing_mm)
    # centred on the bounding box of the mask (voxels 7-8, 5, 15), side = max(2 x 3 mm, 12 mm)
    centre = crop.box_to_world(np.full(3, crop.side_mm / 2))
    np.testing.assert_allclose(centre, ODD_AFFINE[:3, :3] @ [7.5, 5, 15] + ODD_AFFINE[:3, 3])
    assert crop.side_mm == pytest.approx(12.0)
    # Crop.grid is the box in mm
    np.testing.assert_allclose(crop.grid.coordinates("x"), (np.arange(20) + 0.5) * crop.spacing_mm)
    with pytest.raises(InputError, match="mask is empty"):
        crop_around(np.zeros(shape, bool), ODD_AFFINE)


# ------------------------------------------------------------------ atlas and synthetic patient
@pytest.fixture(scope="module")
def atlas():
    return mni152(2)


def test_mni152_loads_offline(atlas):
    assert atlas.shape == (99, 117, 95) and atlas.spacing == (2.0, 2.0, 2.0)
    for name in ("wm", "gm", "csf"):
        arr = getattr(atlas, name)
        assert arr.min() >= 0.0 and arr.max() <= 1.0 and not arr.flags.writeable
    assert (atlas.csf > 0.5).sum() > 1000
    brain_litres = atlas.brain.sum() * 8e-6
    assert 1.3 < brain_litres < 2.0
    assert mni152(2) is atlas  # cached
    with pytest.raises(InputError, match="resolution must be 1 or 2"):
        mni152(3)


def test_synthetic_patient_on_mni152(atlas, tmp_path):
    patient = synthetic_patient(atlas)
    t = patient.truth
    labels = patient.labels
    assert {0, 1, 2, 4} == set(np.unique(labels))
    origin = tuple(np.round(t["origin_voxel"]).astype(int))
    assert labels[origin] in (1, 4)  # the origin sits in the core
    assert atlas.wm[origin] > 0.8 and t["origin_world"][0] < 0  # white matter, left hemisphere
    assert 2.0 < t["core_cm3"] < 15.0 and 10.0 < t["edema_cm3"] < 80.0
    assert t["mu_d_mm"] <= 32 and t["mu_rho"] <= 10
    u = patient.concentration
    assert np.all(u[atlas.tissue < 0.1] == 0.0)
    np.testing.assert_array_equal(labels == 2, (u >= 0.25) & (u < 0.675))
    paths = write_synthetic(patient, tmp_path / "synth")
    assert sorted(os.listdir(tmp_path / "synth")) == sorted(os.path.basename(p) for p in paths.values())
    seg = load_segmentation(paths["seg"], "brats2021")
    np.testing.assert_array_equal(seg.labels, labels)
    assert seg.core.sum() * 8e-3 == pytest.approx(t["core_cm3"])
    an = load_tissue(paths["wm"], paths["gm"], paths["csf"])
    np.testing.assert_allclose(an.wm, atlas.wm, atol=1e-6)
    # the model's box around the segmented tumour: 1.5 x its extent, tissue resampled into it
    crop = crop_around(seg.tumor, seg.affine, n=32)
    box = atlas.crop(crop).validate()
    assert box.shape == (32, 32, 32) and np.allclose(np.linalg.norm(box.affine[:3, :3], axis=0), crop.spacing_mm)
    assert crop.to_box(u).max() > 0.8 and crop.to_box(seg.tumor.astype(float), order=0)[[0, -1]].max() == 0
    assert json.loads(open(paths["truth"]).read())["dw"] == t["dw"]
    with pytest.raises(InputError, match="not empty"):
        write_synthetic(patient, tmp_path / "synth")
    with pytest.raises(InputError, match="not in brain tissue"):
        synthetic_patient(atlas, origin=(0.0, 60.0, -60.0))
    with pytest.raises(InputError, match="outside the volume"):
        synthetic_patient(atlas, origin=(500.0, 0.0, 0.0))
