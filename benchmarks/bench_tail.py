"""Learned-tail benchmark: one training step (forward and backward) of the two-block learned tail
(`qfm_lib.tail`) on a batch of token windows, one torch thread, as a result row runs it. Prints
milliseconds per step of the library's tail, whose depthwise convolutions run in float32 channels-last
outside the decoder's autocast, against the same tail with them in the autocast's dtype (bfloat16 on CPUs
with native support; what the library did before 2026-12-06), and the largest difference of their outputs.

Usage: python benchmarks/bench_tail.py [--windows 32] [--side 5] [--steps 20]
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import torch
from torch.nn import functional as F

from qfm_lib.backbones import load_backbone
from qfm_lib.decoder import DecoderConfig, precision
from qfm_lib.features import one_torch_thread, token_channel_names
from qfm_lib.tail import LearnedTail

BACKBONE = "tf_efficientnet_lite0"


def conv_in_autocast_dtype(self: LearnedTail, h: torch.Tensor, i: int, relu6: bool) -> torch.Tensor:
    """LearnedTail._conv as it was: every convolution, depthwise too, in the autocast's dtype."""
    w, b = self.layer(i)
    h = F.conv2d(h, w, b, padding=w.shape[-1] // 2, groups=h.shape[1] // w.shape[1])
    return F.relu6(h) if relu6 else h


def ms_per_step(tail: LearnedTail, x: torch.Tensor, bf16: bool, steps: int) -> float:
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = tail(x)
        out.float().square().mean().backward()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=32, help="windows per step (16 images x 2 windows)")
    parser.add_argument("--side", type=int, default=5, help="cells per window side")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    b = load_backbone(BACKBONE)
    # the token channels, then what tail.tail_tokens appends for a two-block tail (block5's width)
    channels = len(token_channel_names(b.stage_names, b.stage_channels)) + b.stage_channels[b.stage_names.index("block5")]
    tail = LearnedTail.for_tokens(BACKBONE, np.zeros(channels), np.ones(channels), rate=1.0, blocks=2)
    x = torch.randn(args.windows, args.side * args.side, channels)
    bf16 = precision(DecoderConfig()) == "bf16"
    with one_torch_thread():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            now = tail(x).float()
            with mock.patch.object(LearnedTail, "_conv", conv_in_autocast_dtype):
                before = tail(x).float()
        library = ms_per_step(tail, x, bf16, args.steps)
        with mock.patch.object(LearnedTail, "_conv", conv_in_autocast_dtype):
            old = ms_per_step(tail, x, bf16, args.steps)
    dtype = "bfloat16" if bf16 else "float32"
    print(f"two-block tail of {BACKBONE}, {args.windows} windows of {args.side}x{args.side} cells, one thread, "
          f"autocast {dtype}")
    print(f"depthwise in float32, channels-last (library): {library:7.1f} ms/step")
    print(f"depthwise in {dtype:8s}                      : {old:7.1f} ms/step")
    print(f"speed-up                                     : {old / library:7.2f}")
    print(f"largest output difference                    : {(now - before).abs().max().item():.3g} "
          f"(outputs' sd {now.std().item():.3g})")


if __name__ == "__main__":
    main()
