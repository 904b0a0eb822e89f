"""Salient-crop local-manifold learning: saliency, the contrastive terms, training."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from qfm_lib import manifold, saliency
from qfm_lib.features import FeatureSpec, extract_features

from .conftest import write_image


def test_saliency_map_finds_a_salient_blob():
    img = np.full((120, 160, 3), 120, np.uint8)
    img[50:70, 110:130] = 255
    sal = saliency.saliency_map(img)
    assert sal.shape == (120, 160) and sal.min() == 0 and sal.max() == pytest.approx(1)
    boxes = np.array([[40, 100, 40, 40], [0, 0, 40, 40]])
    means = saliency.box_means(sal, boxes)
    assert means[0] > 2 * means[1]
    assert saliency.anchor_order(np.array([[0.1, 0.5, 0.3]])).tolist() == [[1, 2, 0]]


def test_crop_saliency_is_cached_and_needs_crops(tmp_path, lite0, monkeypatch):
    paths = [write_image(tmp_path / f"i{i}.png", size=(120, 100), seed=i) for i in range(2)]
    table = pd.DataFrame({"image": [p.name for p in paths], "path": [str(p) for p in paths]})
    feats = extract_features(table, FeatureSpec(n_crops=3, crop_size=64), lite0, progress=False)
    scores = saliency.crop_saliency(table, feats, progress=False)
    assert scores.shape == (2, 3) and np.isfinite(scores).all()
    monkeypatch.setattr(saliency, "saliency_map", lambda *a: pytest.fail("recomputed cached saliency"))
    np.testing.assert_array_equal(saliency.crop_saliency(table, feats, progress=False), scores)
    feats.crop_boxes = None
    with pytest.raises(ValueError, match="n_crops"):
        saliency.crop_saliency(table, feats)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_intra_class_negatives_push_the_anchor_from_its_own_crops():
    q = _unit(1, 3, 8)  # one image: the anchor term sees only its own crops
    near = q.clone()
    near[:, 1:] = F.normalize(q[:, :1] + 0.05 * _unit(1, 2, 8, seed=1), dim=-1)
    far = q.clone()
    far[:, 1:] = -q[:, :1].expand(-1, 2, -1)
    _, with_near = manifold.contrastive_terms(q, near, 0.2, intra_weight=1.0)
    _, with_far = manifold.contrastive_terms(q, far, 0.2, intra_weight=1.0)
    assert with_near > with_far > 0  # own crops close to the anchor are penalised
    _, half = manifold.contrastive_terms(q, near, 0.2, intra_weight=0.5)
    assert 0 < half < with_near
    for keys in (near, far):  # weight 0 (the first version): own crops leave the anchor term
        assert manifold.contrastive_terms(q, keys, 0.2, intra_weight=0.0)[1] == pytest.approx(0.0, abs=1e-6)


def test_class_term_prefers_crops_clustered_by_image():
    centres = _unit(4, 1, 8)
    clustered = F.normalize(centres + 0.05 * _unit(4, 3, 8, seed=2), dim=-1)
    scattered = _unit(4, 3, 8, seed=3)
    assert manifold.contrastive_terms(clustered, clustered, 0.2, 1.0)[0] < \
        manifold.contrastive_terms(scattered, scattered, 0.2, 1.0)[0]


def _crop_data(n=120, k=3, d=12, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    y = 50 + 12 * base[:, 0] + rng.normal(0, 2, n)
    crops = base[:, None] + rng.normal(0, 0.4, (n, k, d))
    return crops, np.argsort(-rng.random((n, k)), axis=1), y


@pytest.mark.parametrize("cfg", [manifold.ManifoldConfig(max_epochs=15, patience=15, batch_images=16),
                                 manifold.ManifoldConfig(max_epochs=15, patience=15, batch_images=16, mutual_weight=0)])
def test_crop_model_learns_and_is_deterministic(cfg):
    crops, order, y = _crop_data()
    a = manifold.train_crop_model(crops[:90], order[:90], y[:90], crops[90:], y[90:], cfg)
    b = manifold.train_crop_model(crops[:90], order[:90], y[:90], crops[90:], y[90:], cfg)
    np.testing.assert_array_equal(a.predict(crops[90:]), b.predict(crops[90:]))
    assert np.corrcoef(a.predict(crops[90:]), y[90:])[0, 1] > 0.7
    emb = a.embed(crops[90:])
    assert emb.shape == (30, 3, cfg.proj_dim) and np.allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    stats = manifold.manifold_stats(emb)
    assert 0 <= stats["anchor_to_own_crops"] <= 2 and stats["within_over_between"] > 0


def test_manifold_stats_hand_made_embeddings():
    e = np.eye(3)
    collapsed = np.stack([np.stack([e[i]] * 3) for i in range(3)])  # each image's crops on its anchor
    assert manifold.manifold_stats(collapsed) == {"anchor_to_own_crops": 0.0, "between_image_anchors": 1.0,
                                                  "within_over_between": 0.0}
    opposite = np.stack([np.stack([e[i], -e[i], -2 * e[i]]) for i in range(3)])  # crops opposite their anchor
    assert manifold.manifold_stats(opposite)["anchor_to_own_crops"] == pytest.approx(2.0)
    spread = np.stack([np.stack([e[i], e[(i + 1) % 3]]) for i in range(3)])  # orthogonal: cosine distance 1
    assert manifold.manifold_stats(spread)["within_over_between"] == pytest.approx(1.0)


def test_crop_model_needs_two_crops():
    crops, order, y = _crop_data(k=1)
    with pytest.raises(ValueError, match="2 crops"):
        manifold.train_crop_model(crops, order, y, crops, y)
