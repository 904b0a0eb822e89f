"""Salient-crop local-manifold contrastive learning with mutual learning (arXiv 2406.19247), on
cached crop features. There is no official code; this is our reading, and notebook 05 says so.

Per training image i we have K seeded crops, ordered by spectral-residual saliency (crop 0, the
most salient, is the anchor). A shared encoder (dropout -> linear -> GELU) feeds a quality head
(trained on every crop with its image's MOS) and a projection head (unit-norm embeddings).

Contrastive objective (with intra-class negatives, as in every version of the paper):
* class term (supervised contrastive, image = class): every crop's query is pulled towards the
  keys of all crops of its own image (the anchor and the others: the positive class) and pushed
  from the crops of the other images in the batch (negatives);
* anchor term: the anchor's query must pick out its own key against the other images' crops AND
  the non-salient crops of its own image, which enter its denominator as intra-class negatives
  weighted by `intra_weight`, so an image's crops cluster without collapsing onto one point
  (the local manifold is kept). intra_weight = 0 removes the intra-class negatives (an ablation; the
  paper's first arXiv version already has them).
Mutual learning: a teacher kept as an exponential moving average (EMA) of the student supplies the
contrastive keys (MoCo-style) and a soft target, its crop-averaged prediction of each image, that
the student's crop predictions are pulled towards (weight `mutual_weight`); the teacher learns
from the student through the EMA. Without mutual learning the student supplies its own keys.
Test time: the prediction averaged over an image's crops, from the EMA teacher (student without it).
Early stopping on the validation part's crop-averaged (SRCC + PLCC) / 2.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .metrics import selection_score
from .analysis import column_stats
from .models import BankDropout
from .training import check_training_settings, run_epochs


@dataclass(frozen=True)
class ManifoldConfig:
    contrastive_weight: float = 0.2   # 0: crop regression only
    intra_weight: float = 1.0         # weight of the non-salient own crops among the anchor's negatives
    temperature: float = 0.2
    mutual_weight: float = 0.5        # 0: no EMA teacher, no mutual learning
    ema_decay: float = 0.99
    hidden: int = 256
    proj_dim: int = 64
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_images: int = 64
    max_epochs: int = 40
    patience: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_settings(self)


class CropModel(nn.Module):
    def __init__(self, dim: int, cfg: ManifoldConfig):
        super().__init__()
        self.encoder = nn.Sequential(BankDropout(cfg.dropout, dim), nn.Linear(dim, cfg.hidden), nn.GELU())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1))
        self.projection = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                        nn.Linear(cfg.hidden, cfg.proj_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., D) -> quality (...), unit-norm embedding (..., P)."""
        h = self.encoder(x)
        return self.head(h).squeeze(-1), F.normalize(self.projection(h), dim=-1)


def contrastive_terms(query: torch.Tensor, keys: torch.Tensor, temperature: float,
                      intra_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """query, keys: (B, K, P) unit vectors, crop 0 of each image its anchor.
    Returns (class term, anchor term) as described in the module docstring."""
    b, k, _ = query.shape
    logits = query.reshape(b * k, -1) @ keys.reshape(b * k, -1).T / temperature  # (BK, BK)
    image = torch.arange(b).repeat_interleave(k)
    same = image[:, None] == image[None, :]
    log_prob = logits.log_softmax(dim=1)
    class_term = -(log_prob * same).sum(1).div(k).mean()
    anchor_rows = logits[::k]                                  # (B, BK): each anchor's query
    own = same[::k]
    weights = torch.ones_like(anchor_rows)
    weights[own] = intra_weight                                # own non-salient crops ...
    weights[torch.arange(b), torch.arange(b) * k] = 1.0        # ... but the anchor's own key is the positive
    log_weights = torch.log(weights.clamp_min(1e-12)).masked_fill(weights == 0, -math.inf)
    denominator = torch.logsumexp(anchor_rows + log_weights, dim=1)
    anchor_term = (denominator - anchor_rows[torch.arange(b), torch.arange(b) * k]).mean()
    return class_term, anchor_term


@dataclass
class TrainedCrops:
    model: CropModel
    mean: np.ndarray
    std: np.ndarray
    y_mean: float
    y_std: float
    config: ManifoldConfig
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    def _z(self, crops: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((crops - self.mean) / self.std).astype(np.float32))

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, K, D) crop features -> (N,) crop-averaged quality."""
        self.model.eval()
        with torch.no_grad():
            return self.model(self._z(crops))[0].mean(-1).numpy() * self.y_std + self.y_mean

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, K, D) -> (N, K, P) unit-norm projection-head embeddings."""
        self.model.eval()
        with torch.no_grad():
            return self.model(self._z(crops))[1].numpy()

    def state(self) -> dict:
        """Tensors and plain values (what torch.load(weights_only=True) reads back)."""
        return {"state_dict": self.model.state_dict(), "mean": torch.from_numpy(self.mean),
                "std": torch.from_numpy(self.std), "y_mean": float(self.y_mean), "y_std": float(self.y_std),
                "config": asdict(self.config), "best_epoch": int(self.best_epoch)}

    @classmethod
    def from_state(cls, state: dict) -> "TrainedCrops":
        mean = np.asarray(state["mean"])  # the dtype it was trained with, so predictions are reproduced exactly
        cfg = ManifoldConfig(**state["config"])
        model = CropModel(len(mean), cfg)
        model.load_state_dict(state["state_dict"])
        return cls(model.eval(), mean, np.asarray(state["std"]), state["y_mean"], state["y_std"], cfg,
                   state["best_epoch"])


def train_crop_model(crops_tr: np.ndarray, order_tr: np.ndarray, y_tr: np.ndarray, crops_va: np.ndarray,
                     y_va: np.ndarray, cfg: ManifoldConfig = ManifoldConfig(), progress: bool = False) -> TrainedCrops:
    """crops_*: (N, K, D) crop features; order_tr: (N, K) crop indices, most salient first.
    Deterministic for cfg.seed; early stopping on validation."""
    if crops_tr.shape[1] < 2:
        raise ValueError("the contrastive objective needs at least 2 crops per image")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    flat = crops_tr.reshape(-1, crops_tr.shape[2])
    mean, std = column_stats(flat)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std() or 1.0)
    ordered = np.take_along_axis(crops_tr, order_tr[..., None], axis=1)  # anchor first
    z = torch.from_numpy(((ordered - mean) / std).astype(np.float32))
    t = torch.from_numpy(((y_tr - y_mean) / y_std).astype(np.float32))
    zv = torch.from_numpy(((crops_va - mean) / std).astype(np.float32))
    student = CropModel(z.shape[2], cfg)
    teacher = copy.deepcopy(student).requires_grad_(False) if cfg.mutual_weight else None

    def epoch_losses():
        perm = rng.permutation(len(t))
        for start in range(0, len(perm) - 1, cfg.batch_images):
            idx = perm[start:start + cfg.batch_images]
            pred, query = student(z[idx])
            target = t[idx, None].expand_as(pred)
            loss = F.smooth_l1_loss(pred, target)
            keys = query
            if teacher is not None:
                teacher.eval()
                with torch.no_grad():
                    t_pred, keys = teacher(z[idx])
                loss = loss + cfg.mutual_weight * F.smooth_l1_loss(pred, t_pred.mean(1, keepdim=True).expand_as(pred))
            if cfg.contrastive_weight and len(idx) > 1:
                class_term, anchor_term = contrastive_terms(query, keys, cfg.temperature, cfg.intra_weight)
                loss = loss + cfg.contrastive_weight * (class_term + anchor_term)
            yield loss

    def val_score(scorer):
        with torch.no_grad():
            return selection_score(scorer(zv)[0].mean(1).numpy(), y_va)

    state, best_epoch, history = run_epochs(student, cfg, epoch_losses, val_score, teacher, progress=progress)
    final = CropModel(z.shape[2], cfg)
    final.load_state_dict(state)
    return TrainedCrops(final.eval(), mean, std, y_mean, y_std, cfg, best_epoch, history)


def manifold_stats(emb: np.ndarray) -> dict[str, float]:
    """emb (N, K, P), crop 0 the anchor: how images' crops sit in the space. Cosine distances:
    within an image (anchor to its other crops), between images (anchors), and their ratio
    (small: images separate; near 0: an image's crops collapsed onto one point)."""
    e = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    within = 1 - np.einsum("np,nkp->nk", e[:, 0], e[:, 1:]).mean()
    anchors = e[:, 0]
    sims = anchors @ anchors.T
    between = 1 - sims[np.triu_indices(len(e), 1)].mean()
    return {"anchor_to_own_crops": float(within), "between_image_anchors": float(between),
            "within_over_between": float(within / between)}
