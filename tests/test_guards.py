"""Guards: the lesion check, the swap detector and the uncertain badge (skinnet.guards)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import guarded_checkpoint, tiny_checkpoint
from synthetic import clinical_like_image, dermoscopy_like_image, lesion_image

from skinnet.guards import Guards, uncertain_margin_from, weights_fingerprint
from skinnet.model import create_model
from skinnet.predict import Predictor

from non_lesion import generated_images  # benchmarks/, on the path by conftest

NOT_LESIONS = ("noise-uniform", "flat-white", "flat-grey", "document-1", "interface-1", "chart-line", "shapes-1")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A tiny checkpoint with guards fitted on synthetic lesions, loaded."""
    return Predictor.from_checkpoint(guarded_checkpoint(tmp_path_factory.mktemp("guarded")))


def test_lesion_check_passes_new_lesions_and_flags_pictures_that_are_not(guarded):
    rng = np.random.default_rng(11)
    for _ in range(5):
        checks = guarded.predict(clinical_like_image(rng), dermoscopy_like_image(rng)).checks
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


def test_uncertain_margin_is_where_low_margin_cases_stop_being_right_half_the_time():
    margins = torch.tensor([0.01, 0.02, 0.05, 0.10, 0.20, 0.30, 0.50, 0.80])
    correct = torch.tensor([0, 1, 0, 0, 1, 1, 1, 1]).bool()
    # running accuracy from the lowest margin: 0, .5, .33, .25, .4, .5, .57, .625 -> last below .5 at 0.20
    assert uncertain_margin_from(margins, correct) == pytest.approx(0.30)
    assert uncertain_margin_from(margins, torch.ones(8).bool()) == 0.0


def test_uncertain_badge_and_melanoma_bar(guarded):
    """Close top-2 diagnoses give the badge; P(melanoma) is always on screen with its own bar."""
    from dataclasses import replace

    from skinnet.ui.views import summary_markdown

    rng = np.random.default_rng(13)
    prediction = guarded.predict(clinical_like_image(rng), dermoscopy_like_image(rng))
    features = {m: torch.zeros_like(guarded.guards.means[m]) for m in ("clinical", "dermoscopy")}
    close = {"BCC": 0.40, "NEV": 0.35, "MEL": 0.15, "MISC": 0.05, "SK": 0.05}
    clear = {"BCC": 0.05, "NEV": 0.80, "MEL": 0.10, "MISC": 0.03, "SK": 0.02}
    guards = replace(guarded.guards, uncertain_margin={"fused": 0.10, "dermoscopy": 0.30},
                     uncertain_accuracy={"fused": 0.41, "dermoscopy": 0.45})
    assert guards.check(features, close).uncertain and guards.check(features, close).margin == pytest.approx(0.05)
    assert not guards.check(features, clear).uncertain
    # each head has its own limit: the dermoscopy head alone is less sure at the same margin
    middling = {"BCC": 0.05, "NEV": 0.55, "MEL": 0.30, "MISC": 0.05, "SK": 0.05}
    assert not guards.check(features, middling).uncertain
    assert guards.check(features, middling, "dermoscopy").uncertain
    closeness = guards.check(features, close)
    uncertain = replace(prediction, checks=replace(prediction.checks, uncertain=closeness.uncertain,
                                                   margin=closeness.margin, margin_limit=closeness.margin_limit,
                                                   accuracy_below=closeness.accuracy_below))
    text = summary_markdown(uncertain, "v")
    assert "Uncertain: refer or get a second opinion" in text and "0.05 apart" in text
    assert "less than 0.10 apart, it was right on 41% of them" in text
    sure = replace(prediction, checks=replace(prediction.checks, uncertain=False))
    assert "Uncertain" not in summary_markdown(sure, "v")
    probs = prediction.heads["fused"].probabilities["DIAG"]
    top = max(probs, key=probs.get)
    assert f"{probs['MEL']:.2f}` melanoma" in text or top == "MEL"


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
    prediction with the warning kept; a swapped pair is called swapped."""
    from app_helpers import free_port
    from gradio_client import Client, handle_file

    from skinnet.ui import AppSettings, build_app, launch

    document = tmp_path / "document.png"
    dict(generated_images())["document-1"].save(document)
    rng = np.random.default_rng(14)
    clinical, derm = tmp_path / "clinical.png", tmp_path / "derm.png"
    clinical_like_image(rng).save(clinical)
    dermoscopy_like_image(rng).save(derm)
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
        summary, _, _ = client.predict(handle_file(str(derm)), handle_file(str(clinical)), api_name="/predict")
        assert "These images look swapped" in summary and "Fused head" in summary
        summary, _, _ = client.predict(handle_file(str(clinical)), handle_file(str(derm)), api_name="/predict")
        assert "swapped" not in summary and "does not look like" not in summary
    finally:
        app.close()


@pytest.mark.parametrize("setting, value", [("ood_threshold", 1e30), ("ood_threshold", float("nan")),
                                            ("ood_threshold", -1.0), ("uncertain_margin", {"fused": float("inf")}),
                                            ("residual_scale", {"clinical": 0.0, "dermoscopy": 1.0})])
def test_guards_with_settings_that_switch_them_off_are_refused(guarded, tmp_path, setting, value):
    """Guards files placed beside a checkpoint with a threshold that flags nothing (1e30), NaN
    (every comparison false: nothing flagged) or another setting out of range are refused with
    one sentence, not loaded silently."""
    import dataclasses

    placed = dataclasses.replace(guarded.guards, **{setting: value})
    path = placed.save(tmp_path / "g.guards.safetensors")
    with pytest.raises(ValueError, match=setting) as refused:
        Guards.load(path, guarded.model)
    assert "\n" not in str(refused.value)
