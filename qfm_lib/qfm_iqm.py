"""QFM-IQM on the token decoder, as its abstracts describe it (our reading; no official code).

* Adaptive feature selection: the decoder's input-conditioned channel gate on the upstream (backbone)
  token features (decoder.QualityDecoder.gate).
* Semantic noisy matching, adversarial: the training memory's pairs of similar quality and
  different semantics (pooled-feature distance, `models.mine_partners`, the rule of notebook 02)
  are the semantic noise. For each training image, `adv_candidates` partners are drawn (distinct
  where it has that many); each perturbs the image's window in the upstream feature space,
  x~ = x + eps (x_partner - x), and the perturbation that hurts most (the largest loss of the current model) is kept, as in adversarial
  training; the model is trained to predict the image's own label from x~ (insensitivity), and the
  gate, which sees x~, learns which upstream channels to damp. eps is chosen on validation.
* Distillation that expands the data honestly: a teacher labels extra views (the evaluation-grid
  windows of every training image). The teacher is ridge on window-mean tokens, fitted out of fold
  on the training part (5 folds), so no image's views are labelled by a model that saw its label;
  its alpha is chosen leaving out whole images, not single windows.
  The views join training with weight `distill_weight`; they are not used as matching partners.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from .baselines import RidgeGCV
from .decoder import Batch, DecoderConfig, QualityDecoder, TrainedDecoder, fit_decoder
from .metrics import selection_score
from .models import mine_partners
from .tokens import TokenSet

ADV_EPS_GRID = (0.15, 0.3)
TEACHER_ALPHAS = np.logspace(0, 5, 11)


def matching_partners(x_pooled: np.ndarray, y: np.ndarray, train: np.ndarray, cfg: DecoderConfig) -> dict[int, np.ndarray]:
    """Training image row -> training rows of similar quality and different semantics."""
    z = (x_pooled[train] - x_pooled[train].mean(0)) / (x_pooled[train].std(0) + 1e-8)
    lists = mine_partners(z, y[train], cfg.gap_quantile, cfg.dist_quantile)
    return {int(r): train[p] for r, p in zip(train, lists)}


def draw_candidates(partners: dict[int, np.ndarray], rows: np.ndarray, m: int,
                    rng: np.random.Generator) -> np.ndarray:
    """m candidate partners of each row, candidate-major (m*b,): distinct where a row has m partners or
    more (so "the worst of m" compares m different partners), else with repeats (a row with one partner
    has only that one)."""
    picks = [rng.choice(partners[int(r)], m, replace=len(partners[int(r)]) < m) for r in rows]
    return np.stack(picks, 1).ravel()


def adversarial_matching(partners: dict[int, np.ndarray], cfg: DecoderConfig):
    """The extra loss term: worst-of-candidates semantic noise on each image's first window."""

    def term(model: QualityDecoder, batch: Batch) -> torch.Tensor:
        rng, rows, x, target = batch.rng, batch.rows, batch.x[:, 0], batch.target  # x: (b, T, C)
        has = np.array([len(partners.get(int(r), ())) > 0 for r in rows])
        if not has.any():
            return batch.score.new_zeros(())
        if not has.all():
            keep = torch.from_numpy(has)
            rows, x, target = rows[has], x[keep], target[keep]
        m, b = cfg.adv_candidates, len(rows)
        cands = draw_candidates(partners, rows, m, rng)
        tops, lefts = batch.tokens.random_positions(cands, cfg.window, rng)
        xp = batch.tokens.windows(cands, tops, lefts, cfg.window, x.dtype).view(m, b, *x.shape[1:])
        perturbed = torch.add(x * (1 - cfg.adv_eps), xp, alpha=cfg.adv_eps)  # x + eps (xp - x): (m, b, T, C)
        with torch.no_grad():
            was = model.training
            model.eval()
            scores = torch.stack([model(p)[0] for p in perturbed])  # one call per candidate: faster than one (m*b) batch
            model.train(was)
            losses = F.smooth_l1_loss(scores, target.expand(m, b), reduction="none")
        worst = perturbed[losses.argmax(0), torch.arange(b)]
        return cfg.adv_weight * F.smooth_l1_loss(model(worst)[0], target)

    return term


def window_teacher_views(tokens: TokenSet, y: np.ndarray, train: np.ndarray, cfg: DecoderConfig,
                         folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation-grid windows of every training image, labelled out of fold by ridge on window-mean
    tokens (alpha by leaving out one image's windows at a time inside each fold's training images,
    baselines.RidgeGCV with groups: an image's windows share its label, so leaving out one window
    would let its siblings vouch for it). Needs the tokens normalised on `train`. Returns rows, tops,
    lefts, labels."""
    from sklearn.model_selection import KFold

    rows, tops, lefts = tokens.grid_windows(train, cfg.window, cfg.eval_grid)
    means = tokens.window_means(rows, tops, lefts, cfg.window)
    labels = np.empty(len(rows))
    for fit_imgs, held_imgs in KFold(folds, shuffle=True, random_state=seed).split(train):
        fit_mask, held_mask = np.isin(rows, train[fit_imgs]), np.isin(rows, train[held_imgs])
        ridge = RidgeGCV(TEACHER_ALPHAS).fit(means[fit_mask], y[rows[fit_mask]], groups=rows[fit_mask])
        labels[held_mask] = ridge.predict(means[held_mask])
    return rows, tops, lefts, labels


def fit_qfm_decoder(tokens: TokenSet, y: np.ndarray, x_pooled: np.ndarray, parts: dict[str, np.ndarray],
                    cfg: DecoderConfig, eps_grid: tuple[float, ...] | None = None,
                    progress: bool = False, keep_last: bool = False) -> TrainedDecoder:
    """One QFM-IQM variant on one split: matching partners and teacher views from the training part
    only; with matching on, eps is chosen on validation from eps_grid (default ADV_EPS_GRID)."""
    train, val = parts["train"], parts["val"]
    tokens.fit_normalisation(train)
    views = window_teacher_views(tokens, y, train, cfg, seed=cfg.seed) if cfg.distill_weight else None
    if not cfg.adv_weight:
        return fit_decoder(tokens, y, train, val, cfg, extra_views=views, progress=progress, keep_last=keep_last)
    partners = matching_partners(x_pooled, y, train, cfg)
    runs = []
    for eps in eps_grid or ADV_EPS_GRID:
        c = replace(cfg, adv_eps=eps)
        runs.append(fit_decoder(tokens, y, train, val, c, [adversarial_matching(partners, c)],
                                extra_views=views, progress=progress, keep_last=keep_last))
    return max(runs, key=lambda r: selection_score(r.predict(tokens, val), y[val]))
