import pytest
import timm
import torch
from PIL import Image

from skinnet.backbones import create_backbone, load_offline_imagenet, offline_weights_path
from skinnet.transforms import eval_transform


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_offline_weights_equal_package_tensors(name):
    package = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
    model = timm.create_model(name, pretrained=False)
    load_offline_imagenet(model, name)
    loaded = model.state_dict()
    assert len(loaded) == len(package)
    for (key, value), source in zip(loaded.items(), package.values()):
        assert torch.equal(value, source), key


def test_cat_photo_is_an_egyptian_cat():
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_offline_imagenet(model, "tf_efficientnet_lite0")
    model.eval()
    image = Image.fromarray(skimage_data.chelsea())
    x = eval_transform(224, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])(image)[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert int(probs.argmax()) == 285  # ImageNet "Egyptian cat"
    assert float(probs[281:286].sum()) > 0.6  # the domestic cat classes together


def test_offline_request_for_model_without_package():
    with pytest.raises(ValueError, match="no offline ImageNet weights.*tf_efficientnet_lite0"):
        create_backbone("resnet18", pretrained="offline")


def test_carried_float16_copy_is_used_when_the_folder_is_set(tmp_path, monkeypatch):
    """The accelerator machine cannot install the weight packages: a float16 copy in
    $SKINNET_IMAGENET_DIR (what training/device.sh packs) is loaded instead, and still sees the cat."""
    skimage_data = pytest.importorskip("skimage.data")
    name = "tf_efficientnet_lite0"
    package = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
    torch.save({k: v.half() for k, v in package.items()}, tmp_path / f"{name}.pth")
    monkeypatch.setenv("SKINNET_IMAGENET_DIR", str(tmp_path))
    assert offline_weights_path(name) == tmp_path / f"{name}.pth"
    model = timm.create_model(name, pretrained=False)
    load_offline_imagenet(model, name)
    # the float16 copy was loaded, not the package: every weight is its float16 value, in float32
    for value, source in zip(model.state_dict().values(), package.values()):
        if source.is_floating_point():
            assert value.dtype == torch.float32 and torch.equal(value, source.half().float())
    image = Image.fromarray(skimage_data.chelsea())
    x = eval_transform(224, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])(image)[None]
    with torch.no_grad():
        assert int(model.eval()(x).argmax()) == 285
    with pytest.raises(FileNotFoundError, match="holds no tf_efficientnet_lite2.pth"):
        offline_weights_path("tf_efficientnet_lite2")
