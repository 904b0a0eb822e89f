"""Feature-extraction benchmark on LIVEC: prints figures, asserts nothing.

  extraction images/s (cold cache, decode + forward + stage statistics + atomic chunk writes)
  raw forward images/s of the same model on the same, already-decoded tensors (the limit)
  their ratio (goal >= 0.9), warm-cache load time, cache size (pooled features + token maps), peak memory

Usage: python benchmarks/bench_features.py [--n 1000] [--backbone tf_efficientnet_lite0]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from qfm_lib.backbones import load_backbone
from qfm_lib.data import load_dataset
from qfm_lib.features import FeatureSpec, extract_features, to_tensor
from qfm_lib.images import load_rgb


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--raw-n", type=int, default=200, help="images timed for the raw forward")
    args = parser.parse_args()
    table = load_dataset("livec", limit=args.n if args.n < 1000 else None)
    backbone = load_backbone(args.backbone)
    spec = FeatureSpec(backbone=args.backbone)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(table)} LIVEC images, {args.backbone}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_features(table, spec, backbone, progress=False, root=Path(tmp))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        feats = extract_features(table, spec, backbone, progress=False, root=Path(tmp))
        warm = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2 ** 20
        tokens = feats.tokens.shape

    tensors = [to_tensor(load_rgb(p), backbone)[None] for p in table["path"][: args.raw_n]]
    with torch.inference_mode():
        backbone.model.forward_features(tensors[0])
        start = time.perf_counter()
        for x in tensors:
            backbone.model.forward_features(x)
        raw = len(tensors) / (time.perf_counter() - start)

    extraction = len(table) / cold
    print(f"cold extraction      : {cold:8.1f} s  ({extraction:.2f} images/s)")
    print(f"raw forward          : {raw:8.2f} images/s  (batch 1, native 500x500, {len(tensors)} images)")
    print(f"extraction / raw     : {extraction / raw:8.2f}  (goal >= 0.9)")
    print(f"warm cache load      : {warm:8.3f} s")
    print(f"cache size           : {size:8.0f} MiB  (token maps {tokens[0]} cells x {tokens[1]} channels, fp16)")
    print(f"peak resident memory : {peak_rss_mib():8.0f} MiB")


if __name__ == "__main__":
    main()
