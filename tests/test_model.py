import pytest
import timm
import torch

from skinnet.backbones import StagedBackbone
from skinnet.labels import NUM_OUTPUTS
from skinnet.model import count_parameters, create_model

# Small randomly initialised variants of each supported family, with an input size they take.
BACKBONES = {
    "tf_efficientnet_lite0": ({}, 64),
    "resnet18": ({}, 64),
    "swin_tiny_patch4_window7_224": (
        {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "img_size": 64,
         "window_size": 2}, 64),
}


def build(backbone, **kw):
    kwargs, size = BACKBONES[backbone]
    torch.manual_seed(0)
    return create_model(backbone=backbone, backbone_kwargs=kwargs, **kw), size


@pytest.mark.parametrize("backbone", BACKBONES)
def test_stages_reproduce_forward_features(backbone):
    kwargs, size = BACKBONES[backbone]
    model = timm.create_model(backbone, pretrained=False, **kwargs).eval()
    staged = StagedBackbone(model).eval()
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(staged(x), model.forward_features(x))
    assert staged.channels_last == backbone.startswith("swin")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("stages", [(), (-2, -1)])
def test_forward_shapes(backbone, shared, stages):
    model, size = build(backbone, shared=shared, cross_attention_stages=stages)
    model.eval()
    clinical, derm = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    out = model(clinical, derm)
    assert set(out) == {"clinical", "dermoscopy", "fused"}
    assert all(v.shape == (2, NUM_OUTPUTS) for v in out.values())
    only_derm = model(dermoscopy=derm)
    assert set(only_derm) == {"dermoscopy"} and only_derm["dermoscopy"].shape == (2, NUM_OUTPUTS)
    assert set(model(clinical=clinical)) == {"clinical"}
    encoding = model.encode_pair(clinical, derm, return_attention=True)
    assert set(encoding.attention) == set(model.attention_stages)
    for stage, directions in encoding.attention.items():
        h, w = encoding.grids[stage]
        reduction = model.encoder.info[stage].reduction
        assert (h, w) == (size // reduction, size // reduction)
        for name in ("clinical->dermoscopy", "dermoscopy->clinical"):
            weights = directions[name]
            assert weights.shape == (2, h * w, h * w)
            torch.testing.assert_close(weights.sum(-1), torch.ones(2, h * w))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_both_modalities_through_shared_encoder(backbone):
    model, size = build(backbone, shared=True, cross_attention_stages=(-1,))
    model.cross_attention[str(model.attention_stages[0])].gate.data.fill_(0.5)
    clinical = torch.randn(2, 3, size, size, requires_grad=True)
    derm = torch.randn(2, 3, size, size, requires_grad=True)
    out = model(clinical, derm)
    out["clinical"].sum().backward(retain_graph=True)
    # the clinical head depends on the dermoscopy image only through cross-attention
    assert clinical.grad.abs().sum() > 0 and derm.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad and p.dim() > 1)


def test_bn_modes_agree_in_eval_and_differ_in_train():
    joint, size = build("tf_efficientnet_lite0", bn_mode="joint")
    separate, _ = build("tf_efficientnet_lite0", bn_mode="separate")
    separate.load_state_dict(joint.state_dict())
    x, y = torch.randn(3, 3, size, size), torch.randn(3, 3, size, size) * 2 + 1
    joint.eval(), separate.eval()
    torch.testing.assert_close(joint(x, y)["fused"], separate(x, y)["fused"])
    joint.train(), separate.train()
    assert not torch.allclose(joint(x, y)["fused"], separate(x, y)["fused"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_encode_one_with_partner_keys_equals_pair_branch(backbone):
    model, size = build(backbone, cross_attention_stages=(-2, -1))
    for module in model.cross_attention.values():
        module.gate.data.fill_(0.7)
    model.eval()
    clinical, derm = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    encoding = model.encode_pair(clinical, derm, keep_keys=True)
    for modality, image, partner in (("dermoscopy", derm, "clinical"), ("clinical", clinical, "dermoscopy")):
        keys = {s: k[partner] for s, k in encoding.keys.items()}
        torch.testing.assert_close(model.encode_one(image, modality, keys), encoding.pooled[modality])


def test_single_shared_has_at_most_0_6_of_two_encoder_parameters():
    shared = create_model(shared=True, cross_attention_stages=(-2, -1))
    two = create_model(shared=False, cross_attention_stages=())
    assert count_parameters(shared) <= 0.6 * count_parameters(two)


def test_factory_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown model options.*'depth'.*known"):
        create_model(depth=3)
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model(backbone="efficientnet_lite99")
    with pytest.raises(ValueError, match="not distinct stages"):
        create_model(cross_attention_stages=(9,))
    with pytest.raises(ValueError, match="bn_mode"):
        create_model(bn_mode="weird")
    # None keeps the default (command-line style)
    assert create_model(backbone=None, attention_heads=None).config.backbone == "tf_efficientnet_lite0"
