"""Benchmark: end-to-end fine-tuning steps (qfm_lib.finetune) on real LIVEC images.

Prints seconds per training image (forward and backward of the backbone and the decoder, one window
per image) and per evaluated image (live token maps and the protocol's evaluation windows), and peak
memory, on the chosen device; then what one LIVEC epoch (640 training and 160 validation images) and
ten splits of `--epochs` epochs would take.

    python benchmarks/bench_finetune.py [--device cuda] [--images 16] [--batch 8]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from qfm_lib import protocol, study
from qfm_lib.backbones import load_backbone
from qfm_lib.finetune import FinetuneConfig, FinetunedDecoder, image_batch, load_images, predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=FinetuneConfig().device)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=FinetuneConfig().max_epochs)
    args = parser.parse_args()
    cfg = FinetuneConfig(device=args.device, batch_images=args.batch)
    data = study.load_study_data("livec", "tf_efficientnet_lite0")
    start = protocol.trained_model(protocol.inputs_from_study(data, progress=False), cfg.start, 0)
    backbone = load_backbone("tf_efficientnet_lite0")
    images = load_images(list(data.table["path"][:args.images]), backbone, progress=False)
    model = FinetunedDecoder(backbone, start).to(cfg.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)

    def step(rows: np.ndarray) -> None:
        cells = model.cells(image_batch(images, rows, cfg.device))
        score = model.random_window_scores(cells, start.config.window, rng, rows)
        opt.zero_grad()
        score.square().mean().backward()
        opt.step()

    def sync() -> None:
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()

    step(np.arange(min(args.batch, args.images)))  # warm-up
    sync()
    began = time.perf_counter()
    for first in range(0, args.images, args.batch):
        step(np.arange(first, min(first + args.batch, args.images)))
    sync()
    train_s = (time.perf_counter() - began) / args.images
    began = time.perf_counter()
    predict(model.eval(), start, images, np.arange(args.images), cfg)
    eval_s = (time.perf_counter() - began) / args.images
    epoch_min = (640 * train_s + 160 * eval_s) / 60
    print(f"device {cfg.device}, torch threads {torch.get_num_threads()}, {args.images} LIVEC images, batches of {args.batch}")
    print(f"  training: {train_s:.3f} s per image ({1 / train_s:.1f} images/s)")
    print(f"  evaluation: {eval_s:.3f} s per image ({1 / eval_s:.1f} images/s)")
    print(f"  one LIVEC epoch (640 + 160 images): {epoch_min:.1f} min; 10 splits x {args.epochs} epochs: "
          f"{10 * args.epochs * epoch_min / 60:.1f} h")
    print(f"  peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB resident"
          + (f", {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB on the GPU" if cfg.device.startswith("cuda") else ""))


if __name__ == "__main__":
    main()
