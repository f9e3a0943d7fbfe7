import json

import pytest
import torch

from skinnet.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint
from skinnet.model import count_parameters, create_model

TINY = dict(backbone="tf_efficientnet_lite0", cross_attention_stages=(-1,))


def card_for(model):
    return ModelCard(name="x", model=model.config.to_dict(), image_size=64,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), loss_weights={"dermoscopy": 1.0})


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model(**TINY).eval()
    for module in model.cross_attention.values():
        module.gate.data.fill_(0.3)
    x, y = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    path = save_checkpoint(model, card_for(model), tmp_path / "full", "float32")
    loaded, card = load_checkpoint(path)
    with torch.no_grad():
        for head, value in model(x, y).items():
            assert torch.equal(loaded(x, y)[head], value), head
    assert card.params == count_parameters(model) and card.name == "full"
    # fp16 (the shipped format): close to the original, and stable across a second round trip
    half = save_checkpoint(model, card_for(model), tmp_path / "half")
    first, _ = load_checkpoint(half)
    again, _ = load_checkpoint(save_checkpoint(first, card_for(first), tmp_path / "again"))
    with torch.no_grad():
        torch.testing.assert_close(first(x, y)["fused"], model(x, y)["fused"], atol=2e-2, rtol=2e-2)
        assert torch.equal(first(x, y)["fused"], again(x, y)["fused"])
    assert half.stat().st_size < 0.6 * path.stat().st_size


def test_int8_weights_halve_the_file_and_keep_the_outputs(tmp_path):
    """int8 storage (per-channel scales): about half a float16 file, outputs within rounding,
    and the format survives a re-save (as evaluate --calibrate does)."""
    torch.manual_seed(0)
    model = create_model(**TINY).eval()
    for module in model.cross_attention.values():
        module.gate.data.fill_(0.3)
    x, y = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    half = save_checkpoint(model, card_for(model), tmp_path / "half")
    small = save_checkpoint(model, card_for(model), tmp_path / "small", "int8")
    assert small.stat().st_size < 0.6 * half.stat().st_size
    loaded, card = load_checkpoint(small)
    assert card.weights == "int8"
    for key, value in model.state_dict().items():
        if value.is_floating_point() and value.ndim >= 2 and value.numel() >= 1024:
            step = value.reshape(value.shape[0], -1).abs().amax(1) / 127
            error = (loaded.state_dict()[key] - value).reshape(value.shape[0], -1).abs().amax(1)
            assert (error <= step * 0.51 + 1e-3 * step.max()).all(), key
    with torch.no_grad():
        reference, got = model(x, y)["fused"], loaded(x, y)["fused"]
        assert (got - reference).abs().max() < 0.05 * reference.abs().max()
    resaved = save_checkpoint(loaded, card, tmp_path / "resaved")
    assert load_checkpoint(resaved)[1].weights == "int8"
    assert abs(resaved.stat().st_size - small.stat().st_size) < 1024
    card = card_for(model)
    card.int8_min_elements = 10 ** 9  # nothing that large: a float16 file with int8 in its card
    assert save_checkpoint(model, card, tmp_path / "none", "int8").stat().st_size == pytest.approx(
        half.stat().st_size, rel=0.01)
    with pytest.raises(ValueError, match="weights format"):
        save_checkpoint(model, card_for(model), tmp_path / "bad", "int4")


def test_mismatching_card_is_refused(tmp_path):
    model = create_model(**TINY)
    path = save_checkpoint(model, card_for(model), tmp_path / "m")
    card_file = path.with_suffix(".json")
    data = json.loads(card_file.read_text())

    data["labels"][0]["classes"] = ["BCC", "NEV", "MEL"]
    card_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another label schema"):
        load_checkpoint(path)

    data = json.loads(json.dumps(data))
    data["labels"] = read_card.__globals__["schema"]()
    data["model"]["backbone"] = "resnet18"
    card_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"disagrees with its weights file on \['model'\]"):
        load_checkpoint(path)

    card_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(path)
    card_file.unlink()
    with pytest.raises(FileNotFoundError, match="model card"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="weights"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_weights_file_is_not_a_pickle(tmp_path):
    model = create_model(**TINY)
    path = save_checkpoint(model, card_for(model), tmp_path / "m")
    header = path.read_bytes()[:16]
    assert not header.startswith(b"\x80") and b"PK" not in header[:4]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(image_size=96), r"disagrees with its weights file on \['image_size'\]"),
    (lambda d: d.update(mean=[0.485, 0.456, 0.406]), r"on \['mean'\]"),
    (lambda d: d.update(calibration={"fused": {"DIAG": {"temperature": 2.0, "bias": [0, 0, 0, 0, 0]}}}),
     r"on \['calibration'\]"),
    # the calibration was fitted on logits predicted with (or without) the flips
    (lambda d: d["inference"].update(tta=not d["inference"]["tta"]), r"on \['tta'\]"),
    (lambda d: d.update(calibration={"fused": {"DIAG": {"temperature": 0, "bias": []}}}), "temperature must be within"),
    (lambda d: d.update(calibration={"fused": {"DIAG": {"temperature": 1, "bias": [0.1, 0.2]}}}),
     "DIAG bias must be 5 numbers"),
    (lambda d: d.update(std=[0.5, 0.0, 0.5]), "std above 0"),
    (lambda d: d.update(image_size=10**6), "image_size must be"),
])
def test_a_card_that_disagrees_with_its_weights_or_cannot_run_is_refused(tmp_path, edit, message):
    """A card edited by hand (or copied from another checkpoint) would predict differently, silently."""
    model = create_model(**TINY)
    path = save_checkpoint(model, card_for(model), tmp_path / "m")
    data = json.loads(path.with_suffix(".json").read_text())
    edit(data)
    path.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_truncated_weights_give_a_sentence_not_a_traceback(tmp_path):
    model = create_model(**TINY)
    path = save_checkpoint(model, card_for(model), tmp_path / "m")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_checkpoint(path)


def _rewrite_weights(path, card_data=None, bind=True):
    """Write the weights file again as someone placing a checkpoint would: the same tensors,
    bound to ``card_data`` (the card as JSON), or bound to nothing."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from skinnet.checkpoint import CONTRACT_KEY, ModelCard, inference_contract

    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    metadata = {"format": "pt"}
    if bind:
        metadata[CONTRACT_KEY] = json.dumps(inference_contract(ModelCard.from_dict(card_data)), sort_keys=True)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("attack, message", [
    ("weights bound to no card, any card beside them", "says nothing about the card it belongs to"),
    ("a card nested 100,000 levels deep", "not valid JSON"),
    ("a card whose model loads a file through timm (checkpoint_path)", "backbone_kwargs"),
    ("a card whose training field is a list", "training must be"),
])
def test_a_placed_checkpoint_is_refused_with_one_sentence(tmp_path, attack, message):
    """Checkpoints made by someone who can place files (issue 27): each is refused with one
    sentence, never loaded and never a traceback."""
    model = create_model(**TINY)
    path = save_checkpoint(model, card_for(model), tmp_path / "m")
    card_file = path.with_suffix(".json")
    data = json.loads(card_file.read_text())
    if attack.startswith("weights bound to no card"):
        _rewrite_weights(path, bind=False)
        card_file.write_text(json.dumps({**data, "image_size": 96}))
    elif attack.startswith("a card nested"):
        card_file.write_text('{"name": "m", "training": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif attack.startswith("a card whose model loads"):
        data["model"]["backbone_kwargs"] = {"checkpoint_path": str(tmp_path / "elsewhere.pth")}
        card_file.write_text(json.dumps(data))
        _rewrite_weights(path, data)  # bound to the edited card: the attacker writes both files
    else:
        data["training"] = ["tta"]
        card_file.write_text(json.dumps(data))
        _rewrite_weights(path, {**data, "training": {}})
    try:
        load_checkpoint(path)
    except ValueError as err:
        said = str(err)
    else:
        pytest.fail(f"{attack}: loaded")
    assert message in said and "\n" not in said and "Traceback" not in said, said
