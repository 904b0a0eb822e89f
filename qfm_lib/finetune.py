"""End-to-end fine-tuning of the backbone under a token decoder: an option for GPU users, not part
of the batch. On a 2-core CPU a training step took 0.43-0.97 s per 500x500 image in six runs
(forward and backward pass of Lite0 with its token maps; benchmarks/bench_finetune.py), so one LIVEC
epoch with its validation takes about 5-11 minutes and ten splits of ten epochs about 8-18 hours.

Linear probing, then fine-tuning (LP-FT; Kumar et al., ICLR 2022): each split starts from the model
that a protocol variant's row trained on the frozen, cached tokens of that split (default window
regression), so step 0 is exactly that model, and then the backbone and the decoder train together at
one small learning rate, on the same random token windows, now of the live token maps of the whole
image (FeatureGraph and token_cells, the cache's own definitions). The backbone's batch-norm
statistics stay frozen. The protocol is the study's: the split's training part trains, its validation
part picks the epoch (early stopping), and its test part is scored once, with the protocol's
evaluation windows (TrainedDecoder.predict on the live token maps).

    qfm finetune --splits 0 1 2 --device cuda        # rows to build/finetune/, with the paired comparison
    qfm finetune --device cuda --lr-grid 3e-6 1e-5 3e-5   # each split chooses its rate on validation
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .backbones import Backbone, load_backbone
from .decoder import TrainedDecoder
from .features import FeatureGraph, to_tensor, token_cells
from .images import load_rgb
from .metrics import iqa_metrics, selection_score
from .tokens import TokenSet
from .training import check_training_settings, run_epochs

DEFAULT_START = "window regression (EMA)"
TEST_METRICS = ("plcc", "srcc", "krcc", "rmse")


@dataclass(frozen=True)
class FinetuneConfig:
    start: str = DEFAULT_START   # protocol variant whose per-split model (frozen tokens) is the start
    lr: float = 1e-5             # one rate for backbone and decoder (the decoder is already trained)
    weight_decay: float = 1e-2
    max_epochs: int = 10
    patience: int = 3
    batch_images: int = 16
    amp: bool = True             # bfloat16 autocast for the backbone on CUDA
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_settings(self)
        try:
            device = torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"device {self.device!r} is not a torch device ({err}); e.g. cpu, cuda, cuda:1") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: fine-tuning runs on cpu or cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: this torch ({torch.__version__}) finds no CUDA GPU; "
                             f"use --device cpu (slow: about 8-18 h for ten splits on a 2-core CPU)")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {self.device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0")


class FinetunedDecoder(nn.Module):
    """The backbone's token maps, normalised with the start model's training statistics, read by the
    start model's decoder. Both train; the backbone's batch norms stay in eval mode."""

    def __init__(self, backbone: Backbone, start: TrainedDecoder):
        super().__init__()
        own = replace(backbone, model=copy.deepcopy(backbone.model).requires_grad_(True))  # each split starts afresh
        self.graph = FeatureGraph(own)
        self.decoder = copy.deepcopy(start.model)
        self.register_buffer("mean", torch.from_numpy(start.tokens_mean).float())
        self.register_buffer("std", torch.from_numpy(start.tokens_std).float())

    def train(self, mode: bool = True) -> "FinetunedDecoder":
        super().train(mode)
        self.graph.eval()  # frozen batch-norm statistics: batches of a few images would corrupt them
        return self

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, h, w, C) raw token cells, float32."""
        _, *maps = self.graph(images)
        return token_cells(self.graph.token_stages, maps).float()

    def window_scores(self, cells: torch.Tensor, tops: np.ndarray, lefts: np.ndarray, window: int) -> torch.Tensor:
        """Scores of one window per image: (B, h, w, C) raw cells and (B,) window corners -> (B,)."""
        x = torch.stack([cells[b, t:t + window, l:l + window] for b, (t, l) in enumerate(zip(tops, lefts))])
        x = ((x - self.mean) / self.std).flatten(1, 2)  # (B, T, C)
        return self.decoder(x)[0]

    def random_window_scores(self, cells: torch.Tensor, window: int, rng: np.random.Generator,
                             rows: np.ndarray) -> torch.Tensor:
        """Scores of one random window per image (uniform over the positions that fit); rows: the images'
        rows, to name them when their grid is smaller than the window."""
        h, w = cells.shape[1:3]
        if window > min(h, w):
            raise ValueError(f"image rows {list(rows)}: token grid {h}x{w} is smaller than the window {window}")
        return self.window_scores(cells, rng.integers(0, h - window + 1, len(rows)),
                                  rng.integers(0, w - window + 1, len(rows)), window)


def load_images(paths: list[str], backbone: Backbone, progress: bool = True) -> list[torch.Tensor]:
    """Every image as the backbone's normalised (3, H, W) tensor at native resolution, float16 (kept in
    memory: LIVEC's 1000 images take 1.5 GB)."""
    return [to_tensor(load_rgb(p), backbone).half() for p in tqdm(paths, desc="images", disable=not progress)]


def image_batch(images: list[torch.Tensor], rows: np.ndarray, device: str) -> torch.Tensor:
    """Images `rows` (of one size) as one float32 batch on `device`."""
    return torch.stack([images[r] for r in rows]).to(device).float()


def _by_shape(rows: np.ndarray, images: list[torch.Tensor]) -> list[np.ndarray]:
    """rows grouped by image size, so that each group forms one batch."""
    shapes = [tuple(images[r].shape) for r in rows]
    return [rows[[s == shape for s in shapes]] for shape in dict.fromkeys(shapes)]


def _autocast(cfg: FinetuneConfig):
    if cfg.amp and cfg.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def live_tokens(model: FinetunedDecoder, images: list[torch.Tensor], rows: np.ndarray, cfg: FinetuneConfig,
                batch: int = 8) -> TokenSet:
    """The current backbone's raw token maps of `rows`, as a TokenSet whose row i is rows[i]."""
    cells = {}
    with torch.no_grad(), _autocast(cfg):
        for group in _by_shape(np.asarray(rows), images):
            for start in range(0, len(group), batch):
                part = group[start:start + batch]
                x = image_batch(images, part, cfg.device)
                for r, c in zip(part, model.cells(x).cpu().numpy()):
                    cells[r] = c
    maps = [cells[r] for r in rows]
    return TokenSet(np.concatenate([m.reshape(-1, m.shape[-1]) for m in maps]),
                    np.array([m.shape[:2] for m in maps]))


def _scorer(model: FinetunedDecoder, start: TrainedDecoder, epoch: int = 0) -> TrainedDecoder:
    """The current decoder as a TrainedDecoder on the CPU, which evaluates as the protocol does."""
    return TrainedDecoder(copy.deepcopy(model.decoder).cpu().eval(), start.tokens_mean, start.tokens_std,
                          start.y_mean, start.y_std, start.config, epoch)


def predict(model: FinetunedDecoder, start: TrainedDecoder, images: list[torch.Tensor], rows: np.ndarray,
            cfg: FinetuneConfig) -> np.ndarray:
    """Quality of `rows` (MOS scale): the protocol's evaluation windows on the live token maps."""
    tokens = live_tokens(model, images, rows, cfg)
    return _scorer(model, start).predict(tokens, np.arange(len(rows)))


def _fit_split(start: TrainedDecoder, backbone: Backbone, images: list[torch.Tensor], y: np.ndarray,
               parts: dict[str, np.ndarray], cfg: FinetuneConfig, progress: bool) -> tuple[FinetunedDecoder, dict]:
    """Fine-tune from `start` on parts["train"] at cfg.lr, early stopping on parts["val"], where the start
    itself is a candidate (best_epoch -1: no epoch scored higher on validation). Returns the model with
    the kept weights, in eval mode, and its validation record; no test part is read."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train, val = parts["train"], parts["val"]
    window = start.config.window
    model = FinetunedDecoder(backbone, start).to(cfg.device)
    target = torch.from_numpy(((y - start.y_mean) / start.y_std).astype(np.float32)).to(cfg.device)
    began = time.perf_counter()

    def epoch_losses():
        perm = rng.permutation(train)
        for first in range(0, len(perm), cfg.batch_images):
            rows = perm[first:first + cfg.batch_images]
            losses = []
            for group in _by_shape(rows, images):
                x = image_batch(images, group, cfg.device)
                with _autocast(cfg):
                    cells = model.cells(x)
                score = model.random_window_scores(cells, window, rng, group)
                losses.append(F.smooth_l1_loss(score, target[group], reduction="sum"))
            yield torch.stack(losses).sum() / len(rows)

    val_preds = []  # the start's validation predictions, then each epoch's

    def val_score(scorer: FinetunedDecoder) -> float:
        val_preds.append(predict(scorer, start, images, val, cfg))
        return selection_score(val_preds[-1], y[val])

    initial = {k: v.clone() for k, v in model.state_dict().items()}
    start_score = val_score(model.eval())
    state, best_epoch, history = run_epochs(model, cfg, epoch_losses, val_score, progress=progress)
    if start_score >= max(h["val_score"] for h in history):  # validation prefers no fine-tuning
        state, best_epoch = initial, -1
    model.load_state_dict(state)
    model.eval()
    val_pred = val_preds[best_epoch + 1]  # the kept weights' own predictions, not a second pass
    val_m = iqa_metrics(val_pred, y[val])
    return model, {"val_score": selection_score(val_pred, y[val]), "val_plcc": val_m["plcc"],
                   "val_srcc": val_m["srcc"], "best_epoch": best_epoch,
                   "fit_seconds": round(time.perf_counter() - began, 1),
                   "val_by_epoch": [round(start_score, 4)] + [round(h["val_score"], 4) for h in history]}


def finetune_split(start: TrainedDecoder, backbone: Backbone, images: list[torch.Tensor], y: np.ndarray,
                   parts: dict[str, np.ndarray], cfg: FinetuneConfig, progress: bool = True,
                   score_test: bool = True, lr_grid: Sequence[float] = ()) -> dict:
    """Fine-tune from `start` (a model trained on this split's frozen tokens) on parts["train"], early
    stopping on parts["val"] (_fit_split); with lr_grid, once per learning rate, keeping the one whose
    kept weights score highest on validation (ties: the first), as the matching strength is chosen per
    split. Then score parts["test"] once (unless not score_test: test metrics NaN, for choosing
    settings). Returns the metrics, the learning rate and epoch kept, the validation score of each epoch
    (the start's first) and, with a grid, of each learning rate."""
    best, by_lr, seconds = None, {}, 0.0
    for lr in lr_grid or (cfg.lr,):
        model, info = _fit_split(start, backbone, images, y, parts, replace(cfg, lr=lr), progress)
        by_lr[lr], seconds = round(info["val_score"], 4), seconds + info["fit_seconds"]
        if best is None or info["val_score"] > best[1]["val_score"]:
            best = (model, {**info, "lr": lr})
    model, info = best
    test = parts["test"]
    test_m = iqa_metrics(predict(model, start, images, test, cfg), y[test]) if score_test else {}
    return {**{k: test_m.get(k, np.nan) for k in TEST_METRICS}, **info, "fit_seconds": round(seconds, 1),
            **({"val_by_lr": by_lr} if lr_grid else {})}


def finetune_study(dataset: str, backbone_name: str, splits: list[int], cfg: FinetuneConfig,
                   n_images: int | None = None, progress: bool = True,
                   score_test: bool = True, lr_grid: Sequence[float] = (),
                   on_split: Callable[[pd.DataFrame], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """finetune_split on each split, beside the start variant's own row. Returns one row per (variant,
    split) in the protocol's columns, the fine-tuned variant named "<start>, fine-tuned", and, with two
    splits or more, the paired comparison of the fine-tuned rows with the start's (stats.compare).
    score_test False: validation only (every test metric NaN, no comparison), to choose settings.
    lr_grid: learning rates that each split chooses from on its validation part (else cfg.lr).
    on_split: called with the rows so far after each split (to save them: a later split that fails,
    e.g. out of GPU memory, then loses only its own work)."""
    from . import protocol, study
    from . import stats as S

    repeated = sorted({s for s in splits if list(splits).count(s) > 1})
    if repeated:
        raise ValueError(f"splits {repeated} are given more than once; each split is fine-tuned once")
    data = study.load_study_data(dataset, backbone_name, n_images=n_images)
    unknown = [s for s in splits if f"split_{s}" not in data.splits.columns]
    if unknown:
        raise ValueError(f"splits {unknown} are not in data/splits/{dataset}.csv "
                         f"({data.splits.filter(like='split_').shape[1]} splits)")
    for lr in lr_grid:
        replace(cfg, lr=lr)  # a bad rate fails here, before any training
    inp = protocol.inputs_from_study(data, progress=progress)
    kind = inp.variant(cfg.start).kind
    if kind not in protocol.TOKEN_KINDS:
        raise ValueError(f"start variant {cfg.start!r} ({kind}) has no token decoder; token kinds: {protocol.TOKEN_KINDS}")
    backbone = load_backbone(backbone_name)
    images = load_images(list(data.table["path"]), backbone, progress)
    rows = []
    for split in splits:
        start = protocol.trained_model(inp, cfg.start, split)
        frozen = protocol.evaluate_row(inp, cfg.start, split)
        rows.append({"variant": frozen["variant"], "split": split,
                     **{k: frozen[k] if score_test else np.nan for k in TEST_METRICS},
                     **{k: frozen[k] for k in ("val_score", "val_plcc", "val_srcc", "fit_seconds")}})
        tuned = finetune_split(start, backbone, images, data.mos, inp.parts(split), cfg, progress, score_test,
                               lr_grid)
        rows.append({"variant": f"{cfg.start}, fine-tuned", "split": split, **tuned,
                     "settings": {**asdict(cfg), "lr": tuned["lr"]}})
        if progress:
            print(f"split {split}: validation {frozen['val_score']:.4f} frozen, {tuned['val_score']:.4f} fine-tuned "
                  f"(lr {tuned['lr']:g}, epoch {tuned['best_epoch']}, {tuned['fit_seconds']:.0f} s)"
                  + (f"; test PLCC/SRCC {frozen['plcc']:.3f}/{frozen['srcc']:.3f} frozen, "
                     f"{tuned['plcc']:.3f}/{tuned['srcc']:.3f} fine-tuned" if score_test else ""))
        if on_split is not None:
            on_split(pd.DataFrame(rows))
    rows = pd.DataFrame(rows)
    if len(splits) < 2 or not score_test:
        return rows, None
    n_train, n_test = S.split_sizes(data.splits)
    return rows, S.compare(rows, cfg.start, n_train=n_train, n_test=n_test)
