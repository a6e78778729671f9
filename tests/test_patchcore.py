"""PatchCore's mechanisms against independent computations: the coreset's covering radius and farthest-first
order, the memory plan under its cap, the exact nearest-neighbour search, Eq. 7's re-weighting, the patch features;
and the detector's streaming fit, maps and tags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from medad.detectors.patchcore import PatchCoreDetector
from medad.detectors.patchcore.coreset import (
    MemoryPlan,
    StreamingCoreset,
    coreset_rows,
    greedy_k_center,
    plan_memory,
    random_projection,
)
from medad.detectors.patchcore.features import aggregate_neighbourhood, patch_embedding, pool_channels
from medad.detectors.patchcore.reweighting import reweighted_scores
from medad.detectors.patchcore.search import k_nearest, nearest
from tests.conftest import tiny_synthetic


def clustered_points(n: int = 300, dim: int = 6, seed: int = 0) -> torch.Tensor:
    """Points in a few clusters of different spreads (a greedy choice matters: uniform noise would forgive much)."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(0, 5, (5, dim))
    points = centres[generator.integers(0, 5, n)] + generator.normal(0, 1, (n, dim)) * generator.uniform(0.1, 2, (n, 1))
    return torch.tensor(points, dtype=torch.float32)


def farthest_first(points: np.ndarray, count: int, first: int) -> list[int]:
    """Algorithm 1 written out with full distance matrices in float64 (the independent computation)."""
    distances = cdist(points, points)
    chosen = [first]
    for _ in range(count - 1):
        chosen.append(int(distances[:, chosen].min(axis=1).argmax()))
    return chosen


# --- the coreset ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prune", [True, False])
def test_every_point_lies_within_the_reported_covering_radius_and_the_selection_is_farthest_first(prune):
    points = clustered_points()
    chosen, radius = greedy_k_center(points, 30, first=7, prune=prune)
    chosen, radius = chosen.tolist(), float(radius)
    to_centres = cdist(points.double().numpy(), points[chosen].double().numpy())
    nearest_centre = to_centres.min(axis=1)
    assert nearest_centre.max() <= radius * (1 + 1e-5)           # every point within the reported radius ...
    assert nearest_centre.max() == pytest.approx(radius, rel=1e-4)  # ... and the radius is the covering radius
    separation = cdist(points[chosen].double().numpy(), points[chosen].double().numpy())
    assert separation[np.triu_indices(30, 1)].min() >= radius * (1 - 1e-5)  # each pick was the farthest at its turn
    assert chosen == farthest_first(points.double().numpy(), 30, first=7)


def test_the_streamed_bank_covers_every_patch_within_the_largest_chunk_radius():
    points = clustered_points(n=240)
    plan = MemoryPlan(total=240, chunk=80, chunks=3, bank_rows=coreset_rows(240, 80, 0.1), bytes=0)
    coreset = StreamingCoreset(240, 6, 0.1, plan, None, torch.Generator().manual_seed(0), torch.device("cpu"))
    for start in range(0, 240, 50):  # batches that straddle the chunks
        coreset.add(points[start:start + 50])
    bank, radii = coreset.finish()
    assert bank.shape == (24, 6) and radii.shape == (3,)
    covering = cdist(points.double().numpy(), bank.double().numpy()).min(axis=1)
    assert covering.max() <= float(radii.max()) * (1 + 1e-5)
    for chunk in range(3):  # each chunk is covered by its own centres within its own radius
        own = cdist(points[80 * chunk:80 * chunk + 80].double().numpy(), bank[8 * chunk:8 * chunk + 8].double().numpy())
        assert own.min(axis=1).max() == pytest.approx(float(radii[chunk]), rel=1e-4)


def test_the_projection_chooses_and_the_bank_keeps_full_features():
    points = clustered_points(n=200, dim=64)
    projection = random_projection(64, 16, torch.Generator().manual_seed(0))
    assert projection.shape == (64, 16) and random_projection(64, 0, torch.Generator()) is None
    assert random_projection(64, 64, torch.Generator()) is None
    plan = plan_memory(200, 10, 64, 16, 0.1, 0, 2**30)
    coreset = StreamingCoreset(200, 64, 0.1, plan, projection, torch.Generator().manual_seed(0), torch.device("cpu"))
    coreset.add(points)
    bank, radii = coreset.finish()
    rows = [int((points == row).all(dim=1).nonzero()) for row in bank]  # every bank row is a training patch
    projected = (points @ projection).double().numpy()
    assert cdist(projected, projected[rows]).min(axis=1).max() == pytest.approx(float(radii[0]), rel=1e-4)


def test_the_memory_plan_honours_its_cap_and_says_what_to_change():
    fits = plan_memory(total=1000, patches_per_image=10, dim=64, projection_dim=16, fraction=0.1, batch_bytes=4000,
                       cap_bytes=2**30)
    assert (fits.chunk, fits.chunks, fits.bank_rows) == (1000, 1, 100)  # everything fits: the paper's one selection
    per_patch = 4 * (64 + 16 + 3)
    cap = 4000 + 110 * 64 * 4 + 250 * per_patch
    tight = plan_memory(1000, 10, 64, 16, 0.1, 4000, cap)
    assert tight.bytes <= cap and tight.chunk % 10 == 0 and tight.chunks > 1
    assert tight.bytes + 10 * per_patch > cap or tight.chunk == 1000  # the largest whole-image chunk that fits
    assert tight.bank_rows == coreset_rows(1000, tight.chunk, 0.1)
    with pytest.raises(ValueError, match="memory_cap_mb 0 is too small.*coreset_fraction"):
        plan_memory(1000, 10, 64, 16, 0.1, 4000, 100 * 64 * 4)


# --- nearest neighbours --------------------------------------------------------------------------------------
def test_the_blockwise_search_is_exact():
    queries, bank = clustered_points(n=57, seed=1), clustered_points(n=203, seed=2)
    distance, index = nearest(queries, bank, block_bytes=4 * 40)  # blocks of 40 bank rows x 1 query
    full = cdist(queries.double().numpy(), bank.double().numpy())
    np.testing.assert_array_equal(index.numpy(), full.argmin(axis=1))
    np.testing.assert_allclose(distance.numpy(), full.min(axis=1), rtol=1e-5)
    top = k_nearest(queries, bank, 5, block_bytes=4 * 57 * 16)
    np.testing.assert_array_equal(top.numpy(), np.argsort(full, axis=1)[:, :5])


# --- Eq. 7 --------------------------------------------------------------------------------------------------
def eq7(test_patches: np.ndarray, bank: np.ndarray, b: int) -> float:
    """Eq. 7 written out for one image in float64."""
    distances = cdist(test_patches, bank)
    star = distances.min(axis=1).argmax()                 # m_test,*
    m_star = distances[star].argmin()                     # m*
    s_star = distances[star, m_star]
    support = np.argsort(cdist(bank[m_star][None], bank)[0])[:b]  # N_b(m*)
    return (1 - np.exp(s_star) / np.exp(distances[star, support]).sum()) * s_star


def test_the_image_score_is_eq_7():
    bank = clustered_points(n=120, dim=5, seed=3)
    patches = torch.stack([clustered_points(n=16, dim=5, seed=s) * 0.3 for s in (4, 5, 6)])  # 3 images x 16 patches
    distance, row = nearest(patches.reshape(-1, 5), bank)
    scores = reweighted_scores(distance.view(3, 16), row.view(3, 16), patches, bank, neighbours=9)
    expected = [eq7(image.double().numpy(), bank.double().numpy(), 9) for image in patches]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
    plain = reweighted_scores(distance.view(3, 16), row.view(3, 16), patches, bank, neighbours=1)
    np.testing.assert_allclose(plain.numpy(), distance.view(3, 16).max(dim=1).values.numpy())  # b = 1: s = s*


# --- patch features --------------------------------------------------------------------------------------------
def test_patch_features_average_neighbourhoods_upsample_and_pool_channels():
    shallow, deep = torch.rand(2, 3, 6, 6), torch.rand(2, 5, 3, 3)
    padded = torch.nn.functional.pad(shallow, (1, 1, 1, 1))
    manual = torch.stack([torch.stack([padded[..., i:i + 3, j:j + 3].sum(dim=(-1, -2)) / 9 for j in range(6)], -1)
                          for i in range(6)], -2)
    torch.testing.assert_close(aggregate_neighbourhood(shallow, 3), manual)
    x = torch.arange(2 * 7 * 1 * 1, dtype=torch.float32).view(2, 7, 1, 1)
    windows = [(i * 7 // 3, -(-(i + 1) * 7 // 3)) for i in range(3)]  # floor(iC/d) .. ceil((i+1)C/d)
    expected = torch.stack([x[:, a:b].mean(dim=1) for a, b in windows], dim=1)
    torch.testing.assert_close(pool_channels(x, 3), expected)
    embedding = patch_embedding({"layer2": shallow, "layer3": deep}, 3, 0)
    up = torch.nn.functional.interpolate(aggregate_neighbourhood(deep, 3), size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(embedding, torch.cat([manual, up], dim=1))


# --- the detector ------------------------------------------------------------------------------------------------
def small_patchcore(**params) -> PatchCoreDetector:
    defaults = dict(backbone="resnet18", weights="random", width_divisor=8, target_dim=0, batch_size=8)
    return PatchCoreDetector(image_size=32, channels=1, **{**defaults, **params})


def test_a_tight_memory_cap_streams_the_coreset_in_chunks_and_tags_the_rows():
    subset = tiny_synthetic(n_train=24, n_test=8)
    whole = small_patchcore()
    whole.fit(subset.train.without_labels())
    assert whole.plan.chunks == 1 and whole.paper_deviations() == [] and whole.weights == "random"
    # one image gives 4 x 4 = 16 patches of 48 floats: a cap that leaves room for about 5 images' patches
    tight = small_patchcore(memory_cap_mb=(whole.plan.bytes - 19 * 16 * 4 * (48 + 3)) / 2**20)
    tight.fit(subset.train.without_labels())
    assert tight.plan.chunks > 1 and tight.plan.bytes <= tight.memory_cap_mb * 2**20
    assert tight.bank.shape[0] == tight.plan.bank_rows and len(tight.radii) == tight.plan.chunks
    assert "coreset selected in" in tight.paper_deviations()[0]
    maps = tight.score_map(subset.test.float_images())
    assert maps.shape == (8, 32, 32) and torch.isfinite(maps).all()
    with pytest.raises(ValueError, match="memory_cap_mb"):
        small_patchcore(memory_cap_mb=0.01).fit(subset.train.without_labels())


def test_settings_are_checked_before_a_job_starts(tmp_path):
    with pytest.raises(ValueError, match="layers must be distinct names"):
        PatchCoreDetector.check_settings({"layers": ["layer2", "pool3"]})
    with pytest.raises(ValueError, match="patch_size must be odd"):
        PatchCoreDetector.check_settings({"patch_size": 2})
    assert small_patchcore(layers=("layer3", "layer2")).layers == ("layer2", "layer3")  # shallowest first
    assert PatchCoreDetector.pretrained_files({"weights": "random"}) == []
    assert PatchCoreDetector.pretrained_files({})[0][0].name == "wide_resnet50_2-95faca4d.pth"
    assert PatchCoreDetector.pretrained_files({"weights": str(tmp_path / "w.pth")}) == [(tmp_path / "w.pth", "")]


@pytest.mark.parametrize("size", [32, 44])
def test_the_cost_estimates_grid_is_the_networks(size):
    """The estimate's patches and dimension per image (no network built) are what one image through the network gives."""
    from medad.benchmark.estimate import resolved_params

    params = resolved_params(PatchCoreDetector, dict(backbone="resnet18", weights="random", width_divisor=8, target_dim=0))
    detector = PatchCoreDetector(image_size=size, channels=1, **params)
    patches, dim, _ = detector._batch_bytes(torch.rand(1, 1, size, size))
    assert PatchCoreDetector._grid(params, size) == (patches, dim, dim)  # 48 dimensions: nothing to project
