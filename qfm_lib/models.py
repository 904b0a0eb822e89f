"""QFM-IQM on cached features: adaptive channel gating, semantic noisy matching, distillation.

Student: x (z-scored multi-stage features) -> gate -> decoder -> quality.
  gate(x) = x * sigmoid(W2 relu(W1 x)) * 2   (input-conditioned, per channel; identity at init)
Semantic noisy matching (ICML form): for each training sample i, partners j from the training
memory with |y_i - y_j| <= the gap_quantile of training gaps and feature distance >= the
dist_quantile of training distances (similar quality, different semantics). The partner's gated
feature perturbs the sample's: h~ = h + eps * (h_j - h); the loss asks f(h~) to stay at y_i.
Contrastive form (earlier version, optional): pairs with similar semantics and different quality
are pushed apart in the gated space by a hinge of margin 1 on their normalised distance.
Distillation: extra samples (crop views) with teacher labels join the memory with weight
`distill_weight`; each epoch visits every labelled sample and a fresh random draw of
`extra_per_epoch` x as many teacher-labelled views (all of them stay available as partners).
Model selection: early stopping on the validation part's (SRCC + PLCC) / 2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .analysis import column_stats
from .metrics import selection_score
from .pairs import KINDS, kind_mask
from .training import check_training_settings, run_epochs


@dataclass(frozen=True)
class TrainConfig:
    gated: bool = True
    matching_weight: float = 0.0      # 0 disables semantic noisy matching
    matching_eps: float = 0.5
    gap_quantile: float = 0.05
    dist_quantile: float = 0.8
    contrastive_weight: float = 0.0   # 0 disables the contrastive form
    distill_weight: float = 1.0
    extra_per_epoch: float = 1.0      # teacher-labelled views drawn per labelled sample per epoch
    hidden: int = 256
    gate_hidden: int = 64
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 80
    patience: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_settings(self)


class BankDropout(nn.Module):
    """Dropout whose masks are row slices of a bank sampled once from torch's seeded generator.
    Drawing 0.5M Bernoulli values per step on CPU cost more than the model's matmuls (about 2.5 ms
    vs 1 ms per 128 x 4192 batch); a random slice of a 1024-row bank costs one integer."""

    def __init__(self, p: float, dim: int, rows: int = 1024):
        super().__init__()
        self.p = p
        bank = (torch.rand(rows, dim) >= p).float() / (1 - p) if p > 0 else torch.ones(1, dim)
        self.register_buffer("bank", bank, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        flat = x.reshape(-1, x.shape[-1])
        rows = self.bank.shape[0]
        if len(flat) > rows:
            return F.dropout(x, self.p, True)
        start = int(torch.randint(rows - len(flat) + 1, (1,)))
        return (flat * self.bank[start:start + len(flat)]).reshape(x.shape)


class QualityModel(nn.Module):
    def __init__(self, dim: int, cfg: TrainConfig):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, cfg.gate_hidden), nn.ReLU(),
                                  nn.Linear(cfg.gate_hidden, dim)) if cfg.gated else None
        if self.gate is not None:
            nn.init.zeros_(self.gate[2].weight)
            nn.init.zeros_(self.gate[2].bias)
        self.decoder = nn.Sequential(BankDropout(cfg.dropout, dim), nn.Linear(dim, cfg.hidden), nn.GELU(),
                                     nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1))

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(self.gate(x)) if self.gate is not None else torch.ones_like(x)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_values(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.select(x)).squeeze(-1)


@dataclass
class Trained:
    model: QualityModel
    mean: np.ndarray
    std: np.ndarray
    y_mean: float
    y_std: float
    config: TrainConfig
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            z = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
            return self.model(z).numpy() * self.y_std + self.y_mean

    def gate_values(self, x: np.ndarray) -> np.ndarray:
        """The gate's per-channel multipliers (N, D) for raw features x (1 everywhere without a gate)."""
        self.model.eval()
        with torch.no_grad():
            return self.model.gate_values(torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))).numpy()

    def gated(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return self.model.select(torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))).numpy()

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(), "mean": self.mean, "std": self.std, "y_mean": self.y_mean,
                "y_std": self.y_std, "config": asdict(self.config), "best_epoch": self.best_epoch}

    @classmethod
    def from_state(cls, state: dict) -> "Trained":
        cfg = TrainConfig(**state["config"])
        model = QualityModel(len(state["mean"]), cfg)
        model.load_state_dict(state["state_dict"])
        return cls(model.eval(), state["mean"], state["std"], state["y_mean"], state["y_std"], cfg, state["best_epoch"])


def mine_partners(z: np.ndarray, y: np.ndarray, gap_quantile: float, dist_quantile: float,
                  similar_quality: bool = True) -> list[np.ndarray]:
    """For each row, the rows that are (similar quality, distant) or (close, different quality).
    Thresholds are quantiles over all pairs of |Δy| and of feature distance."""
    from sklearn.metrics.pairwise import euclidean_distances

    d = euclidean_distances(z.astype(np.float32))  # BLAS; pdist was 10x slower at 4k x 4k dims
    g = np.abs(y[:, None] - y[None, :])
    upper = np.triu_indices(len(y), 1)
    d_pairs, g_pairs = d[upper], g[upper]
    if similar_quality:
        mask = kind_mask(d, g, np.quantile(d_pairs, dist_quantile), np.quantile(g_pairs, gap_quantile), KINDS[0])
    else:
        mask = kind_mask(d, g, np.quantile(d_pairs, 1 - dist_quantile), np.quantile(g_pairs, 1 - gap_quantile), KINDS[1])
    np.fill_diagonal(mask, False)
    return [np.flatnonzero(row) for row in mask]


def _sample_partner(partners: list[np.ndarray], idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.full(len(idx), -1)
    for k, i in enumerate(idx):
        if len(partners[i]):
            out[k] = partners[i][rng.integers(len(partners[i]))]
    return out


def train_model(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                cfg: TrainConfig = TrainConfig(), x_extra: np.ndarray | None = None,
                y_extra: np.ndarray | None = None, progress: bool = False, keep_last: bool = False) -> Trained:
    """Train with early stopping on validation data (or keep the last epoch: keep_last);
    deterministic for cfg.seed."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mean, std = column_stats(x_train)
    y_mean, y_std = float(y_train.mean()), float(y_train.std() or 1.0)
    x_all, y_all = x_train, y_train
    weight = np.ones(len(y_train))
    n_labelled, n_extra = len(y_train), 0
    if x_extra is not None:
        n_extra = min(len(y_extra), int(round(cfg.extra_per_epoch * n_labelled)))
        x_all, y_all = np.vstack([x_train, x_extra]), np.concatenate([y_train, y_extra])
        weight = np.concatenate([weight, np.full(len(y_extra), cfg.distill_weight)])
    z = ((x_all - mean) / std).astype(np.float32)
    t = ((y_all - y_mean) / y_std).astype(np.float32)
    noisy = mine_partners(z, y_all, cfg.gap_quantile, cfg.dist_quantile) if cfg.matching_weight else None
    contrast = mine_partners(z, y_all, cfg.gap_quantile, cfg.dist_quantile, False) if cfg.contrastive_weight else None
    model = QualityModel(z.shape[1], cfg)
    z_t, t_t, w_t = torch.from_numpy(z), torch.from_numpy(t), torch.from_numpy(weight.astype(np.float32))
    zv = torch.from_numpy(((x_val - mean) / std).astype(np.float32))

    def epoch_losses():
        # every labelled sample, plus a fresh draw of teacher-labelled views (the whole expanded
        # memory stays available as matching partners)
        order = rng.permutation(np.concatenate([
            np.arange(n_labelled), n_labelled + rng.choice(len(t) - n_labelled, n_extra, replace=False)]))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            h = model.select(z_t[idx])
            pred = model.decoder(h).squeeze(-1)
            loss = (w_t[idx] * F.smooth_l1_loss(pred, t_t[idx], reduction="none")).mean()
            if noisy is not None:
                partner = _sample_partner(noisy, idx, rng)
                has = partner >= 0
                if has.any():
                    hp = model.select(z_t[partner[has]])
                    perturbed = h[has] + cfg.matching_eps * (hp - h[has])
                    loss = loss + cfg.matching_weight * F.smooth_l1_loss(model.decoder(perturbed).squeeze(-1), t_t[idx][has])
            if contrast is not None:
                partner = _sample_partner(contrast, idx, rng)
                has = partner >= 0
                if has.any():
                    gap = (model.select(z_t[partner[has]]) - h[has]).norm(dim=1) / np.sqrt(h.shape[1])
                    loss = loss + cfg.contrastive_weight * F.relu(1.0 - gap).mean()
            yield loss

    def val_score(scorer):
        with torch.no_grad():
            return selection_score(scorer(zv).numpy(), y_val)

    state, best_epoch, history = run_epochs(model, cfg, epoch_losses, val_score, keep_last=keep_last,
                                            progress=progress)
    model.load_state_dict(state)
    return Trained(model.eval(), mean, std, y_mean, y_std, cfg, best_epoch, history)


def train_fixed_epochs(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, epochs: int) -> Trained:
    """Train on all data for a fixed number of epochs (chosen beforehand on validation data)."""
    fixed = TrainConfig(**{**asdict(cfg), "max_epochs": epochs})
    return train_model(x, y, x, y, fixed, keep_last=True)
