"""The backbone's last stages, learning with the token decoder (DecoderConfig.tail_rate > 0).

The token maps are cached from a frozen backbone. Its last stages are cheap enough to train on this CPU,
though: EfficientNet-Lite's block6 (one inverted-residual block) and head (a 1x1 convolution) act on
block5's stride-32 map, which the token cache holds as it is (features.TOKEN_STAGES). So a copy of those
layers recomputes the tokens' block6 and head channels from the block5 channels of each window, and
learns with the decoder: features that learn, without a second pass of the backbone (tail_blocks 1).
With tail_blocks n > 1 the copy starts n - 1 blocks earlier: block5's last n - 1 blocks (each 192 -> 1152
-> 192, with a skip) recompute the block5 channels too, from the output of the block before them, which
is on the same grid. That output is not in the token cache: `tail_tokens` computes it once per image set
and depth (a partial pass of the backbone in PyTorch, on one torch thread so that its bits do not depend
on the process: 113 s for LIVEC's 1000 photos) and appends it to the token channels, cached on disk; the
tail drops those input channels from its output, so the decoder reads the usual channels.

Each convolution's eval-mode batch norm is folded into it (frozen statistics, as in fine-tuning with
frozen BN). Each weight and bias is w0 + rate * delta, delta learned from zero: AdamW's steps on delta
are about lr in size, so the tail learns at `rate` times the decoder's rate, and weight decay pulls it
back towards the pretrained weights. Each window is read on its own cells, zero-padded at its border as
a crop of the photo would be (training and evaluation alike). At rate's start (delta 0) the tail
reproduces the cached cells it recomputes inside a map to about 3e-4 relative error (the fp16 cache;
docs/explorations/learned_tail.py and deeper_tail.py; the study's rate and depth were chosen on
validation there and in tail_rate.py).
"""
from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights
from tqdm.auto import tqdm

from .backbones import Backbone, load_backbone
from .cache import cache_path, code_digest, library_versions
from .features import TOKEN_STAGES, _exclusive, one_torch_thread, to_tensor, token_channel_names
from .images import load_rgb
from .tokens import TokenSet

# the stages the tail reads and writes, in the token channels' order (each stored whole: "mean" only)
TAIL_STAGES = ("block5", "block6", "head")
TAIL_INPUT_VERSION = 2  # the joined token files are keyed by it and by tail.py's code (2: one thread)
# and by these libraries' versions (decoding, the backbone's pass); its rows follow tokens.TokenSet's layout
TAIL_INPUT_LIBRARIES = ("numpy", "PIL", "torch", "timm")


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free convolution followed by an eval-mode batch norm, as one convolution's weight and bias."""
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return w.detach().clone(), b.detach().clone()


def _inverted_residual(block: nn.Module, skip: bool, where: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The folded conv_pw, conv_dw and conv_pwl of an EfficientNet-Lite block (ReLU6, no squeeze-excitation)."""
    needed = ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3")
    if not all(hasattr(block, n) for n in needed) or not isinstance(block.se, nn.Identity) \
            or bool(getattr(block, "has_skip", False)) != skip or not isinstance(block.bn1.act, nn.ReLU6):
        raise ValueError(f"the learned tail needs EfficientNet-Lite's {where} (an inverted-residual block "
                         f"{'with' if skip else 'without'} a skip, without squeeze-excitation, ReLU6)")
    return [_folded(block.conv_pw, block.bn1), _folded(block.conv_dw, block.bn2), _folded(block.conv_pwl, block.bn3)]


def _last_stages(backbone: Backbone, blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Block5 and block6 of an EfficientNet-Lite, checked to hold a tail of `blocks` blocks: block6 (one
    block) and block5's last blocks - 1 blocks (its first block, which changes the width, stays out)."""
    groups = getattr(backbone.model, "blocks", [])
    if len(groups) < 2 or len(groups[-1]) != 1 or len(groups[-2]) < 2:
        raise ValueError(f"the learned tail needs EfficientNet-Lite's last stages; {backbone.name} differs")
    if not 1 <= blocks <= len(groups[-2]):
        raise ValueError(f"a learned tail of {backbone.name} has 1 to {len(groups[-2])} blocks, got {blocks}")
    return groups[-2], groups[-1]


def _tail_layers(backbone: Backbone, blocks: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    block5, block6 = _last_stages(backbone, blocks)
    layers = [layer for i, block in enumerate(block5[len(block5) - blocks + 1:])
              for layer in _inverted_residual(block, True, f"block5's block {len(block5) - blocks + 2 + i}")]
    m = backbone.model
    return layers + _inverted_residual(block6[0], False, "block6") + [_folded(m.conv_head, m.bn2)]


def pretrained_layers(backbone: str, blocks: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The folded (weight, bias) of each convolution of the backbone's learned tail of `blocks` blocks, in
    order: block5's last blocks - 1 blocks (with their skips), block6 (no skip), the head
    (EfficientNet-Lite's shape only)."""
    return _tail_layers(_backbone(backbone), blocks)


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
    """Recomputes the last stages' channels of normalised token windows (B, T, C), T = w x w cells, and
    learns. One block (blocks=1): block6 and head from the cached block5 channels. n > 1 blocks: block5,
    block6 and head from the output of block5's block n - 1 from its end, which tail_tokens appends to the
    token channels; those input channels are dropped from the output. Every other channel passes unchanged.
    Its state holds the pretrained (folded) weights, so a decoder's state alone rebuilds it (from_state).

    read: the input channels' [start, end); write: where the recomputed channels start (the output has
    write + their count channels)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], read: tuple[int, int], write: int,
                 mean: np.ndarray, std: np.ndarray, rate: float):
        super().__init__()
        if rate <= 0:
            raise ValueError(f"the tail's rate must be positive, got {rate}")
        self.blocks = (len(layers) - 1) // 3
        self.read, self.write, self.rate = read, write, rate
        for i, (w, b) in enumerate(layers):
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)
            setattr(self, f"dw{i}", nn.Parameter(torch.zeros_like(w)))
            setattr(self, f"db{i}", nn.Parameter(torch.zeros_like(b)))
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)).clone())
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)).clone())

    @classmethod
    def for_tokens(cls, backbone: str, mean: np.ndarray, std: np.ndarray, rate: float,
                   blocks: int = 1) -> "LearnedTail":
        """The tail of the backbone that wrote the tokens, normalised as the tokens are (mean, std: one
        value per channel; with blocks > 1 the token channels followed by tail_tokens' input channels)."""
        b = _backbone(backbone)
        layers = _tail_layers(b, blocks)
        names = token_channel_names(b.stage_names, b.stage_channels)
        block5, block6 = tail_channels(names)
        channels = len(names)
        read = (block5, block6) if blocks == 1 else (channels, channels + layers[0][0].shape[1])
        if len(mean) != max(channels, read[1]):
            raise ValueError(f"a {blocks}-block tail of {backbone} reads {max(channels, read[1])} token channels, "
                             f"got {len(mean)}" + (" (tail_tokens appends its input)" if blocks > 1 else ""))
        return cls(layers, read, block6 if blocks == 1 else block5, mean, std, rate)

    @classmethod
    def from_state(cls, state: dict, rate: float) -> "LearnedTail":
        """An empty tail shaped as the tail whose state_dict (its keys without a prefix) is `state`;
        load_state_dict fills it."""
        n = sum(1 for k in state if k.startswith("w"))
        layers = [(torch.empty_like(state[f"w{i}"]), torch.empty_like(state[f"b{i}"])) for i in range(n)]
        channels, width, blocks = len(state["mean"]), state["w0"].shape[1], (n - 1) // 3
        written = sum(len(state[f"b{i}"]) for i in _written_layers(blocks))
        if n == 4:  # one block: block6 and head written after block5, which it reads
            read = (channels - written - width, channels - written)
            return cls(layers, read, read[1], np.zeros(channels), np.ones(channels), rate)
        return cls(layers, (channels - width, channels), channels - width - written,
                   np.zeros(channels), np.ones(channels), rate)

    @property
    def out_channels(self) -> int:
        """Channels of its output: the token channels (with blocks > 1, without the appended input)."""
        return len(self.mean) if self.blocks == 1 else self.read[0]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (getattr(self, f"w{i}") + self.rate * getattr(self, f"dw{i}"),
                getattr(self, f"b{i}") + self.rate * getattr(self, f"db{i}"))

    def _conv(self, h: torch.Tensor, i: int, relu6: bool) -> torch.Tensor:
        w, b = self.layer(i)
        if w.shape[1] == 1:  # depthwise: float32 and channels-last, whose backward on a CPU is ~2x faster than bfloat16's
            with torch.autocast(h.device.type, enabled=False):
                h = F.conv2d(h.float().contiguous(memory_format=torch.channels_last), w, b, padding=w.shape[-1] // 2,
                             groups=h.shape[1])
        else:
            h = F.conv2d(h, w, b, padding=w.shape[-1] // 2)
        return F.relu6(h) if relu6 else h

    def maps(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) raw input maps -> (B, C_out, H, W) raw maps of the token stages it recomputes:
        block5's output (blocks > 1), block6's, the head's."""
        h, outs = inputs, []
        for block in range(self.blocks):
            x = h
            for j, relu6 in enumerate((True, True, False)):
                h = self._conv(h, 3 * block + j, relu6)
            h = h + x if block < self.blocks - 1 else h  # block5's blocks have a skip, block6 none
            if block >= self.blocks - 2:  # block5's last block and block6
                outs.append(h)
        outs.append(self._conv(h, 3 * self.blocks, True))
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        side = int(round(t ** 0.5))
        if side * side != t:
            raise ValueError(f"the learned tail reads square windows of cells, got {t} cells")
        r = slice(*self.read)
        inputs = (x[..., r].float() * self.std[r] + self.mean[r]).view(b, side, side, -1).permute(0, 3, 1, 2)
        out = self.maps(inputs).permute(0, 2, 3, 1).reshape(b, t, -1).float()
        w = slice(self.write, self.write + out.shape[-1])
        out = (out - self.mean[w]) / self.std[w]
        return torch.cat([x[..., :self.write], out.to(x.dtype)], -1)


def _written_layers(blocks: int) -> list[int]:
    """The indices of a tail's layers whose outputs it writes: the last two blocks' last convolutions
    (block5's last block, block6; only block6 with blocks=1) and the head."""
    return [3 * k + 2 for k in range(max(0, blocks - 2), blocks)] + [3 * blocks]


def tail_input_maps(batch: torch.Tensor, backbone: str, blocks: int = 2) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, H/32, W/32, C5) what a tail of `blocks` > 1 blocks reads: the
    output of block5's block blocks - 1 from its end (a partial pass of the backbone in PyTorch)."""
    if blocks < 2:
        raise ValueError("a tail of one block reads the cached block5 cells, not tail_input_maps")
    b = _backbone(backbone)
    block5, _ = _last_stages(b, blocks)
    m = b.model
    with torch.inference_mode(), one_torch_thread():  # the same bits wherever it runs (cached, then compared)
        x = m.bn1(m.conv_stem(batch.contiguous(memory_format=torch.channels_last)))
        for group in m.blocks[:-2]:
            x = group(x)
        for block in block5[:len(block5) - blocks + 1]:
            x = block(x)
    return x.permute(0, 2, 3, 1).float()


def tail_tokens(tokens: TokenSet, paths: Sequence[str | Path], key: str, blocks: int = 2,
                progress: bool = True) -> TokenSet:
    """`tokens` with tail_input_maps' channels appended to every cell (fp16): the token set of a tail of
    `blocks` > 1 blocks. Computed once per image set and depth (`key`: the token cache entry, which hashes
    the images and the backbone; paths: each image's file, in the tokens' order) and kept memory-mapped
    under <cache>/tail_tokens/, written atomically; a grid that differs from the tokens' is an error naming
    the image."""
    if tokens.backbone is None:
        raise ValueError("a tail of several blocks needs to know the tokens' backbone: TokenSet(..., backbone=name)")
    path = cache_path("tail_tokens", {"tokens": key, "backbone": tokens.backbone, "blocks": blocks,
                                      "version": TAIL_INPUT_VERSION, "code": code_digest("tail"),
                                      "libraries": library_versions(*TAIL_INPUT_LIBRARIES)}, ".npy")
    if path not in _OPENED:  # one token set per file and process: its per-image statistics are computed once
        with _exclusive(path):
            if not path.is_file():
                _write_tail_tokens(tokens, paths, path, blocks, progress)
        _OPENED[path] = TokenSet(np.load(path, mmap_mode="r"), tokens.grid, tokens.names, tokens.backbone)
    return _OPENED[path]


_OPENED: dict = {}


def _write_tail_tokens(tokens: TokenSet, paths: Sequence[str | Path], path: Path, blocks: int, progress: bool) -> None:
    b = _backbone(tokens.backbone)
    width = b.stage_channels[b.stage_names.index("block5")]
    partial = path.with_name(path.stem + ".partial.npy")
    out = np.lib.format.open_memmap(partial, "w+", np.float16, (len(tokens.tokens), tokens.channels + width))
    try:
        for r, image in enumerate(tqdm(paths, desc=f"tail inputs ({blocks} blocks)", disable=not progress)):
            maps = tail_input_maps(to_tensor(load_rgb(image), b)[None], tokens.backbone, blocks)[0]
            if tuple(maps.shape[:2]) != tuple(tokens.grid[r]):
                raise ValueError(f"{image}: its {maps.shape[0]}x{maps.shape[1]} grid differs from the cached tokens' "
                                 f"{tokens.grid[r][0]}x{tokens.grid[r][1]} (tokens of another image, backbone or grid)")
            start, n = tokens.offsets[r], int(tokens.grid[r].prod())
            out[start:start + n, :tokens.channels] = tokens.tokens[start:start + n]
            out[start:start + n, tokens.channels:] = maps.reshape(n, width).to(torch.float16).numpy()
        out.flush()
        del out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@functools.lru_cache(maxsize=2)
def _backbone(name: str) -> Backbone:
    """The backbone, loaded once per process without touching torch's random state (building the timm
    model draws its initial weights): a fit's numbers must not depend on whether it loaded first."""
    with torch.random.fork_rng(devices=[]):
        return load_backbone(name)
