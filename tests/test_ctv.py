"""CTV tools: standard margins in mm, exact-volume model CTVs, surface distances, ensembles."""

import numpy as np
import pytest

from bodil.tumor import ctv, ensemble
from bodil.tumor._masks import top_k, top_k_sparse


def ball(shape, centre, radius_mm, spacing=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, spacing)], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return r2 <= radius_mm**2


def gaussian(shape, centre, width=4.0, spacing=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, spacing)], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return np.exp(-r2 / (2 * width**2))


# ---------------------------------------------------------------------------------------------- standard CTV
def test_standard_ctv_honours_anisotropic_spacing():
    spacing = (1.0, 1.0, 2.5)
    shape = (31, 31, 15)
    centre = (15, 15, 7)
    core = np.zeros(shape, bool)
    core[centre] = True
    brain = np.ones(shape, bool)
    dist = ctv.core_distance(core, spacing)
    # distance along each axis is the index offset times that axis' spacing
    assert dist[15, 15, 9] == pytest.approx(5.0)
    assert dist[15, 20, 7] == pytest.approx(5.0)
    assert dist[18, 19, 7] == pytest.approx(5.0)
    mask = ctv.standard_ctv(core, brain, spacing, 10.0)
    for axis, h in enumerate(spacing):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        extent_mm = (hit[-1] - hit[0]) * h
        assert extent_mm == pytest.approx(20.0)  # the ball's diameter in mm along every axis
    # the voxel count times the voxel volume is close to (4/3) pi r^3
    volume = mask.sum() * np.prod(spacing)
    assert volume == pytest.approx(4 / 3 * np.pi * 10.0**3, rel=0.03)
    # brute force: the same set by explicit distances in mm
    grids = np.meshgrid(*[(np.arange(n) - c) * h for n, c, h in zip(shape, centre, spacing)], indexing="ij")
    assert np.array_equal(mask, sum(g**2 for g in grids) <= 100.0)


def test_standard_ctv_is_restricted_to_brain_but_keeps_the_core():
    shape = (20, 20, 20)
    core = ball(shape, (10, 10, 10), 2.0)
    brain = np.ones(shape, bool)
    brain[:, :, 12:] = False  # a wall: no brain above z = 11
    brain[10, 10, 12] = False
    mask = ctv.standard_ctv(core, brain, (1, 1, 1), 5.0)
    assert not mask[:, :, 13:].any()
    assert mask[core].all() and mask[10, 10, 12]  # core voxel outside the brain mask kept
    with pytest.raises(ValueError, match="empty"):
        ctv.core_distance(np.zeros(shape, bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        ctv.standard_ctv(core, brain, (1, 1), 5.0)
    with pytest.raises(ValueError, match="same shape"):
        ctv.standard_ctv(core, brain[:-1], (1, 1, 1), 5.0)
    with pytest.raises(ValueError, match="0 and 1"):
        ctv.standard_ctv(core * 0.7, brain, (1, 1, 1), 5.0)


# ---------------------------------------------------------------------------------------------- model CTV
def brute_force_top_k(u, brain, k, tie):
    idx = np.flatnonzero(brain)
    order = sorted(idx, key=lambda i: (-u.ravel()[i], tie.ravel()[i] if tie is not None else 0, i))
    out = np.zeros(u.size, bool)
    out[order[:k]] = True
    return out.reshape(u.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_ctv_is_the_exact_top_k_with_ties(seed):
    rng = np.random.default_rng(seed)
    shape = (7, 6, 5)
    u = rng.uniform(size=shape)
    u[rng.uniform(size=shape) < 0.5] = 0.0  # many zeros: ties at the threshold
    u[rng.uniform(size=shape) < 0.1] = 0.3  # a second tied value
    brain = rng.uniform(size=shape) < 0.8
    tie = rng.integers(0, 4, size=shape).astype(float)  # ties in the tie-break too: index decides
    n_brain = int(brain.sum())
    for k in (0, 1, 5, n_brain // 3, n_brain // 2, n_brain - 1, n_brain):
        for tb in (None, tie):
            mask, thr = ctv.model_ctv(u, brain, k, tie_break=tb, return_threshold=True)
            assert mask.sum() == k
            assert not (mask & ~brain).any()
            assert np.array_equal(mask, brute_force_top_k(u, brain, k, tb))
            if tb is not None:  # the streaming path: positives first, zeros in a precomputed tie order
                values, ties = u[brain], tb[brain]
                idx, thr_fast = top_k(values, k, ties, np.argsort(ties, kind="stable"))
                fast = np.zeros(values.size, bool)
                fast[idx] = True
                assert np.array_equal(fast, brute_force_top_k(u, brain, k, tb)[brain])
                assert idx.size == k and (not k or thr_fast == thr)
            if k:
                assert thr == np.sort(u[brain])[::-1][k - 1]
                assert (u[mask] >= thr).all() and (u[brain & ~mask] <= thr).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_top_k_is_top_k_of_the_vector_padded_with_zeros(seed):
    # values at a subset of the indices, zero elsewhere: fewer or more positives than k, ties among the values
    # and in the tie-break (the index decides), and a negative value (zeros then rank above it)
    rng = np.random.default_rng(seed)
    n = 300
    tie = rng.integers(0, 5, size=n).astype(float)
    order = np.argsort(tie, kind="stable")
    where = np.sort(rng.choice(n, size=120, replace=False))
    values = np.round(rng.uniform(size=where.size), 1)
    values[rng.uniform(size=where.size) < 0.4] = 0.0
    mark = np.zeros(n, bool)
    for negative in (False, True):
        if negative:
            values[3] = -0.5
        full = np.zeros(n)
        full[where] = values
        for k in (0, 1, 10, int((values > 0).sum()), 90, 200, n):
            idx, thr = top_k_sparse(values, where, n, k, tie, order, mark)
            ref, thr_ref = top_k(full, k, tie, order)
            assert np.array_equal(np.sort(idx), np.sort(ref)) and thr == thr_ref
            assert not mark.any()  # the scratch vector is left as it was found


def test_model_ctv_constant_field_prefers_voxels_near_the_core():
    shape = (15, 15, 15)
    core = ball(shape, (7, 7, 7), 1.5)
    brain = np.ones(shape, bool)
    spacing = (1.0, 1.0, 2.0)
    dist = ctv.core_distance(core, spacing)
    std = ctv.standard_ctv(core, brain, spacing, 4.0, distance=dist)
    u = np.zeros(shape)
    mask, thr = ctv.model_ctv(u, brain, int(std.sum()), tie_break=dist, return_threshold=True)
    assert thr == 0.0
    assert mask.sum() == std.sum()
    assert np.array_equal(mask, std)  # on a constant field the nearest voxels are the standard plan


def test_model_ctv_errors():
    u = np.zeros((4, 4, 4))
    brain = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError, match="only 64 voxels"):
        ctv.model_ctv(u, brain, 65)
    with pytest.raises(ValueError, match="same shape"):
        ctv.model_ctv(u[:3], brain, 5)
    with pytest.raises(ValueError, match="whole number"):
        ctv.model_ctv(u, brain, 2.5)
    bad = u.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ctv.model_ctv(bad, brain, 3)


# ---------------------------------------------------------------------------------------------- surfaces
def test_surface_distance_of_concentric_balls():
    shape = (41, 41, 41)
    spacing = (1.0, 1.0, 1.0)
    a = ball(shape, (20, 20, 20), 6.0)
    b = ball(shape, (20, 20, 20), 12.0)
    d = ctv.surface_distances(a, b, spacing)
    assert d.min() >= 4.0
    assert ctv.mean_surface_distance(a, b, spacing) == pytest.approx(6.0, abs=0.7)
    assert ctv.hausdorff95(a, b, spacing) == pytest.approx(6.0, abs=1.2)
    assert ctv.mean_surface_distance(a, a, spacing) == 0.0


def test_surface_distance_uses_spacing():
    # slabs 4 voxels apart along an axis of 2.5 mm: all distances 10 mm
    a = np.zeros((6, 6, 12), bool)
    b = np.zeros((6, 6, 12), bool)
    a[:, :, 2] = True
    b[:, :, 6] = True
    d = ctv.surface_distances(a, b, (1.0, 1.0, 2.5))
    assert np.allclose(d, 10.0)
    with pytest.raises(ValueError, match="non-empty"):
        ctv.surface_distances(a, np.zeros_like(a), (1, 1, 1))


def test_dice_and_coverage():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(8, 8, 8)) < 0.4
    b = rng.uniform(size=(8, 8, 8)) < 0.4
    assert ctv.dice(a, a) == 1.0
    assert ctv.dice(a, ~a) == 0.0
    assert ctv.dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert ctv.coverage(a, b) == pytest.approx((a & b).sum() / b.sum())
    assert ctv.coverage(a | b, b) == 1.0
    with pytest.raises(ValueError, match="empty"):
        ctv.coverage(a, np.zeros_like(a))


# ---------------------------------------------------------------------------------------------- ensembles
def test_ensemble_of_identical_samples_has_no_spread():
    shape = (24, 24, 24)
    spacing = (1.0, 1.0, 1.5)
    core = ball(shape, (12, 12, 18), 3.0, spacing)
    brain = ball(shape, (12, 12, 18), 11.0, spacing)
    u = gaussian(shape, (13, 11, 17), 5.0, spacing)
    ens = ensemble.ctv_ensemble(np.stack([u] * 6), core, brain, spacing, margins_mm=(2, 4))
    assert ens.num_samples == 6
    for m in (2, 4):
        r = ens[m]
        assert set(np.unique(r.probability)) <= {0.0, 1.0}
        assert np.array_equal(r.p05, r.p95) and np.array_equal(r.p50, r.p95)
        assert r.p50.sum() == r.n_voxels == r.standard.sum()
        assert r.spread_median_mm == 0.0 and r.spread_p95_mm == 0.0
        assert r.dice_mean == 1.0 and r.dice_min == 1.0
        assert np.all(r.consensus_mean_surface_mm == 0.0)
        assert len(r.pairs) == 15  # all pairs of 6
        assert r.volume_cm3 == pytest.approx(r.n_voxels * 1.5e-3)
        assert np.all(r.thresholds == r.thresholds[0])
    assert ens[2].n_voxels < ens[4].n_voxels
    assert ens.table()[1]["model_volume_cm3"] == pytest.approx(ens[4].volume_cm3)


def test_ensemble_of_shifted_balls_spread_matches_the_shift():
    """Two CTVs that are balls of radius R shifted by d << R: surface distance ~ d |cos(theta)|, uniform in
    [0, d] over the sphere, so the mean surface distance ~ d/2 and the 95 % Hausdorff ~ 0.95 d."""
    shape = (40, 32, 32)
    spacing = (1.0, 1.0, 1.0)
    core = ball(shape, (20, 16, 16), 2.0)
    brain = np.ones(shape, bool)
    shift = 4.0
    samples = [gaussian(shape, (18, 16, 16)), gaussian(shape, (18 + shift, 16, 16))]
    ens = ensemble.ctv_ensemble(iter(samples), core, brain, spacing, margins_mm=(8,))
    r = ens[8]
    assert r.pairs.tolist() == [[0, 1]]
    assert r.pair_mean_surface_mm[0] == pytest.approx(shift / 2, abs=0.5)
    assert r.pair_hausdorff95_mm[0] == pytest.approx(0.95 * shift, abs=1.0)
    assert r.spread_median_mm == pytest.approx(r.pair_mean_surface_mm[0])
    # the same numbers as the stand-alone functions on the two model CTVs
    masks = [ctv.model_ctv(u, brain, r.n_voxels, tie_break=ctv.core_distance(core, spacing)) for u in samples]
    assert r.pair_mean_surface_mm[0] == pytest.approx(ctv.mean_surface_distance(*masks, spacing))
    assert r.pair_dice[0] == pytest.approx(ctv.dice(*masks))
    assert np.array_equal(r.probability, (masks[0].astype(float) + masks[1]) / 2)
    # each sample is about half the shift from the consensus (the intersection, P >= 0.5)
    assert np.all(r.consensus_mean_surface_mm < shift)
    # the equal-volume ensemble CTV (Vorob'ev): both masks' intersection (P = 1), then the P = 1/2 voxels
    # nearest the core; the brute-force top-k of P with the same tie-break
    assert r.ensemble.sum() == r.n_voxels and r.ensemble_level == 0.5
    assert (masks[0] & masks[1] <= r.ensemble).all() and (r.ensemble <= (masks[0] | masks[1])).all()
    assert np.array_equal(r.ensemble, brute_force_top_k(r.probability, brain, r.n_voxels,
                                                        ctv.core_distance(core, spacing)))


def test_every_pair_matches_the_stand_alone_surface_distances():
    """Seven samples (more than the threads that compute the distance maps): each pair's mean surface distance,
    95% Hausdorff and Dice are those of ``ctv.mean_surface_distance``, ``hausdorff95`` and ``dice`` on the two
    model CTVs, in the pairs' order."""
    shape, spacing = (36, 30, 28), (1.0, 1.2, 0.9)
    core = ball(shape, (18, 15, 14), 2.0)
    brain = np.ones(shape, bool)
    centres = [(16 + k, 15 + (k % 3) - 1, 14 + (k % 2)) for k in range(7)]
    samples = [gaussian(shape, c) for c in centres]
    r = ensemble.ctv_ensemble(samples, core, brain, spacing, margins_mm=(6,))[6]
    masks = [ctv.model_ctv(u, brain, r.n_voxels, tie_break=ctv.core_distance(core, spacing)) for u in samples]
    assert len(r.pairs) == 21
    for (i, j), msd, hd, dsc in zip(r.pairs, r.pair_mean_surface_mm, r.pair_hausdorff95_mm, r.pair_dice):
        assert msd == pytest.approx(ctv.mean_surface_distance(masks[i], masks[j], spacing), rel=1e-12)
        assert hd == pytest.approx(ctv.hausdorff95(masks[i], masks[j], spacing), rel=1e-12)
        assert dsc == pytest.approx(ctv.dice(masks[i], masks[j]), rel=1e-12)


def test_ensemble_streaming_matches_array_and_bounds_kept_masks():
    shape = (20, 20, 20)
    spacing = (1.0, 1.0, 1.0)
    core = ball(shape, (10, 10, 10), 2.0)
    brain = ball(shape, (10, 10, 10), 9.0)
    rng = np.random.default_rng(3)
    centres = 10 + rng.normal(scale=1.5, size=(30, 3))
    samples = np.stack([gaussian(shape, c) for c in centres])
    samples[:, :, :, :4] = 0.0  # ties (zeros) inside the brain
    u_map = gaussian(shape, (10, 10, 10))
    a = ensemble.ctv_ensemble(samples, core, brain, spacing, margins_mm=(3,), max_pairs=10, seed=7,
                         map_concentration=u_map)
    b = ensemble.ctv_ensemble((s for s in samples), core, brain, spacing, margins_mm=(3,), max_pairs=10, seed=7,
                         map_concentration=u_map)
    ra, rb = a[3], b[3]
    # the samples given on a window outside which they are zero (a model box on the input grid): the same
    # ensemble, also when a sample has fewer positive voxels than the CTV (the CTV is completed by distance)
    window = (slice(3, 17), slice(2, 18), slice(4, 16))
    boxed = np.zeros_like(samples)
    cut = np.where(np.arange(len(samples)) % 2, 0.5, 0.1)[:, None, None, None]  # compact supports, two sizes
    inside = samples[(slice(None),) + window]
    boxed[(slice(None),) + window] = np.where(inside > cut, inside, 0.0)
    positives = (boxed > 0).reshape(len(samples), -1).sum(axis=1)
    assert positives.min() < a[3].n_voxels < positives.max()
    full = ensemble.ctv_ensemble(boxed, core, brain, spacing, margins_mm=(3,), max_pairs=10, seed=7)[3]
    win = ensemble.ctv_ensemble(iter(boxed[(slice(None),) + window]), core, brain, spacing, margins_mm=(3,),
                                max_pairs=10, seed=7, window=window)[3]
    for name in ("probability", "thresholds", "ensemble", "pairs", "pair_dice", "pair_mean_surface_mm"):
        assert np.array_equal(getattr(full, name), getattr(win, name)), name
    with pytest.raises(ValueError, match="the window has shape"):
        ensemble.ctv_ensemble(iter(boxed), core, brain, spacing, margins_mm=(3,), window=window)
    assert len(ra.kept_indices) == 5  # smallest K with K (K - 1) / 2 >= 10
    assert len(ra.pairs) == 10 and len(np.unique(ra.pairs, axis=0)) == 10
    assert np.array_equal(ra.pairs, rb.pairs) and np.array_equal(ra.kept_indices, rb.kept_indices)
    assert np.array_equal(ra.probability, rb.probability)
    assert np.allclose(ra.pair_mean_surface_mm, rb.pair_mean_surface_mm)
    # the probability map is the mean of the model CTVs, each of the standard volume
    tie = ctv.core_distance(core, spacing)
    region = brain | core
    masks = [ctv.model_ctv(u, region, ra.n_voxels, tie_break=tie) for u in samples]
    assert np.allclose(ra.probability, np.mean(masks, axis=0))
    assert all(m.sum() == ra.n_voxels for m in masks)
    # contours: p05 is the widest, p95 the narrowest
    assert (ra.p95 <= ra.p50).all() and (ra.p50 <= ra.p05).all()
    for (i, j), d, dsc in zip(ra.pairs, ra.pair_mean_surface_mm, ra.pair_dice):
        assert d == pytest.approx(ctv.mean_surface_distance(masks[i], masks[j], spacing))
        assert dsc == pytest.approx(ctv.dice(masks[i], masks[j]))
    assert ra.dice_min == pytest.approx(ra.pair_dice.min())
    assert np.array_equal(ra.map_mask, ctv.model_ctv(u_map, region, ra.n_voxels, tie_break=tie))
    assert ra.map_mask.sum() == ra.n_voxels
    for k, i in enumerate(ra.kept_indices):
        assert ra.consensus_mean_surface_mm[k] == pytest.approx(
            ctv.mean_surface_distance(masks[i], ra.p50, spacing))


def test_ensemble_errors():
    shape = (8, 8, 8)
    core = ball(shape, (4, 4, 4), 1.0)
    brain = np.ones(shape, bool)
    with pytest.raises(ValueError, match="no samples"):
        ensemble.ctv_ensemble(iter([]), core, brain, (1, 1, 1))
    with pytest.raises(ValueError, match="sample 1 has shape"):
        ensemble.ctv_ensemble([np.zeros(shape), np.zeros((8, 8, 7))], core, brain, (1, 1, 1))
    with pytest.raises(ValueError, match="margins_mm"):
        ensemble.ctv_ensemble([np.zeros(shape)], core, brain, (1, 1, 1), margins_mm=(-1,))
