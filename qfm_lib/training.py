"""The one training loop that every trained model shares (pooled MLP, pooled crops, token decoder):
AdamW, epochs of mini-batch steps, an optional EMA teacher, a validation score after each epoch,
and early stopping that keeps the best epoch's weights."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def check_setting_types(cfg) -> None:
    """A clear error, naming the setting, for a field of the dataclass `cfg` whose value is not of its
    default's kind (bool, whole number, number or text), before it fails deep inside training."""
    bools = (bool, np.bool_)
    kinds = ((bool, bools, "True or False"), (int, numbers.Integral, "a whole number"),
             (float, numbers.Real, "a number"), (str, str, "text"))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        for default_type, allowed, what in kinds:
            if isinstance(field.default, default_type):
                if not isinstance(value, allowed) or (default_type is not bool and isinstance(value, bools)):
                    raise ValueError(f"{type(cfg).__name__}: {field.name} must be {what}, got {value!r}")
                break


def check_training_settings(cfg) -> None:
    """A clear error, naming the setting, for the settings of `cfg` (any config dataclass) of the wrong
    kind, and for its optimisation settings that no training can run with."""
    check_setting_types(cfg)  # so the bounds below compare numbers, never bools or text
    for name, least in (("max_epochs", 1), ("patience", 0), ("batch_size", 1), ("batch_images", 1), ("seed", 0)):
        value = getattr(cfg, name, least)
        if value < least:
            raise ValueError(f"{type(cfg).__name__}: {name} must be a whole number >= {least}, got {value!r}")
    for name in ("lr", "weight_decay"):
        value = getattr(cfg, name, 0.0)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{type(cfg).__name__}: {name} must be a finite number >= 0, got {value!r}")
    dropout = getattr(cfg, "dropout", 0.0)
    if not 0 <= dropout < 1:
        raise ValueError(f"{type(cfg).__name__}: dropout must be in [0, 1), got {dropout!r}")


class EarlyStopping:
    """Keeps the state of the best validation score so far (of the latest epoch with keep_last)
    and says when `patience` epochs passed without improvement."""

    def __init__(self, patience: int, keep_last: bool = False):
        self.patience, self.keep_last = patience, keep_last
        self.best, self.best_epoch, self.state = -np.inf, 0, None

    def step(self, epoch: int, score: float, model: nn.Module) -> bool:
        """Record one epoch's score; True when training should stop."""
        if self.keep_last or score > self.best:
            self.best, self.best_epoch = score, epoch
            self.state = {k: v.clone() for k, v in model.state_dict().items()}
            return False
        return epoch - self.best_epoch >= self.patience


def run_epochs(model: nn.Module, cfg, epoch_losses: Callable[[], Iterator[torch.Tensor]],
               val_score: Callable[[nn.Module], float], teacher: nn.Module | None = None,
               keep_last: bool = False, progress: bool = False) -> tuple[dict, int, list[dict]]:
    """Train `model` for up to cfg.max_epochs epochs (cfg: lr, weight_decay, max_epochs, patience, and
    ema_decay when there is a teacher).

    epoch_losses(): one epoch's batch losses, each stepped as it is yielded (the generator draws its
    own batches, so its random draws keep their order); teacher: an EMA copy updated after each step;
    val_score(scorer): the validation score of the teacher if any, else of the model, in eval mode.
    Returns the kept weights (best validation epoch, or the last with keep_last), that epoch, and the
    per-epoch history."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stopper, history = EarlyStopping(cfg.patience, keep_last), []
    for epoch in tqdm(range(cfg.max_epochs), disable=not progress, desc="epochs", leave=False):
        model.train()
        losses = []
        for loss in epoch_losses():
            opt.zero_grad()
            loss.backward()
            opt.step()
            if teacher is not None:
                with torch.no_grad():
                    for pt, ps in zip(teacher.parameters(), model.parameters()):
                        pt.lerp_(ps, 1 - cfg.ema_decay)
            losses.append(loss.item())
        scorer = teacher if teacher is not None else model
        scorer.eval()
        score = val_score(scorer)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_score": score})
        if stopper.step(epoch, score, scorer):
            break
    if stopper.state is None:
        raise FloatingPointError(f"no epoch of {len(history)} gave a finite validation score (last: {history[-1]}): "
                                 f"the weights diverged (try a lower lr), or the validation labels are all equal")
    return stopper.state, stopper.best_epoch, history
