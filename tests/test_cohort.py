"""The validation cohort's own solver (``bodil.forward.fk_split``) and generator (``bodil.tumor.cohort``).

The solver is checked against closed forms (logistic flow, the heat kernel with its second-order convergence),
conservation, axis symmetry, and against ``bodil.forward.fk`` (an independent discretisation of the same
equation: the two must agree to discretisation error). The generator is checked for what it promises:
reproducible draws, the label conventions, thresholds applied as drawn, thick slices that average the
concentration, volumes within the accepted range.
"""

import numpy as np
import pytest
from scipy import special

from bodil.forward import solve_fk
from bodil.forward.fk_split import solve_fk_split
from bodil.tumor import Anatomy
from bodil.tumor.cohort import LABELS, CohortPriors, cohort_patient, initial_ellipsoid, segment, to_thick_slices


def test_reaction_alone_is_the_exact_logistic_flow():
    u0 = np.linspace(0.01, 0.9, 27).reshape(3, 3, 3)
    u = np.asarray(solve_fk_split(u0, np.ones_like(u0), np.zeros_like(u0), 1.0, dw=0.0, dg=0.0, rho=0.2,
                                  t_final=7.3))[-1]
    g = np.exp(0.2 * 7.3)
    np.testing.assert_allclose(u, u0 * g / (1 + u0 * (g - 1)), rtol=1e-13)


def _heat_error(n, h, max_stages=2):
    x = (np.arange(n) + 0.5) * h - n * h / 2
    r2 = sum(c**2 for c in np.meshgrid(x, x, x, indexing="ij"))
    s0, d, t = 2.0, 0.5, 4.0
    u0 = np.exp(-r2 / (2 * s0))
    u = np.asarray(solve_fk_split(u0, np.ones_like(u0), np.zeros_like(u0), h, dw=d, dg=0.0, rho=0.0, t_final=t,
                                  max_stages=max_stages))[-1]
    s = s0 + 2 * d * t
    return np.abs(u - (s0 / s) ** 1.5 * np.exp(-r2 / (2 * s))).max()


def test_heat_kernel_converges_at_second_order():
    """Two-stage steps (dt ~ h^2) converge at second order; six-stage super-time-steps (8x longer) stay stable
    and add at most the spatial error again (a wrong RKL2 coefficient gives O(1) errors or blows up)."""
    coarse, fine = _heat_error(20, 1.2), _heat_error(40, 0.6)
    peak = (2.0 / 6.0) ** 1.5
    assert fine < 0.03 * peak  # under 3% of the final peak (sd 1.4 mm at first, h = 0.6 mm)
    assert coarse / fine > 3.0  # second order in h: a factor 4 when h halves
    assert _heat_error(40, 0.6, max_stages=6) < 2.5 * fine


def test_mass_is_conserved_and_nothing_enters_non_tissue():
    rng = np.random.default_rng(0)
    wm = rng.uniform(size=(10, 9, 8))
    wm[:, :, :2] = 0.0  # no tissue: D = 0
    gm = 1.0 - wm
    gm[:, :, :2] = 0.0
    u0 = np.where(wm + gm > 0, rng.uniform(size=wm.shape), 0.0)
    u = np.asarray(solve_fk_split(u0, wm, gm, (1.0, 1.5, 2.0), dw=0.7, dg=0.1, rho=0.0, t_final=20.0))[-1]
    assert abs(u.sum() - u0.sum()) < 1e-10 * u0.sum()
    assert np.all(u[:, :, :2] == 0.0)


def test_axes_are_treated_alike():
    rng = np.random.default_rng(1)
    wm = rng.uniform(size=(7, 8, 9))
    gm = (1 - wm) * rng.uniform(size=wm.shape)
    u0 = rng.uniform(size=wm.shape) * 0.5
    kw = dict(dw=0.4, dg=0.05, rho=0.1, t_final=5.0)
    u = np.asarray(solve_fk_split(u0, wm, gm, (1.0, 1.2, 0.8), **kw))[-1]
    perm = (2, 0, 1)
    up = np.asarray(solve_fk_split(*(np.transpose(f, perm) for f in (u0, wm, gm)), (0.8, 1.0, 1.2), **kw))[-1]
    np.testing.assert_allclose(up, np.transpose(u, perm), atol=1e-13)


def test_agrees_with_the_model_solver_to_discretisation_error():
    """Two independent implementations of one equation: ``solve_fk`` (forward Euler, here with steps small
    enough that its time error is below 1e-3) and ``solve_fk_split`` (Strang splitting) share the spatial
    stencil on homogeneous tissue, so they agree to their time errors, far below the solution's scale."""
    n, h = 32, 1.0
    x = (np.arange(n) + 0.5) * h - n * h / 2
    r2 = sum(c**2 for c in np.meshgrid(x, x, x, indexing="ij"))
    u0 = 0.8 * np.exp(-r2 / 8.0)
    wm, gm = np.ones_like(u0), np.zeros_like(u0)
    kw = dict(dw=0.3, dg=0.0, rho=0.1, t_final=40.0)
    a = np.asarray(solve_fk(u0, wm, gm, h, safety=0.5, max_rho_dt=0.002, **kw))[-1]
    b = np.asarray(solve_fk_split(u0, wm, gm, h, **kw))[-1]
    assert a.max() > 0.5
    assert np.abs(a - b).max() < 2e-3


def test_solver_rejects_bad_input():
    u0 = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        solve_fk_split(u0, np.zeros((4, 4, 3)), u0, 1.0, dw=1, dg=0, rho=0, t_final=1)
    with pytest.raises(ValueError, match="non-negative"):
        solve_fk_split(u0, u0, u0, 1.0, dw=-1, dg=0, rho=0, t_final=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        solve_fk_split(u0 + 2, u0, u0, 1.0, dw=1, dg=0, rho=0, t_final=1)


# ----------------------------------------------------------------------------------------------- generator
def _ball_anatomy(n=34, h=2.5):
    """A ball of white matter inside grey matter inside CSF, at ``h`` mm."""
    x = (np.arange(n) - (n - 1) / 2) * h
    r = np.sqrt(sum(c**2 for c in np.meshgrid(x, x, x, indexing="ij")))
    wm = np.clip((30.0 - r) / 4.0, 0, 1)
    gm = np.clip((36.0 - r) / 4.0, 0, 1) - wm
    csf = np.clip((39.0 - r) / 2.0, 0, 1) - wm - gm
    affine = np.diag([h, h, h, 1.0])
    affine[:3, 3] = -(n - 1) / 2 * h
    return Anatomy(wm=wm, gm=gm, csf=np.clip(csf, 0, 1), affine=affine)


SMALL = CohortPriors(t_final=(60.0, 120.0), mu_d_mm=(2.0, 4.0), mu_rho=(1.5, 3.0), seed_radius_mm=(3.0, 5.0),
                     volume_ml=(0.5, 40.0), origin_margin_mm=24.0, anisotropic_probability=0.5,
                     slice_spacings=((2.5, 2.5, 5.0),))


@pytest.fixture(scope="module")
def patients():
    anatomy = _ball_anatomy()
    return anatomy, [cohort_patient(anatomy, 3, i, SMALL) for i in range(2)]


def test_patients_are_reproducible_and_follow_their_truth(patients):
    anatomy, ps = patients
    again = cohort_patient(anatomy, 3, 1, SMALL)
    np.testing.assert_array_equal(again.labels, ps[1].labels)
    assert ps[0].truth["origin_world"] != ps[1].truth["origin_world"]
    for p in ps:
        t = p.truth
        assert set(np.unique(p.labels)) <= {0, *LABELS[t["labels"]].values()}
        assert SMALL.volume_ml[0] <= t["visible_ml"] <= SMALL.volume_ml[1]
        assert 5.0 <= t["ratio"] <= 100.0 and t["dg"] == pytest.approx(t["dw"] / t["ratio"])
        assert t["dw"] * t["t_final"] == pytest.approx(t["mu_d_mm"] ** 2)
        assert 0.0 <= p.concentration.min() and p.concentration.max() <= 1.0
        spacing = t["spacing_mm"] or anatomy.spacing
        np.testing.assert_allclose(p.anatomy.spacing, spacing)
        assert p.labels.shape == p.anatomy.shape == p.concentration.shape


def test_segmentation_without_noise_is_the_drawn_thresholds():
    u = np.linspace(0, 1, 1000).reshape(10, 10, 10)
    truth = dict(noise_seed=0, jitter=0.0, jitter_mm=2.0, flip_probability=0.0, labels="brats2023",
                 tau_edema=0.3, tau_core=0.6, necrosis=0.9)
    labels = segment(u, np.ones(u.shape, bool), (1.0, 1.0, 1.0), truth)
    expect = np.select([u >= 0.9, u >= 0.6, u >= 0.3], [1, 3, 2], 0)
    np.testing.assert_array_equal(labels, expect)


def test_thick_slices_average_and_keep_world_coordinates():
    anatomy = _ball_anatomy(n=24, h=1.0)
    a = anatomy.affine
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in anatomy.shape], indexing="ij"), -1)
    world = idx @ a[:3, :3].T + a[:3, 3]
    f = world @ np.array([0.3, -0.2, 0.5]) + 1.0  # linear: its box average is its value at the centre
    thick, affine = to_thick_slices(f, anatomy, (1.0, 1.0, 3.0))
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [1.0, 1.0, 3.0])
    j = np.stack(np.meshgrid(*[np.arange(n) for n in thick.shape], indexing="ij"), -1)
    expect = (j @ affine[:3, :3].T + affine[:3, 3]) @ np.array([0.3, -0.2, 0.5]) + 1.0
    np.testing.assert_allclose(thick[1:-1, 1:-1, 1:-1], expect[1:-1, 1:-1, 1:-1], atol=1e-10)


def test_initial_ellipsoid_is_half_height_on_its_surface():
    truth = dict(origin_world=[0.5, 0.5, 0.5], seed_semi_axes_mm=[4.0, 2.0, 3.0], seed_rotation=[0, 0, 0, 1],
                 seed_height=0.8)
    u = initial_ellipsoid((1, 1, 1), np.eye(4), (4.5, 0.5, 0.5), truth)  # the point (4.5, .5, .5): q = 1
    assert u[0, 0, 0] == pytest.approx(0.4)
    centre = initial_ellipsoid((1, 1, 1), np.eye(4), (0.5, 0.5, 0.5), truth)
    assert centre[0, 0, 0] == pytest.approx(0.8 * special.expit(1 / 0.15))
