import numpy as np
import pytest

from bodil import Grid


def test_layouts_spacing_and_coordinates():
    g = Grid(shape=(65, 16, 8), lower=0.0, upper=(10.0, 1.0, 2.0), names=("t", "x", "y"),
             layout=("node", "periodic", "cell"))
    assert g.spacing == pytest.approx((10 / 64, 1 / 16, 2 / 8))
    np.testing.assert_allclose(g.coordinates("t")[[0, -1]], [0.0, 10.0])
    np.testing.assert_allclose(g.coordinates("x")[[0, -1]], [0.0, 15 / 16])
    np.testing.assert_allclose(g.coordinates("y")[[0, -1]], [0.125, 1.875])
    t, x, y = g.mesh()
    assert t.shape == (65, 1, 1) and x.shape == (1, 16, 1) and y.shape == (1, 1, 8)
    assert g.periodic == (False, True, False)
    sub = g.subgrid(("x", "y"))
    assert sub.shape == (16, 8) and sub.layout == ("periodic", "cell")


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape=(4, 4), lower=0, upper=1, names=("a",)), "names has 1 entries"),
    (dict(shape=(4,), lower=1, upper=0), "upper bound"),
    (dict(shape=(4,), lower=0, upper=1, layout=("edge",)), "layout"),
    (dict(shape=(1,), lower=0, upper=1), "at least 2"),
    (dict(shape=(4, 4), lower=0, upper=1, names=("a", "a")), "distinct"),
])
def test_bad_grids_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Grid(**kwargs)


def test_unknown_axis_name():
    with pytest.raises(ValueError, match="no axis named 'z'"):
        Grid((4, 4), 0, 1, ("x", "y")).axis("z")


def test_interpolator_is_exact_for_multilinear_functions():
    g = Grid((11, 7), (0.0, -1.0), (1.0, 2.0), ("t", "x"), ("node", "cell"))
    t, x = g.mesh()
    u = 2.0 + 3.0 * t - 0.5 * x + 0.25 * t * x
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(0, 1, 50), rng.uniform(g.coordinates("x")[0], g.coordinates("x")[-1], 50)])
    got = np.asarray(g.interpolator(pts)(u))
    want = 2.0 + 3.0 * pts[:, 0] - 0.5 * pts[:, 1] + 0.25 * pts[:, 0] * pts[:, 1]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_interpolator_periodic_wraps_and_checks_range():
    g = Grid((8,), 0.0, 1.0, ("x",), ("periodic",))
    u = np.arange(8.0)
    # halfway between the last point (7/8) and the first (1 == 0) is the mean of u[7] and u[0]
    np.testing.assert_allclose(g.interpolator([15 / 16])(u), [3.5])
    with pytest.raises(ValueError, match="outside axis"):
        Grid((8,), 0.0, 1.0, ("t",)).interpolator([1.5])
    with pytest.raises(ValueError, match="NaN"):
        g.interpolator([np.nan])


def test_interpolator_on_leading_axis_keeps_the_rest():
    g = Grid((5, 3), 0.0, 1.0, ("t", "x"))
    u = np.arange(15.0).reshape(5, 3)
    out = np.asarray(g.interpolator([0.125], axes=("t",))(u))
    np.testing.assert_allclose(out, 0.5 * (u[0] + u[1])[None])


def test_check_field_shape():
    with pytest.raises(ValueError, match="has shape"):
        Grid((4, 4), 0, 1).check_field(np.zeros((4, 5)))
