"""A DEIQT-style quality decoder on cached token maps, and the one training loop of every token model.

DEIQT (Qin et al., AAAI 2023) reads a backbone's tokens with a transformer decoder whose learnable
quality query cross-attends them. Here the backbone stays frozen and its token maps are cached
(features.py: 2176 channels per cell of the stride-32 grid), so only the decoder learns (and, if asked,
a copy of the backbone's last stage):

    tokens (B, T, C), z-scored per channel with the training images' statistics
    -> [learned tail (tail.py, cfg.tail_rate > 0): the backbone's last stage recomputes the block6 and
       head channels from each window's block5 channels, and learns; cfg.tail_blocks n > 1: block5's
       last n - 1 blocks too, from the output of the block before them (tail.tail_tokens appends it)]
    -> channel gate: x * 2·sigmoid(MLP(mean_T x))  (input-conditioned, per channel, identity at init;
       QFM-IQM's adaptive feature selection on the upstream features; off: x unchanged)
    -> projection C -> d, LayerNorm
    -> `layers` x [learnable quality query cross-attends the tokens, residual, FFN]
    -> score (and, for the contrastive models, a projection head on the query)

Tokens carry no positional embedding: the decoder reads a bag of cells, so it applies unchanged to
a window of the map or to the whole map. Training reads random windows (crops of the token map,
`window` x `window` cells: 5x5 ≈ 160 px, 7x7 ≈ 224 px), drawn afresh every epoch; evaluation averages the scores
of a grid of evenly spaced windows (window 0: the whole map): by default (`eval_grid` 0) the fewest
per side that cover each image's map, e.g. 4x4 windows of 5x5 cells on a 16x16 map; `eval_grid` n
fixes n x n windows instead, which need not cover the map (docs/method.md, "Evaluation windows").

The loop (`fit_decoder`) carries every optional term, each off by default:
* semantic noisy matching, adversarial (QFM-IQM, qfm_iqm.py): `adv_weight`;
* teacher-labelled extra views (distillation): `distill_weight`;
* salient-window local-manifold contrast with EMA mutual learning (local_manifold.py).
Model selection: early stopping on the validation images' (SRCC + PLCC) / 2.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .metrics import selection_score
from .tail import LearnedTail
from .tokens import TokenSet
from .training import check_training_settings, run_epochs


# The study's token variants override some of these defaults in the registry (protocol._token_config):
# window, dim and lr from the settings search (protocol.TUNED), batch_images from the preregistered
# confirmation (protocol.CONFIRMED), and gap_quantile for the variants that mine partners.
@dataclass(frozen=True)
class DecoderConfig:
    gated: bool = True
    dim: int = 128
    heads: int = 4
    layers: int = 1
    gate_hidden: int = 64
    dropout: float = 0.1
    window: int = 7                 # cells per side of a training window; 0 = the whole map
    eval_grid: int = 0              # n x n windows averaged at test time; 0: the fewest that cover the map
    # QFM-IQM: adversarial semantic noisy matching (0 = off)
    adv_weight: float = 0.0
    adv_eps: float = 0.3
    adv_candidates: int = 2
    gap_quantile: float = 0.05
    dist_quantile: float = 0.8
    # distillation: teacher-labelled extra views (0 = off)
    distill_weight: float = 0.0
    # the backbone's last stage learning with the decoder at this fraction of lr (tail.py; 0 = off)
    tail_rate: float = 0.0
    tail_blocks: int = 1            # 1: block6 and head; n > 1: block5's last n - 1 blocks too (on tail.tail_tokens)
    # local-manifold contrast (0 = off)
    n_windows: int = 1              # windows per image per step
    contrastive_weight: float = 0.0
    intra_weight: float = 1.0
    temperature: float = 0.2
    proj_dim: int = 64
    anchor: str = "learned"         # learned (EMA attention) | spectral | random
    mutual_weight: float = 0.0
    ema: bool = False               # an EMA teacher (used for evaluation, keys and learned saliency)
    ema_decay: float = 0.99
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 1e-2
    bf16: bool = True               # matmuls in bfloat16 where the CPU has native support (precision())
    batch_images: int = 32
    max_epochs: int = 32            # was 24 with patience 4: under-trained (see protocol.py)
    patience: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_settings(self)
        if self.window < 0 or self.eval_grid < 0 or self.n_windows < 1:
            raise ValueError(f"bad window settings: window={self.window}, eval_grid={self.eval_grid}, "
                             f"n_windows={self.n_windows}")
        if self.anchor not in ("learned", "spectral", "random"):
            raise ValueError(f"anchor must be learned, spectral or random, got {self.anchor!r}")
        if self.tail_rate < 0:
            raise ValueError(f"tail_rate must be >= 0, got {self.tail_rate}")
        if self.tail_blocks < 1:
            raise ValueError(f"tail_blocks must be >= 1, got {self.tail_blocks}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")

    @property
    def tail_input_blocks(self) -> int:
        """The depth of a learned tail that reads tail.tail_tokens' appended input (tail_blocks > 1), else 0."""
        return self.tail_blocks if self.tail_rate and self.tail_blocks > 1 else 0


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision(cfg: DecoderConfig) -> str:
    """The decoder's matmul precision on this machine: "bf16" (autocast; AVX512-BF16/AMX CPUs, about
    2x faster projections) when cfg.bf16 and the CPU supports it natively, else "fp32". Part of a
    result row's key, since the two give slightly different numbers."""
    return "bf16" if cfg.bf16 and _cpu_has_bf16() else "fp32"


def table_dtype(cfg: DecoderConfig) -> torch.dtype:
    """The dtype in which training keeps the normalised tokens (TokenSet.keep_normalised)."""
    return torch.bfloat16 if precision(cfg) == "bf16" else torch.float32


class QualityDecoder(nn.Module):
    """[learned tail ->] channel gate -> projection -> quality query cross-attending the tokens -> score."""

    def __init__(self, channels: int, cfg: DecoderConfig, tail: LearnedTail | None = None):
        super().__init__()
        self.bf16 = precision(cfg) == "bf16"
        self.tail = tail
        channels = tail.out_channels if tail is not None else channels  # a deeper tail drops its appended input
        self.gate = nn.Sequential(nn.Linear(channels, cfg.gate_hidden), nn.ReLU(),
                                  nn.Linear(cfg.gate_hidden, channels)) if cfg.gated else None
        if self.gate is not None:
            nn.init.zeros_(self.gate[2].weight)
            nn.init.zeros_(self.gate[2].bias)
        # dropout after the projection: on the 2176 input channels it cost more than the matmul
        self.proj = nn.Sequential(nn.Linear(channels, cfg.dim), nn.LayerNorm(cfg.dim), nn.Dropout(cfg.dropout))
        self.query = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.attn = nn.ModuleList(nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
                                  for _ in range(cfg.layers))
        self.norm = nn.ModuleList(nn.LayerNorm(cfg.dim) for _ in range(2 * cfg.layers))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                               nn.Linear(2 * cfg.dim, cfg.dim)) for _ in range(cfg.layers))
        self.head = nn.Linear(cfg.dim, 1)
        self.embed_head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU(), nn.Linear(cfg.dim, cfg.proj_dim))

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, C) tokens -> (..., C) float32 channel multipliers (ones without a gate), computed
        in the precision that training used."""
        if self.gate is None:
            return torch.ones(x[..., 0, :].shape)
        with self._autocast():
            return self._gate(self._tailed(x)).float()

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(self.gate(x.sum(-2) / x.shape[-2]))  # sum: ~6x faster than mean in bf16

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _tailed(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.tail is None else self.tail(x)

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tailed(x)
        return x if self.gate is None else x * self._gate(x).unsqueeze(-2)

    def forward(self, x: torch.Tensor, need_attention: bool = False):
        """x (B, T, C) -> score (B,), query state (B, d) and, if asked, attention over T (B, T),
        all float32."""
        with self._autocast():
            out = self._forward(x, need_attention)
        return tuple(o.float() for o in out)

    def _forward(self, x: torch.Tensor, need_attention: bool):
        return self._decode(self.proj(self._gated(x)), need_attention)

    def _decode(self, tokens: torch.Tensor, need_attention: bool):
        q = self.query.expand(len(tokens), -1, -1)
        weights = None
        for i, (attn, ffn) in enumerate(zip(self.attn, self.ffn)):
            out, weights = attn(q, tokens, tokens, need_weights=need_attention)
            q = self.norm[2 * i](q + out)
            q = self.norm[2 * i + 1](q + ffn(q))
        q = q.squeeze(1)
        score = self.head(q).squeeze(-1)
        return (score, q, weights.squeeze(1)) if need_attention else (score, q)

    def token_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T): the first layer's quality-query attention logits (before the
        softmax, mean over heads), comparable across windows: where the query looks."""
        with self._autocast():
            tokens = self.proj(self._gated(x))
        return self._logits(tokens.float())

    def scores_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward(x) and token_logits(x) from one projection of the tokens (an EMA teacher that
        both picks the salient windows and gives their keys): score (B,), query (B, d), logits (B, T)."""
        with self._autocast():
            tokens = self.proj(self._gated(x))
            score, q = self._decode(tokens, False)
        return score.float(), q.float(), self._logits(tokens.float())

    def window_scores_of_maps(self, maps: list[torch.Tensor], windows: torch.Tensor) -> torch.Tensor:
        """Scores of windows that share cells, each cell projected once: maps, (n_i, C) token maps
        whose cells, one map after the other, `windows` (W, T) indexes -> (W,) float32, as forward()
        on each window gives them in eval mode. Needs a model without a gate (the gate depends on
        each window's mean, so each window has its own projection) and without a learned tail (it
        reads each window's cells on their own, zero-padded at the window's border)."""
        if self.gate is not None or self.tail is not None:
            raise ValueError("a gated decoder or one with a learned tail reads each window on its own: use forward()")
        with self._autocast():
            return self._decode(torch.cat([self.proj(m) for m in maps])[windows], False)[0].float()

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        attn = self.attn[0]
        d = tokens.shape[-1]
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = (self.query[0, 0] @ w[:d].T + b[:d]).view(attn.num_heads, -1)               # (H, dh)
        k = (tokens @ w[d:2 * d].T + b[d:2 * d]).view(*tokens.shape[:2], attn.num_heads, -1)
        return torch.einsum("hd,bthd->bt", q, k) / (q.shape[1] ** 0.5 * attn.num_heads)

    def embed(self, q: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_head(q), dim=-1)


# ---------------------------------------------------------------- the model and its training

@dataclass
class TrainedDecoder:
    model: QualityDecoder
    tokens_mean: np.ndarray
    tokens_std: np.ndarray
    y_mean: float
    y_std: float
    config: DecoderConfig
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    def view(self, tokens: TokenSet) -> TokenSet:
        """The token set as this model reads it: normalised with its training statistics."""
        if tokens.channels != len(self.tokens_mean):
            raise ValueError(f"these token maps have {tokens.channels} channels per cell, this model was trained on "
                             f"{len(self.tokens_mean)}: token maps of another backbone or other stages, or, for a model "
                             f"whose learned tail has two blocks or more, maps without tail.tail_tokens' cells "
                             f"(ProtocolInputs.tokens_for gives them)")
        tokens.mean, tokens.std = self.tokens_mean, self.tokens_std
        return tokens

    def window_scores(self, tokens: TokenSet, rows: np.ndarray, chunk: int = 64) -> np.ndarray:
        """(len(rows), n_windows) scores of each image's evaluation windows (MOS scale; NaN where
        an image has fewer windows than the widest)."""
        self.model.eval()
        tokens = self.view(tokens)
        rows = np.asarray(rows)
        tokens.check_window(rows, self.config.window)
        owner, tops, lefts = tokens.owned_grid_windows(rows, self.config.window, self.config.eval_grid)
        flat = np.stack([tops, lefts], axis=1)
        with torch.no_grad():
            if self.model.gate is None and self.model.tail is None and self.config.window > 0:
                scores = self._scores_cells_once(tokens, rows, owner, flat, chunk // 4)
            else:
                scores = np.concatenate([self.model(tokens.windows(
                    rows[owner[i:i + chunk]], flat[i:i + chunk, 0], flat[i:i + chunk, 1], self.config.window,
                    table_dtype(self.config)))[0].numpy() for i in range(0, len(owner), chunk)])
        out = np.full((len(rows), np.bincount(owner).max()), np.nan)
        out[owner, np.arange(len(owner)) - np.searchsorted(owner, owner)] = scores  # k-th window of its image
        return out * self.y_std + self.y_mean

    def _scores_cells_once(self, tokens: TokenSet, rows: np.ndarray, owner: np.ndarray, flat: np.ndarray,
                           images: int) -> np.ndarray:
        """Scores of overlapping windows (window `i` of image rows[owner[i]] at flat[i]), `images`
        images at a time, each cell projected once (an ungated model's projection is per cell)."""
        scores = []
        for start in range(0, len(rows), images):
            mine = np.flatnonzero((owner >= start) & (owner < start + images))
            part = rows[start:start + images]
            first = np.concatenate([[0], np.cumsum(tokens.grid[part].prod(1))[:-1]])
            image = rows[owner[mine]]
            idx = tokens.cell_index(image, flat[mine, 0], flat[mine, 1], self.config.window)
            idx += (first[owner[mine] - start] - tokens.offsets[image])[:, None]  # into this part's maps
            maps = tokens.image_maps(part, table_dtype(self.config))
            scores.append(self.model.window_scores_of_maps(maps, torch.from_numpy(idx)).numpy())
        return np.concatenate(scores)

    def predict(self, tokens: TokenSet, rows: np.ndarray) -> np.ndarray:
        """Quality of each image: the mean score of its evaluation windows."""
        return np.nanmean(self.window_scores(tokens, np.asarray(rows)), axis=1)

    def gate_values(self, tokens: TokenSet, rows: np.ndarray, chunk: int = 64) -> np.ndarray:
        """(len(rows), C) channel multipliers of the gate on each image: the mean, over the image's
        evaluation windows (those predict() scores), of the gate each window gets from its own cells."""
        self.model.eval()
        tokens = self.view(tokens)
        rows = np.asarray(rows)
        tokens.check_window(rows, self.config.window)
        window, n = self.config.window, self.config.eval_grid
        owner, tops, lefts = tokens.owned_grid_windows(rows, window, n)
        image = rows[owner]
        with torch.no_grad():
            gates = torch.cat([self.model.gate_values(tokens.windows(
                image[i:i + chunk], tops[i:i + chunk], lefts[i:i + chunk], window, table_dtype(self.config)))
                for i in range(0, len(image), chunk)]).double().numpy()
        sums = np.zeros((len(rows), gates.shape[1]))
        np.add.at(sums, owner, gates)
        return (sums / np.bincount(owner, minlength=len(rows))[:, None]).astype(np.float32)

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(), "tokens_mean": torch.from_numpy(self.tokens_mean),
                "tokens_std": torch.from_numpy(self.tokens_std), "y_mean": self.y_mean, "y_std": self.y_std,
                "config": asdict(self.config), "best_epoch": self.best_epoch, "history": self.history}

    @classmethod
    def from_state(cls, state: dict) -> "TrainedDecoder":
        cfg = DecoderConfig(**state["config"])
        mean = np.asarray(state["tokens_mean"], dtype=np.float32)
        tail = LearnedTail.from_state({k[5:]: v for k, v in state["state_dict"].items() if k.startswith("tail.")},
                                      cfg.tail_rate) if cfg.tail_rate else None
        model = QualityDecoder(len(mean), cfg, tail)
        model.load_state_dict(state["state_dict"])
        return cls(model.eval(), mean, np.asarray(state["tokens_std"], dtype=np.float32), state["y_mean"],
                   state["y_std"], cfg, state["best_epoch"], list(state.get("history", [])))


@dataclass
class Batch:
    """What an extra loss term sees of one training step."""
    rows: np.ndarray          # (B,) image rows
    x: torch.Tensor           # (B, K, T, C) window tokens, K = cfg.n_windows
    target: torch.Tensor      # (B,) standardised labels
    score: torch.Tensor       # (B, K) student scores
    query: torch.Tensor       # (B, K, d) student query states
    rng: np.random.Generator
    tokens: TokenSet          # the token set trained on
    teacher: "QualityDecoder | None" = None  # the EMA teacher, when cfg.ema
    teacher_out: "tuple[torch.Tensor, torch.Tensor] | None" = None  # its (B, K) scores, (B, K, d) queries


ExtraTerm = Callable[[QualityDecoder, Batch], torch.Tensor]


def _tail(tokens: TokenSet, cfg: DecoderConfig) -> LearnedTail | None:
    """The learned tail of a config with tail_rate, normalised as the tokens are now (the training part's
    statistics, set before the model is built)."""
    if not cfg.tail_rate:
        return None
    if tokens.backbone is None:
        raise ValueError("a learned tail (tail_rate > 0) needs to know the tokens' backbone: TokenSet(..., backbone=name)")
    return LearnedTail.for_tokens(tokens.backbone, tokens.mean, tokens.std, cfg.tail_rate, cfg.tail_blocks)


def fit_decoder(tokens: TokenSet, y: np.ndarray, train: np.ndarray, val: np.ndarray, cfg: DecoderConfig,
                extra_terms: list[ExtraTerm] = (), choose_windows=None, extra_views=None,
                progress: bool = False, keep_last: bool = False) -> TrainedDecoder:
    """Train a decoder on the images `train` (rows of `tokens`), early stopping on `val`.

    extra_terms: functions (model, Batch) -> loss added to the regression loss (QFM matching, ...).
    choose_windows(model_or_teacher, tokens, rows, rng) -> (tops, lefts) of (B, K) windows, for
    models that pick their windows (local manifold); default: K random windows per image. When it
    read the windows anyway it may return two more items, in the chosen order: their tokens (B*K,
    T, C) as windows(..., table_dtype(cfg)) gives them, and the model's (scores, queries) on them,
    which Batch.teacher_out passes on when that model is the EMA teacher.
    extra_views: (rows, tops, lefts, labels) teacher-labelled windows (distillation), a fresh draw
    of len(train) of them joining every epoch with weight cfg.distill_weight.
    Deterministic for cfg.seed with torch's threads fixed."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train, val = np.asarray(train), np.asarray(val)
    tokens.check_window(np.concatenate([train, val]), cfg.window)
    dtype = table_dtype(cfg)
    tokens.fit_normalisation(train).keep_normalised(dtype)
    y_mean, y_std = float(y[train].mean()), float(y[train].std() or 1.0)
    t_all = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32))
    model = QualityDecoder(tokens.channels, cfg, _tail(tokens, cfg))
    teacher = copy.deepcopy(model).requires_grad_(False).eval() if cfg.ema else None

    def epoch_losses():
        perm = rng.permutation(train)
        for start in range(0, len(perm), cfg.batch_images):
            rows = perm[start:start + cfg.batch_images]
            x, teacher_out = None, None
            if choose_windows is not None:
                tops, lefts, *more = choose_windows(teacher or model, tokens, rows, rng)
                if more:
                    x, seen = more
                    teacher_out = seen if teacher is not None else None
            else:
                pos = [tokens.random_positions(rows, cfg.window, rng) for _ in range(cfg.n_windows)]
                tops, lefts = np.stack([p[0] for p in pos], 1), np.stack([p[1] for p in pos], 1)
            k = tops.shape[1]
            if x is None:
                x = tokens.windows(np.repeat(rows, k), tops.ravel(), lefts.ravel(), cfg.window, dtype)
            score, query = model(x)
            target = t_all[rows]
            loss = F.smooth_l1_loss(score, target.repeat_interleave(k))
            batch = Batch(rows, x.view(len(rows), k, *x.shape[1:]), target, score.view(len(rows), k),
                          query.view(len(rows), k, -1), rng, tokens, teacher, teacher_out)
            for term in extra_terms:
                loss = loss + term(model, batch)
            if extra_views is not None and cfg.distill_weight:
                v_rows, v_tops, v_lefts, v_labels = extra_views
                pick = rng.integers(0, len(v_rows), len(rows))
                xv = tokens.windows(v_rows[pick], v_tops[pick], v_lefts[pick], cfg.window, dtype)
                tv = torch.from_numpy(((v_labels[pick] - y_mean) / y_std).astype(np.float32))
                loss = loss + cfg.distill_weight * F.smooth_l1_loss(model(xv)[0], tv)
            yield loss

    def val_score(scorer):
        scored = TrainedDecoder(scorer, tokens.mean, tokens.std, y_mean, y_std, cfg, 0)
        return selection_score(scored.predict(tokens, val), y[val])

    state, best_epoch, history = run_epochs(model, cfg, epoch_losses, val_score, teacher, keep_last, progress)
    final = QualityDecoder(tokens.channels, cfg, copy.deepcopy(model.tail))
    final.load_state_dict(state)
    return TrainedDecoder(final.eval(), tokens.mean, tokens.std, y_mean, y_std, cfg, best_epoch, history)
