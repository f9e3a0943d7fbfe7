"""Guards: the lesion check, the swap detector and the uncertain badge (skinnet.guards)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import guarded_checkpoint, tiny_checkpoint
from skinnet_testkit.synthetic import clinical_like_image, dermoscopy_like_image, lesion_image

from skinnet.guards import CONFIDENT, LOW_CONFIDENCE, UNCERTAIN, Guards, confidence_levels, weights_fingerprint
from skinnet.model import create_model
from skinnet.predict import Predictor

from skinnet_testkit.non_lesion import generated_images

NOT_LESIONS = ("noise-uniform", "flat-white", "flat-grey", "document-1", "interface-1", "chart-line", "shapes-1")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A tiny checkpoint with guards fitted on synthetic lesions, loaded."""
    return Predictor.from_checkpoint(guarded_checkpoint(tmp_path_factory.mktemp("guarded")))


def as_jpeg(image):
    """The image as the synthetic release stores its images (JPEG, quality 90): the per-block
    check sees compression in the early stages' texture statistics."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_lesion_check_passes_new_lesions_and_flags_pictures_that_are_not(guarded):
    rng = np.random.default_rng(11)
    for _ in range(5):
        checks = guarded.predict(as_jpeg(clinical_like_image(rng)), as_jpeg(dermoscopy_like_image(rng))).checks
        assert checks.not_lesion == () and checks.trustworthy, checks.distance
    pictures = dict(generated_images())
    for name in NOT_LESIONS:
        checks = guarded.predict(pictures[name], pictures[name]).checks
        assert set(checks.not_lesion) == {"clinical", "dermoscopy"}, (name, checks.distance)
        one = guarded.predict(pictures[name], dermoscopy_like_image(rng)).checks
        assert one.not_lesion == ("clinical",), (name, one.distance)


def test_swapped_images_are_detected(guarded):
    rng = np.random.default_rng(12)
    for _ in range(5):
        clinical, derm = clinical_like_image(rng), dermoscopy_like_image(rng)
        right = guarded.predict(clinical, derm).checks
        assert not right.swapped and right.wrong_slot == (), right.p_dermoscopy
        swapped = guarded.predict(derm, clinical).checks
        assert swapped.swapped and swapped.p_dermoscopy["clinical"] > 0.5 > swapped.p_dermoscopy["dermoscopy"]
        alone = guarded.predict(derm, None).checks  # one image, in the wrong slot
        assert alone.wrong_slot == ("clinical",) and not alone.swapped


def test_guards_of_other_weights_are_refused(guarded, tmp_path):
    path = guarded.guards.save(tmp_path / "g.guards.safetensors")
    assert Guards.load(path, guarded.model).fingerprint == weights_fingerprint(guarded.model)
    torch.manual_seed(1)
    other = create_model(cross_attention_stages=(-2, -1), attention_dim=32)
    with pytest.raises(ValueError, match="other weights"):
        Guards.load(path, other)
    (tmp_path / "junk.guards.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable guards file"):
        Guards.load(tmp_path / "junk.guards.safetensors")


def test_a_checkpoint_without_guards_predicts_without_checks(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path))
    rng = np.random.default_rng(0)
    assert predictor.guards is None and predictor.predict(lesion_image(rng), None).checks is None


def test_confidence_levels_split_unseen_cases_by_margin_and_keep_each_levels_accuracy():
    margins = torch.linspace(0.01, 0.99, 40)
    correct = margins > 0.25  # the least sure are wrong, the surest right
    uncertain, low, levels = confidence_levels(margins, correct, shares=(0.2, 0.5))
    assert (margins < uncertain).sum() == 8 and (margins < low).sum() == 20
    assert levels[UNCERTAIN] == {"share": pytest.approx(0.2), "cases": 40, "accuracy": 0.0}
    assert levels[LOW_CONFIDENCE]["share"] == pytest.approx(0.3) and levels[CONFIDENT]["accuracy"] == 1.0
    assert 0 < levels[LOW_CONFIDENCE]["accuracy"] < 1


def test_the_answer_says_its_level_and_what_that_level_meant_on_unseen_cases(guarded, tmp_path):
    """Three levels by the top-2 margin, each head its own limits; the summary names the level
    with its out-of-fold accuracy; P(melanoma) keeps its own bar; the levels survive a save."""
    from dataclasses import replace

    from skinnet.ui.views import summary_markdown

    rng = np.random.default_rng(13)
    prediction = guarded.predict(clinical_like_image(rng), dermoscopy_like_image(rng))
    features = {m: torch.zeros(guarded.guards.feature_size) for m in ("clinical", "dermoscopy")}
    close = {"BCC": 0.40, "NEV": 0.35, "MEL": 0.15, "MISC": 0.05, "SK": 0.05}
    middling = {"BCC": 0.05, "NEV": 0.55, "MEL": 0.30, "MISC": 0.05, "SK": 0.05}
    clear = {"BCC": 0.05, "NEV": 0.80, "MEL": 0.10, "MISC": 0.03, "SK": 0.02}
    meaning = {UNCERTAIN: {"share": 0.18, "cases": 124, "accuracy": 0.41},
               LOW_CONFIDENCE: {"share": 0.22, "cases": 124, "accuracy": 0.63},
               CONFIDENT: {"share": 0.60, "cases": 124, "accuracy": 0.9}}
    guards = replace(guarded.guards, uncertain_margin={"fused": 0.10, "dermoscopy": 0.30},
                     low_confidence_margin={"fused": 0.30, "dermoscopy": 0.50},
                     levels={"fused": meaning, "dermoscopy": meaning})
    assert [guards.check(features, p).level for p in (close, middling, clear)] == [UNCERTAIN, LOW_CONFIDENCE,
                                                                                    CONFIDENT]
    # each head has its own limits: the dermoscopy head alone is less sure at the same margin
    assert guards.check(features, middling, "dermoscopy").level == UNCERTAIN
    assert guards.check(features, close).margin == pytest.approx(0.05)
    texts = {}
    for name, probs in (("uncertain", close), ("low", middling), ("confident", clear)):
        levelled = replace(guards.check(features, probs), not_lesion=(), wrong_slot=(), swapped=False)
        texts[name] = summary_markdown(replace(prediction, checks=levelled), "v")
    assert "**Uncertain.** The two most likely diagnoses are 0.05 apart; this level is a gap under 0.10." \
        in texts["uncertain"] and "refer" not in texts["uncertain"]  # a research tool gives no clinical advice
    assert ("Of 124 cases it had not trained on, the least sure 18% were at this level; of those, its diagnosis was "
            "right on 41%.") in texts["uncertain"]
    assert "Low confidence" in texts["low"] and "0.25 apart; this level is a gap from 0.10 to 0.30" in texts["low"]
    assert "the next 22% were at this level; of those, its diagnosis was right on 63%" in texts["low"]
    assert "Confident" in texts["confident"] and "the surest 60% were at this level" in texts["confident"]
    assert "Uncertain" not in texts["confident"] and "Low confidence" not in texts["confident"]
    # melanoma's own bar is shown whenever it is not the most likely class (NEV on top here, MEL at 0.31)
    fused = prediction.heads["fused"]
    nev_on_top = replace(fused, probabilities={**fused.probabilities,
                                               "DIAG": {"BCC": 0.02, "NEV": 0.6, "MEL": 0.31, "MISC": 0.04, "SK": 0.03}})
    levelled = replace(guards.check(features, close), not_lesion=(), wrong_slot=(), swapped=False)
    text = summary_markdown(replace(prediction, heads={**prediction.heads, "fused": nev_on_top}, checks=levelled), "v")
    assert "NEV (nevus), p = 0.60" in text and "0.31` melanoma" in text
    saved = Guards.load(guards.save(tmp_path / "levels.guards.safetensors"))
    assert saved.low_confidence_margin == guards.low_confidence_margin and saved.levels == guards.levels


def test_gaussian_equals_scikit_learn_ledoit_wolf():
    """The SVD shortcut gives sklearn's LedoitWolf covariance: same mean, eigenvalues, directions."""
    from sklearn.covariance import LedoitWolf

    from skinnet.guards import fit_gaussian

    torch.manual_seed(0)
    x = torch.randn(300, 50) @ torch.randn(50, 50) + 3
    mean, basis, scale, residual_scale = fit_gaussian(x, 10)
    reference = LedoitWolf().fit(x.double().numpy())
    values, vectors = torch.linalg.eigh(torch.from_numpy(reference.covariance_))
    values, vectors = values.flip(0), vectors.flip(1)
    assert torch.allclose(mean.double(), torch.from_numpy(reference.location_), atol=1e-5)
    assert torch.allclose(scale.double(), values[:10].rsqrt(), rtol=1e-4)
    assert residual_scale == pytest.approx(float(values[10:].mean()) ** -0.5, rel=1e-4)
    assert torch.allclose((basis.double().T @ vectors[:, :10]).abs().diagonal(), torch.ones(10, dtype=torch.double),
                          atol=1e-4)


def test_the_app_hides_a_prediction_for_a_picture_that_is_not_a_lesion(guarded, tmp_path):
    """Over HTTP: a document photo gets the warning and empty tables; 'show anyway' gets the
    prediction with the warning kept; a swapped pair is called swapped, its prediction hidden
    until confirmed."""
    from app_helpers import free_port
    from gradio_client import Client, handle_file

    from skinnet.ui import AppSettings, build_app, launch

    document = tmp_path / "document.png"
    dict(generated_images())["document-1"].save(document)
    rng = np.random.default_rng(14)
    clinical, derm = tmp_path / "clinical.jpg", tmp_path / "derm.jpg"  # JPEGs, as the guards were fitted on
    clinical_like_image(rng).save(clinical, quality=90)
    dermoscopy_like_image(rng).save(derm, quality=90)
    settings = AppSettings(checkpoint=Path(guarded.card.name), port=free_port(), log_dir=tmp_path / "log")
    app = build_app(guarded, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
        summary, diagnosis, criteria = client.predict(handle_file(str(document)), handle_file(str(derm)),
                                                      api_name="/predict")
        assert "No prediction shown" in summary and "clinical photo does not look like a skin lesion" in summary
        assert diagnosis["data"] == [] and criteria["data"] == []
        summary, diagnosis, _ = client.predict(handle_file(str(document)), handle_file(str(derm)), True,
                                               api_name="/predict")
        assert "Fused head" in summary and "does not look like a skin lesion" in summary
        assert len(diagnosis["data"]) == 5
        # a swapped pair: the swap message first, no diagnosis of the pair as given until the caller confirms it
        summary, diagnosis, _ = client.predict(handle_file(str(derm)), handle_file(str(clinical)), api_name="/predict")
        assert "These images look swapped" in summary and "Fused head" not in summary and diagnosis["data"] == []
        summary, diagnosis, _ = client.predict(handle_file(str(derm)), handle_file(str(clinical)), True,
                                               api_name="/predict")
        assert "These images look swapped" in summary and "Fused head" in summary and len(diagnosis["data"]) == 5
        summary, _, _ = client.predict(handle_file(str(clinical)), handle_file(str(derm)), api_name="/predict")
        assert "swapped" not in summary and "does not look like" not in summary
    finally:
        app.close()


@pytest.mark.parametrize("setting, value", [("ood_threshold", 1e30), ("ood_threshold", float("nan")),
                                            ("ood_threshold", -1.0), ("uncertain_margin", {"fused": float("inf")}),
                                            ("low_confidence_margin", {"fused": 1.5}),
                                            ("blocks", {"clinical": 0.0, "dermoscopy": 1.0})])
def test_guards_with_settings_that_switch_them_off_are_refused(guarded, tmp_path, setting, value):
    """Guards files placed beside a checkpoint with a threshold that flags nothing (1e30), NaN
    (every comparison false: nothing flagged) or another setting out of range are refused with
    one sentence, not loaded silently."""
    import dataclasses

    if setting == "blocks":  # a block whose other directions count for nothing
        first, *rest = guarded.guards.blocks
        value = [dataclasses.replace(first, residual_scale=value), *rest]
    placed = dataclasses.replace(guarded.guards, **{setting: value})
    path = placed.save(tmp_path / "g.guards.safetensors")
    with pytest.raises(ValueError, match=setting) as refused:
        Guards.load(path, guarded.model)
    assert "\n" not in str(refused.value)
