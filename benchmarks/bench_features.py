"""Feature-extraction benchmark on LIVEC: prints figures, asserts nothing.

  cold extraction images/s (decode in a background thread + ONNX Runtime forward + stage statistics
  + token cells + atomic chunk writes), into a temporary cache
  raw forward images/s of the same exported graph on the same, already-decoded tensors (the limit),
  and the ratio of the two (goal >= 0.9)
  PyTorch's forward of the same graph (the reference engine) and the largest difference between the two
  warm-cache load time, cache size (pooled features + token maps), peak memory

Usage: python benchmarks/bench_features.py [--n 1000] [--raw-n 200] [--engine onnxruntime|torch]
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
from qfm_lib.features import FeatureSpec, extract_features, forward_engine, to_tensor
from qfm_lib.images import load_rgb


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images_per_s(engine, tensors: list[torch.Tensor]) -> float:
    engine(tensors[0])
    start = time.perf_counter()
    for x in tensors:
        engine(x)
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "torch"])
    parser.add_argument("--raw-n", type=int, default=200, help="images timed for the raw forward")
    args = parser.parse_args()
    table = load_dataset("livec", limit=args.n if args.n < 1000 else None)
    backbone = load_backbone(args.backbone)
    spec = FeatureSpec(backbone=args.backbone, engine=args.engine)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(table)} LIVEC images, "
          f"{args.backbone}, engine {args.engine}")

    with tempfile.TemporaryDirectory() as tmp:
        forward_engine(backbone, args.engine, Path(tmp))  # export the graph first: not extraction time
        start = time.perf_counter()
        extract_features(table, spec, backbone, progress=False, root=Path(tmp))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        feats = extract_features(table, spec, backbone, progress=False, root=Path(tmp))
        warm = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file() and f.suffix != ".onnx") / 2 ** 20
        tokens = feats.tokens.shape
        tensors = [to_tensor(load_rgb(p), backbone)[None] for p in table["path"][: args.raw_n]]
        engine = forward_engine(backbone, args.engine, Path(tmp))
        reference = forward_engine(backbone, "torch")
        raw = images_per_s(engine, tensors)
        raw_torch = images_per_s(reference, tensors)
        diff = max(float((a - b).abs().max()) for x in tensors[:20] for a, b in zip(engine(x), reference(x)))

    extraction = len(table) / cold
    print(f"cold extraction      : {cold:8.1f} s  ({extraction:.2f} images/s)")
    print(f"raw forward          : {raw:8.2f} images/s  ({args.engine}, batch 1, decoded tensors, {len(tensors)} images)")
    print(f"extraction / raw     : {extraction / raw:8.2f}  (goal >= 0.9)")
    print(f"PyTorch forward      : {raw_torch:8.2f} images/s  (reference engine, channels-last)")
    print(f"max |{args.engine} - torch|: {diff:.2e}  (graph outputs: stage statistics and stage maps, 20 images)")
    print(f"warm cache load      : {warm:8.3f} s")
    print(f"cache size           : {size:8.0f} MiB  (token maps {tokens[0]} cells x {tokens[1]} channels, fp16)")
    print(f"peak resident memory : {peak_rss_mib():8.0f} MiB")


if __name__ == "__main__":
    main()
