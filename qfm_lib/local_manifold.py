"""Salient-window local-manifold contrastive learning with mutual learning (arXiv 2406.19247), on
token windows. Our reading of the abstract; there is no official code.

Crops are windows of the cached token map (`window` x `window` cells of the stride-32 grid; 5x5 ≈ 160 px), `n_windows`
of them sampled afresh per image and step. The most salient window is the anchor:
* learned saliency (default): where the EMA teacher's quality query looks: its attention logits
  averaged inside each window (comparable across windows, unlike softmax weights): mutual learning
  is how the model learns where the salient regions are;
* spectral: the spectral-residual map (saliency.cell_saliency, fixed, weight-free) inside the window;
* random: an arbitrary window (ablation).
Loss per step, besides each window's regression on its image's MOS:
* class term: every window's embedding is pulled towards the anchor's key (anchor-centred positive:
  the salient window clusters the image's other windows) against the other images' windows;
* anchor term: the anchor picks out its own key against the other images' windows and, as
  intra-class negatives weighted by `intra_weight`, its own image's non-salient windows, so the
  local manifold of one image does not collapse onto a point;
* mutual term: each window's score is pulled towards the EMA teacher's mean score of its image.
Keys come from the EMA teacher (MoCo-style, in eval mode; with learned saliency from the same
pass that chose the anchor). Evaluation: the EMA teacher's mean over the grid windows.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from .decoder import Batch, DecoderConfig, QualityDecoder, TrainedDecoder, fit_decoder, table_dtype
from .tokens import TokenSet, window_average


def anchored_contrast(query: torch.Tensor, keys: torch.Tensor, temperature: float,
                      intra_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """query, keys: (B, K, P) unit vectors, window 0 of each image its anchor.
    class term: every window's query against all keys, its positive the anchor key of its image;
    anchor term: the anchor's query, positive its own key, the other images' windows and (weighted
    by intra_weight) its own image's other windows as negatives."""
    b, k, _ = query.shape
    logits = query.reshape(b * k, -1) @ keys.reshape(b * k, -1).T / temperature     # (BK, BK)
    image = torch.arange(b).repeat_interleave(k)
    anchor_col = image * k
    own = image[:, None] == image[None, :]
    # class term: softmax over the anchors of all images and the other images' windows
    allowed = ~own
    allowed[torch.arange(b * k), anchor_col] = True
    masked = logits.masked_fill(~allowed, -math.inf)
    class_term = (masked.logsumexp(1) - logits[torch.arange(b * k), anchor_col]).mean()
    rows = logits[::k]                                                                 # (B, BK)
    weights = torch.ones_like(rows)
    weights[own[::k]] = intra_weight
    weights[torch.arange(b), torch.arange(b) * k] = 1.0
    log_w = torch.log(weights.clamp_min(1e-12)).masked_fill(weights == 0, -math.inf)
    anchor_term = (torch.logsumexp(rows + log_w, 1) - rows[torch.arange(b), torch.arange(b) * k]).mean()
    return class_term, anchor_term


# (B, H, W) per-cell saliency, (B, K) window positions -> (B, K) mean saliency inside each window
window_mass = window_average


def window_chooser(cfg: DecoderConfig, spectral: np.ndarray | None = None):
    """choose_windows for fit_decoder: n_windows random windows per image, the most salient first."""

    def choose(model: QualityDecoder, tokens: TokenSet, rows: np.ndarray, rng: np.random.Generator):
        pos = [tokens.random_positions(rows, cfg.window, rng) for _ in range(cfg.n_windows)]
        tops, lefts = np.stack([p[0] for p in pos], 1), np.stack([p[1] for p in pos], 1)
        if cfg.anchor == "random" or not cfg.contrastive_weight:  # only the contrast has an anchor
            return tops, lefts
        if cfg.anchor == "spectral":
            if spectral is None:
                raise ValueError("anchor='spectral' needs the spectral-residual cell saliency")
            order = np.argsort(-window_mass(spectral[rows], tops, lefts, cfg.window), axis=1, kind="stable")
            return np.take_along_axis(tops, order, 1), np.take_along_axis(lefts, order, 1)
        # learned: where the (EMA) model's quality query looks, mean logit inside each window; the
        # windows' tokens and the model's scores and queries on them come along, in the chosen order
        # (fit_decoder reads no window twice, and the teacher's keys need no second pass)
        was = model.training
        model.eval()
        b, k = len(rows), cfg.n_windows
        with torch.no_grad():
            x = tokens.windows(np.repeat(rows, k), tops.ravel(), lefts.ravel(), cfg.window, table_dtype(cfg))
            score, query, logits = model.scores_and_logits(x)
        model.train(was)
        order = np.argsort(-logits.mean(1).view(b, k).numpy(), axis=1, kind="stable")
        flat = torch.from_numpy((order + np.arange(b)[:, None] * k).ravel())  # chosen order, into the b*k windows
        seen = (score.index_select(0, flat).view(b, k), query.index_select(0, flat).view(b, k, -1))
        x = x.index_select(0, flat)
        return np.take_along_axis(tops, order, 1), np.take_along_axis(lefts, order, 1), x, seen

    return choose


def manifold_terms(cfg: DecoderConfig):
    """Contrastive (class + anchor) and mutual terms on a batch whose window 0 is the anchor."""

    def term(model: QualityDecoder, batch: Batch) -> torch.Tensor:
        loss = batch.score.new_zeros(())
        if not (cfg.mutual_weight or cfg.contrastive_weight):  # window regression: nothing to add
            return loss
        query = model.embed(batch.query)                                   # (B, K, P)
        keys = query
        if batch.teacher is not None:
            with torch.no_grad():
                if batch.teacher_out is not None:  # computed when the teacher chose the anchors
                    t_score, t_q = batch.teacher_out
                else:
                    t_score, t_q = batch.teacher(batch.x.reshape(-1, *batch.x.shape[2:]))
                keys = batch.teacher.embed(t_q).view_as(query)
                t_mean = t_score.view(batch.score.shape).mean(1, keepdim=True)
            if cfg.mutual_weight:
                loss = loss + cfg.mutual_weight * F.smooth_l1_loss(batch.score, t_mean.expand_as(batch.score))
        if cfg.contrastive_weight and len(batch.rows) > 1:
            class_term, anchor_term = anchored_contrast(query, keys, cfg.temperature, cfg.intra_weight)
            loss = loss + cfg.contrastive_weight * (class_term + anchor_term)
        return loss

    return term


def fit_manifold_decoder(tokens: TokenSet, y: np.ndarray, parts: dict[str, np.ndarray], cfg: DecoderConfig,
                         spectral: np.ndarray | None = None, progress: bool = False,
                         keep_last: bool = False) -> TrainedDecoder:
    """One local-manifold variant on one split (window choice needs the tokens' normalisation from
    the training part, which fit_decoder sets before the first step)."""
    return fit_decoder(tokens, y, parts["train"], parts["val"], cfg, [manifold_terms(cfg)],
                       choose_windows=window_chooser(cfg, spectral), progress=progress, keep_last=keep_last)
