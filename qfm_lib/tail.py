"""The backbone's last stage, learning with the token decoder (DecoderConfig.tail_rate > 0).

The token maps are cached from a frozen backbone. Its last stage is cheap enough to train on this CPU,
though: EfficientNet-Lite's block6 (one inverted-residual block) and head (a 1x1 convolution) act on
block5's stride-32 map, which the token cache holds as it is (features.TOKEN_STAGES). So a copy of those
layers recomputes the tokens' block6 and head channels from the block5 channels of each window, and
learns with the decoder: features that learn, without a second pass of the backbone.

Each convolution's eval-mode batch norm is folded into it (frozen statistics, as in fine-tuning with
frozen BN). Each weight and bias is w0 + rate * delta, delta learned from zero: AdamW's steps on delta
are about lr in size, so the tail learns at `rate` times the decoder's rate, and weight decay pulls it
back towards the pretrained weights. Each window is read on its own cells, zero-padded at its border as
a crop of the photo would be (training and evaluation alike). At rate's start (delta 0) the tail
reproduces the cached block6 and head cells inside a map to about 3e-4 relative error (the fp16 cache;
docs/explorations/learned_tail.py; the study's rate was chosen on validation there and in tail_rate.py).
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .backbones import Backbone, load_backbone
from .features import TOKEN_STAGES, token_channel_names

# the stages the tail reads and writes, in the token channels' order (each stored whole: "mean" only)
TAIL_STAGES = ("block5", "block6", "head")
_ACTIVATIONS = ("relu6", "relu6", "none", "relu6")  # conv_pw, conv_dw, conv_pwl, conv_head


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free convolution followed by an eval-mode batch norm, as one convolution's weight and bias."""
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return w.detach().clone(), b.detach().clone()


def _tail_layers(backbone: Backbone) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The folded convolutions of the backbone's last stage and head (EfficientNet-Lite's shape only)."""
    m = backbone.model
    group = getattr(m, "blocks", [None])[-1]
    block = group[0] if group is not None and len(group) == 1 else None
    needed = ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3")
    if block is None or not all(hasattr(block, n) for n in needed) or not isinstance(block.se, nn.Identity) \
            or getattr(block, "has_skip", False) or not isinstance(block.bn1.act, nn.ReLU6):
        raise ValueError(f"the learned tail needs EfficientNet-Lite's last stage (one inverted-residual block "
                         f"without squeeze-excitation or skip, ReLU6); {backbone.name} differs")
    return [_folded(block.conv_pw, block.bn1), _folded(block.conv_dw, block.bn2),
            _folded(block.conv_pwl, block.bn3), _folded(m.conv_head, m.bn2)]


def tail_channels(names: list[tuple[str, str, int]]) -> tuple[int, int]:
    """Where block5's and block6's channels start among the token channels (stage, part, channel).
    The tail needs them last: block5, block6, head, each stored whole, in that order."""
    stages = [stage for stage, _, _ in names]
    start = stages.index("block5") if "block5" in stages else len(stages)
    if [k for k, _ in itertools.groupby(stages[start:])] != list(TAIL_STAGES) \
            or any(TOKEN_STAGES.get(s) != ("mean",) for s in TAIL_STAGES):
        raise ValueError(f"the learned tail needs the token channels to end with {', '.join(TAIL_STAGES)}, "
                         f"each stored whole")
    return start, stages.index("block6")


class LearnedTail(nn.Module):
    """Recomputes the block6 and head channels of normalised token windows (B, T, C), T = w x w cells,
    from their block5 channels; every other channel passes unchanged. Its state holds the pretrained
    (folded) weights, so a decoder's state alone rebuilds it (from_state)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], block5: int, block6: int,
                 mean: np.ndarray, std: np.ndarray, rate: float):
        super().__init__()
        if rate <= 0:
            raise ValueError(f"the tail's rate must be positive, got {rate}")
        self.block5, self.block6, self.rate = block5, block6, rate
        for i, (w, b) in enumerate(layers):
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)
            setattr(self, f"dw{i}", nn.Parameter(torch.zeros_like(w)))
            setattr(self, f"db{i}", nn.Parameter(torch.zeros_like(b)))
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)).clone())
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)).clone())

    @classmethod
    def for_tokens(cls, backbone: str, mean: np.ndarray, std: np.ndarray, rate: float) -> "LearnedTail":
        """The tail of the backbone that wrote the tokens, normalised as the tokens are (mean, std)."""
        b = _backbone(backbone)
        return cls(_tail_layers(b), *tail_channels(token_channel_names(b.stage_names, b.stage_channels)),
                   mean, std, rate)

    @classmethod
    def from_state(cls, state: dict, rate: float) -> "LearnedTail":
        """An empty tail shaped as the tail whose state_dict (its keys without a prefix) is `state`;
        load_state_dict fills it."""
        layers = [(torch.empty_like(state[f"w{i}"]), torch.empty_like(state[f"b{i}"])) for i in range(len(_ACTIVATIONS))]
        channels = len(state["mean"])
        block6 = channels - len(state["b2"]) - len(state["b3"])
        return cls(layers, block6 - state["w0"].shape[1], block6, np.zeros(channels), np.ones(channels), rate)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (getattr(self, f"w{i}") + self.rate * getattr(self, f"dw{i}"),
                getattr(self, f"b{i}") + self.rate * getattr(self, f"db{i}"))

    def maps(self, block5: torch.Tensor) -> torch.Tensor:
        """(B, C5, H, W) raw block5 maps -> (B, C6 + C_head, H, W) raw block6 and head maps."""
        h = block5
        outs = []
        for i, act in enumerate(_ACTIVATIONS):
            w, b = self.layer(i)
            h = F.conv2d(h, w, b, padding=w.shape[-1] // 2, groups=h.shape[1] // w.shape[1])
            h = F.relu6(h) if act == "relu6" else h
            if i >= 2:  # block6's output, then the head's
                outs.append(h)
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        side = int(round(t ** 0.5))
        if side * side != t:
            raise ValueError(f"the learned tail reads square windows of cells, got {t} cells")
        s5 = slice(self.block5, self.block6)
        block5 = (x[..., s5].float() * self.std[s5] + self.mean[s5]).view(b, side, side, -1).permute(0, 3, 1, 2)
        out = self.maps(block5).permute(0, 2, 3, 1).reshape(b, t, -1).float()
        out = (out - self.mean[self.block6:]) / self.std[self.block6:]
        return torch.cat([x[..., :self.block6], out.to(x.dtype)], -1)


@functools.lru_cache(maxsize=2)
def _backbone(name: str) -> Backbone:
    """The backbone, loaded once per process without touching torch's random state (building the timm
    model draws its initial weights): a fit's numbers must not depend on whether it loaded first."""
    with torch.random.fork_rng(devices=[]):
        return load_backbone(name)
