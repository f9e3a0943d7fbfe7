"""The app: handlers called directly, Grad-CAM correctness, and the launched app via gradio_client."""
import re
import shutil
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_helpers import free_port, jpeg_with_gps, tiny_checkpoint, write_examples, write_pair
from skinnet.explain import HeadOnLastStage, LogitTarget, explain, gradcam_map
from skinnet.imaging import ImageError
from skinnet.model import MODALITIES
from skinnet.predict import Predictor
from skinnet.checkpoint import load_checkpoint, save_checkpoint
from skinnet.ui import AppSettings, build_app, launch
from skinnet.ui.handlers import explain_handler, predict_handler
from skinnet.ui.views import model_markdown


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor.from_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")))


@pytest.fixture()
def pair(tmp_path):
    return write_pair(tmp_path)


def test_predict_handler_both_and_one_image(predictor, pair):
    clinical, derm = map(str, pair)
    summary, diagnosis, criteria = predict_handler(predictor, clinical, derm)
    assert "Fused head" in summary and "clinical + dermoscopy" in summary and "Seven-point" in summary
    assert list(diagnosis.columns) == ["class", "clinical", "dermoscopy", "fused"] and len(diagnosis) == 5
    probabilities = diagnosis["fused"].astype(float)
    assert abs(probabilities.sum() - 1) < 0.03
    assert len(criteria) == 8 and criteria.iloc[-1]["criterion"].startswith("7-point score")
    summary, diagnosis, _ = predict_handler(predictor, None, derm)
    assert "Dermoscopy head" in summary and "Only the dermoscopy image" in summary
    assert (diagnosis["fused"] == "-").all() and (diagnosis["clinical"] == "-").all()


def test_calibration_is_applied(predictor, pair):
    """The card's DIAG temperature and class biases reach the app's probabilities; PN has none."""
    clinical = Image.open(pair[0]).convert("RGB")
    raw = predictor.logits(clinical, None)["clinical"]
    diag = predictor.card.calibration["clinical"]["DIAG"]
    expected = torch.softmax(raw[:5] / diag["temperature"] + torch.tensor(diag["bias"]), -1)
    got = predictor.predict(clinical, None).heads["clinical"].probabilities
    assert list(got["DIAG"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert list(got["PN"].values()) == pytest.approx(torch.softmax(raw[5:8], -1).tolist(), abs=1e-6)


def test_model_card_says_how_the_weights_are_stored(predictor, tmp_path):
    text = model_markdown(predictor)
    assert "Model `tiny@" in text and "weights stored as float16" in text and "int8" not in text
    # in words, not a Python dict or list
    weights = dict(predictor.card.loss_weights)
    assert "- Loss weights: " + ", ".join(f"{h} {w:g}" for h, w in weights.items()) in text and "{" not in text
    assert "[" not in text.split("cross-attention", 1)[1].split(";")[0]
    model, card = load_checkpoint(tiny_checkpoint(tmp_path))
    card.int8_min_elements = 100_000
    int8 = Predictor.from_checkpoint(save_checkpoint(model, card, tmp_path / "tiny_int8", "int8"))
    assert "float16, and int8 with a scale per output channel for the weight tensors of at least 100,000 values" \
        in model_markdown(int8)


def test_model_card_of_a_refit_says_valid_was_trained_on(predictor, tmp_path):
    model, card = load_checkpoint(tiny_checkpoint(tmp_path))
    card.training = {**card.training, "data": {"dataset": "Derm7pt release_v0", "split": "train+valid"}}
    card.calibration = {}
    card.metrics = {"valid": {"avg": 0.9, "tasks": {"DIAG": 0.9}}}
    text = model_markdown(Predictor.from_checkpoint(save_checkpoint(model, card, tmp_path / "refit")))
    assert "Derm7pt valid (in the training data: a refit)" in text and "Calibration: none (raw softmax)" in text
    card.training["data"]["split"] = "train"  # a normal run: valid is held out
    text = model_markdown(Predictor.from_checkpoint(save_checkpoint(model, card, tmp_path / "normal")))
    assert "Derm7pt valid, fused head" in text


def test_bad_inputs_give_clear_errors(predictor, tmp_path, pair):
    with pytest.raises(gr.Error, match="Upload a clinical photo, a dermoscopy image, or both"):
        predict_handler(predictor, None, None)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(gr.Error, match="clinical image: not an image file"):
        predict_handler(predictor, str(text), str(pair[1]))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(pair[0].read_bytes()[:300])
    with pytest.raises(gr.Error, match="dermoscopy image: the file is damaged or truncated"):
        predict_handler(predictor, None, str(truncated))
    with pytest.raises(gr.Error, match="fused head needs both images"):
        explain_handler(predictor, None, str(pair[1]), "DIAG", "MEL", "fused")
    with pytest.raises(gr.Error, match="DIAG has no such class"):
        explain_handler(predictor, *map(str, pair), "DIAG", "TYP", "auto")
    for mode in ("L", "RGBA", "I;16"):
        odd = tmp_path / f"odd_{mode.replace(';', '')}.png"
        Image.open(pair[1]).convert(mode if mode != "I;16" else "I").convert(mode).save(odd)
        assert "Dermoscopy head" in predict_handler(predictor, None, str(odd))[0]


def test_only_gradio_originals_and_granted_clean_copies_are_opened(tmp_path, monkeypatch):
    from skinnet.ui import uploads
    original = jpeg_with_gps(tmp_path / "john_smith.jpg")
    uploaded = {str(original)}
    images = uploads.SessionImages(uploads.CleanStore(tmp_path / "clean"), lambda: uploaded)
    alice, bob = ("s1", "dr_a"), ("s1", "dr_b")
    clean = images.store.add(alice, images.open(alice, {"path": str(original)}, "clinical image"))
    data = open(clean, "rb").read()
    assert clean.endswith(".png") and "john" not in clean
    assert b"PatientCam" not in data and b"Jane" not in data
    # the client's value only names the copy: any folder, same name, is the store's own file
    assert images.open(alice, f"/elsewhere/{Path(clean).name}", "x", originals=False).size == (90, 70)
    for who, value in ((bob, clean), (alice, "/etc/hostname"), (alice, "/nonexistent.png"), (alice, "/etc"),
                       (alice, {"path": str(tmp_path / "clean")}), (alice, str(original) + "/../john_smith.jpg")):
        with pytest.raises(ImageError, match="not an upload of this session"):
            images.open(who, value, "x", originals=who != bob)
    with pytest.raises(ImageError, match="not an upload of this session"):
        images.open(alice, str(original), "x", originals=False)  # events after the upload take clean copies
    monkeypatch.setattr(uploads, "ORIGINAL_TTL_S", 0.0)
    assert images.sweep_originals() == 1 and not original.exists() and not uploaded
    monkeypatch.setattr(uploads, "CLEAN_TTL_S", 0.0)
    time.sleep(0.01)
    assert images.store.sweep() == 1 and not Path(clean).exists()


def test_explain_handler_outputs(predictor, pair):
    cam_clinical, cam_derm, gallery = explain_handler(predictor, *map(str, pair), "DIAG", "(predicted class)", "auto")
    assert isinstance(cam_clinical, Image.Image) and isinstance(cam_derm, Image.Image)
    labels = [label.split(" · ")[0] for _, label in gallery]
    assert sorted(labels) == ["stage 3: clinical->dermoscopy", "stage 3: dermoscopy->clinical",
                              "stage 4: clinical->dermoscopy", "stage 4: dermoscopy->clinical"]
    # each caption says where its map's attention falls, relative to the centre where the lesion is framed
    assert all(re.search(r" · \d+% on the centre \(\d+% of the picture\): (mostly on|mostly off|spread over) the "
                         r"centre.*; peak (near the centre|between the centre and the edge|at the \w+ edge|in the "
                         r"\w+-\w+ corner)$", label) for _, label in gallery)
    cam_clinical, cam_derm, gallery = explain_handler(predictor, None, str(pair[1]), "PN", "ATP", "auto")
    assert cam_clinical is None and cam_derm is not None and gallery == []


def test_the_pages_grad_cam_slots_say_what_they_explain_and_why_one_is_empty(predictor, pair):
    """A blank Grad-CAM slot (the head chosen does not read that image) looked like a failure."""
    from skinnet.ui.handlers import page_maps

    cam_clinical, cam_derm, _ = page_maps(predictor, *map(str, pair), "DIAG", "(predicted class)", "auto")
    assert isinstance(cam_clinical["value"], Image.Image) and isinstance(cam_derm["value"], Image.Image)
    assert re.fullmatch(r"Grad-CAM, clinical · DIAG = (BCC|NEV|MEL|MISC|SK)", cam_clinical["label"])
    cam_clinical, cam_derm, _ = page_maps(predictor, *map(str, pair), "BWV", "ABS", "dermoscopy")
    assert cam_clinical == {"__type__": "update", "value": None,
                            "label": "Grad-CAM, clinical: none, the dermoscopy head does not read this image"}
    assert cam_derm["value"] is not None and cam_derm["label"] == "Grad-CAM, dermoscopy · BWV = ABS"
    cam_clinical, _, _ = page_maps(predictor, None, str(pair[1]), "PN", "ATP", "auto")
    assert cam_clinical["label"] == "Grad-CAM, clinical"


@pytest.mark.parametrize("modality", ["clinical", "dermoscopy"])
@pytest.mark.parametrize("head", ["own", "fused", "alone"])
def test_explained_output_equals_model_output(predictor, pair, modality, head):
    """What Grad-CAM differentiates (neck, pooling, head from the prediction's kept last-stage
    output) gives the model's own logits: for a pair's fused and own heads, and a lone image."""
    images = [Image.open(p).convert("RGB") for p in pair]
    x_c, x_d = (predictor.to_tensor(im) for im in images)
    model = predictor.model
    if head == "alone":
        given = [im if m == modality else None for m, im in zip(MODALITIES, images)]
        encoding = predictor.pair_encoding(*given)
        full = model(**{modality: x_c if modality == "clinical" else x_d})
        head_name = modality
    else:
        encoding = predictor.pair_encoding(*images)
        full = model(x_c, x_d)
        head_name = modality if head == "own" else "fused"
    last_stage = encoding.last_stage[modality]
    if model.encoder.channels_last:
        last_stage = last_stage.permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(HeadOnLastStage(model, modality, head_name, encoding)(last_stage.clone()),
                                   full[head_name])


def test_an_explanation_runs_no_encoder_pass_after_the_prediction(predictor, pair):
    """The app's flow: /predict, then /explain of the same pair. The explanation reuses the
    prediction's unflipped pass: the encoder's first stage never runs again, the neck once per map."""
    images = [Image.open(p).convert("RGB") for p in pair]
    predictor.forget()
    predictor.predict(*images)
    encoder = predictor.model.encoder
    stem_calls, neck_inputs = [], []
    hooks = [encoder.stages[0].register_forward_hook(lambda module, args, out: stem_calls.append(1)),
             encoder.neck.register_forward_hook(lambda module, args, out: neck_inputs.append(args[0].shape))]
    try:
        result = explain(predictor, *images)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(result.gradcam) == {"clinical", "dermoscopy"} and stem_calls == []
    assert len(neck_inputs) == 2
    heat = gradcam_map(predictor, predictor.pair_encoding(*images), "dermoscopy", "fused", LogitTarget("DIAG", "MEL"))
    assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1
    assert not encoder.neck._forward_hooks and not encoder.neck._backward_hooks  # grad-cam's hooks are gone


def test_gradcam_under_no_grad_thread_state(predictor, pair):
    images = [Image.open(p).convert("RGB") for p in pair]
    expected = explain(predictor, *images, "DIAG", "NEV")
    with torch.no_grad():  # as a Gradio worker thread might be
        result = explain(predictor, *images, "DIAG", "NEV")
    assert set(result.gradcam) == {"clinical", "dermoscopy"}
    for modality, overlay in result.gradcam.items():  # the same maps as with gradients on, not blank ones
        np.testing.assert_array_equal(np.asarray(overlay), np.asarray(expected.gradcam[modality]))


# -- the launched app -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory):
    settings = AppSettings(checkpoint=predictor.card.name, port=free_port(),
                           log_dir=tmp_path_factory.mktemp("log"))
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
    app.close()


def test_api_predict_both_one_and_bad(client, pair, tmp_path):
    summary, diagnosis, criteria = client.predict(handle_file(str(pair[0])), handle_file(str(pair[1])),
                                                  api_name="/predict")
    assert "Fused head" in summary
    assert diagnosis["headers"] == ["class", "clinical", "dermoscopy", "fused"]
    summary, diagnosis, _ = client.predict(None, handle_file(str(pair[1])), api_name="/predict")
    assert "Only the dermoscopy image" in summary
    bad = tmp_path / "report.png"
    bad.write_bytes(b"%PDF-1.7 definitely not a png")
    with pytest.raises(AppError, match="dermoscopy image: not an image file"):
        client.predict(None, handle_file(str(bad)), api_name="/predict")
    with pytest.raises(AppError, match="Upload a clinical photo"):
        client.predict(None, None, api_name="/predict")


def test_api_explain_returns_png_overlays(client, pair):
    cam_clinical, cam_derm, gallery = client.predict(handle_file(str(pair[0])), handle_file(str(pair[1])),
                                                     "BWV", "PRS", "fused", api_name="/explain")
    for path in (cam_clinical, cam_derm):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert len(gallery) == 4 and all(item["image"].endswith(".png") for item in gallery)


def test_uploads_lose_metadata_and_file_name(client, tmp_path, monkeypatch):
    import skinnet.ui.uploads
    monkeypatch.setattr(skinnet.ui.uploads, "ORIGINAL_TTL_S", 0.0)
    started = time.time() - 1
    revealing = jpeg_with_gps(tmp_path / "jane_doe_1970-01-01_back.jpg")
    uploaded_copy = shutil.copy(revealing, tmp_path / "copy.jpg")
    cam_clinical, _, _ = client.predict(handle_file(uploaded_copy), None, "DIAG", "(predicted class)", "auto",
                                        api_name="/explain")
    data = open(cam_clinical, "rb").read()
    assert b"PatientCam" not in data and b"Jane" not in data and b"Exif" not in data
    summary, _, _ = client.predict(handle_file(str(revealing)), None, api_name="/predict")
    assert "jane_doe" not in summary
    # the upload's copy (named after the original file) is swept from Gradio's cache: the folder
    # Gradio really uses (GRADIO_TEMP_DIR or the default), shown by this test's own files in it
    folder = Path(gr.utils.get_upload_folder())
    assert any(p.is_file() and p.stat().st_mtime >= started for p in folder.rglob("*")), folder
    deadline = time.time() + 20
    while time.time() < deadline:
        leftovers = [p for p in folder.rglob("*") if "jane_doe" in p.name]
        if not leftovers:
            break
        time.sleep(0.5)
    assert leftovers == []


def test_recent_predictions_are_remembered_by_pixels(predictor, pair):
    clinical, derm = (Image.open(p).convert("RGB") for p in pair)
    predictor.forget()
    first = predictor.predict(clinical, derm)
    assert predictor.predict(clinical.copy(), derm.copy()) is first
    assert predictor.predict(None, derm) is not first
    predictor.forget()
    again = predictor.predict(clinical, derm)
    assert again is not first and again.heads["fused"].probabilities == first.heads["fused"].probabilities


@pytest.mark.parametrize("images", ["both", "clinical", "dermoscopy"])
def test_batched_flips_equal_one_forward_per_flip(predictor, pair, images):
    """The four test-time flips run as one batch; the result is the mean of four single passes."""
    from skinnet.inference import FLIPS
    clinical = Image.open(pair[0]).convert("RGB") if images in ("both", "clinical") else None
    derm = Image.open(pair[1]).convert("RGB") if images in ("both", "dermoscopy") else None
    x_c, x_d = predictor.to_tensor(clinical), predictor.to_tensor(derm)
    expected: dict = {}
    with torch.inference_mode():
        for dims in FLIPS:
            flip = (lambda x: None if x is None else (x.flip(dims) if dims else x))
            for head, value in predictor.model(flip(x_c), flip(x_d)).items():
                expected[head] = expected.get(head, 0) + value[0] / len(FLIPS)
    got = predictor.logits(clinical, derm, tta=True)
    assert set(got) == set(expected)
    for head in got:
        assert torch.allclose(got[head], expected[head], atol=1e-5), head


def test_batched_predictions_equal_one_at_a_time(predictor, tmp_path):
    """Queue scoring runs several cases per forward pass; each result equals the single-case path."""
    from app_helpers import write_pair

    pairs = [tuple(Image.open(p).convert("RGB") for p in write_pair(tmp_path, seed)) for seed in range(5)]
    cases = [pairs[0], pairs[1], (None, pairs[2][1]), pairs[3], (pairs[4][0], None)]
    batched = predictor.predict_batch(cases, batch_size=2)
    for (clinical, derm), got in zip(cases, batched):
        predictor.forget()
        single = predictor.predict(clinical, derm)
        assert got.modalities == single.modalities and set(got.heads) == set(single.heads)
        for head in single.heads:
            for task, probs in single.heads[head].probabilities.items():
                assert list(got.heads[head].probabilities[task].values()) == pytest.approx(list(probs.values()),
                                                                                         abs=1e-5)


def test_concurrent_calls_are_batched_and_equal_one_at_a_time(tmp_path):
    """Eight threads ask at once: the micro-batcher runs them in fewer forward passes than
    calls, and every thread gets its own case's prediction (equal to the unbatched one)."""
    import threading

    from app_helpers import write_pair

    checkpoint = tiny_checkpoint(tmp_path)
    plain = Predictor.from_checkpoint(checkpoint)
    batched = Predictor.from_checkpoint(checkpoint).batch_concurrent_calls(max_batch=8, wait_s=0.2)
    pairs = [tuple(Image.open(p).convert("RGB") for p in write_pair(tmp_path, seed))
             for seed in range(8)]
    pairs[5] = (None, pairs[5][1])  # one image only: its own group inside the batch
    results, start = [None] * len(pairs), threading.Barrier(len(pairs))

    def ask(i):
        start.wait()
        results[i] = batched.predict(*pairs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(batched.batcher.batches) == len(pairs) and len(batched.batcher.batches) < len(pairs)
    for (clinical, derm), got in zip(pairs, results):
        single = plain.predict(clinical, derm)
        assert got.modalities == single.modalities
        for head in single.heads:
            for task, probs in single.heads[head].probabilities.items():
                assert list(got.heads[head].probabilities[task].values()) == pytest.approx(list(probs.values()),
                                                                                         abs=1e-5)
    with pytest.raises(ValueError, match="need a clinical image"):
        batched.predict(None, None)


def test_explaining_a_pair_the_micro_batcher_predicted(tmp_path):
    """The batcher keeps no encoding: explaining its pair runs the model once more, directly
    (even for a caller holding the predictor's lock, who would wait forever on the batcher's
    thread), remembers that encoding, and a second explanation runs no encoder pass."""
    import threading

    batched = Predictor.from_checkpoint(tiny_checkpoint(tmp_path)).batch_concurrent_calls(max_batch=4, wait_s=0.01)
    images = [Image.open(p).convert("RGB") for p in write_pair(tmp_path, 3)]
    batched.predict(*images)
    stem_calls = []
    hook = batched.model.encoder.stages[0].register_forward_hook(lambda m, a, o: stem_calls.append(1))
    done = []

    def explain_holding_the_lock():
        with batched.turn():
            done.append(explain(batched, *images))

    try:
        worker = threading.Thread(target=explain_holding_the_lock, daemon=True)
        worker.start()
        worker.join(60)
        assert done and set(done[0].gradcam) == {"clinical", "dermoscopy"} and len(stem_calls) == 1
        explain(batched, *images)
        assert len(stem_calls) == 1
    finally:
        hook.remove()


def test_a_model_call_alone_gets_every_thread_and_one_others_wait_behind_gets_one(tmp_path):
    """The load rule of ``Predictor.turn``, seen from inside the encoder on real forward passes:
    a call nobody waits behind runs on all of the predictor's threads; a call that another is
    queued behind runs on one; a re-entered turn keeps its threads; afterwards the caller's own
    setting is back and no one is counted as waiting."""
    import threading

    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path))
    predictor.threads = 2
    images = [Image.open(p).convert("RGB") for p in write_pair(tmp_path, 4)]
    seen = []
    hook = predictor.model.encoder.stages[0].register_forward_hook(
        lambda m, a, o: seen.append((threading.current_thread().name, torch.get_num_threads())))
    holding, release = threading.Event(), threading.Event()

    def hold():
        with predictor.turn():
            holding.set()
            release.wait(30)

    def call(pair=images):
        predictor.predict(*pair)

    original = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        call()
        assert seen == [("MainThread", 2)] and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        predictor.forget()
        with predictor.turn():
            with predictor.turn():
                call()
        assert seen[-1] == ("MainThread", 2)
        with pytest.raises(ValueError):  # a call that fails gives the model back, and counts no one
            with predictor.turn():
                raise ValueError("broken call")
        free = []
        probe = threading.Thread(target=lambda: free.append(predictor.lock.acquire(timeout=5) and predictor.lock.release() is None))
        probe.start()
        probe.join(10)
        assert predictor._waiting == 0 and free == [True]  # another thread gets the model
        holder = threading.Thread(target=hold, name="holder")
        holder.start()
        assert holding.wait(30)
        predictor.forget()
        pairs = [images, [images[0], images[1].rotate(90)]]  # two pairs: neither remembers the other's answer
        queued = [threading.Thread(target=call, args=(pair,), name=f"queued{k}") for k, pair in enumerate(pairs)]
        for thread in queued:
            thread.start()
        deadline = time.monotonic() + 30
        while predictor._waiting < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert predictor._waiting == 3  # the holder and the two queued behind it
        release.set()
        holder.join(30)
        for thread in queued:
            thread.join(60)
        # the first to get the model had the other behind it: one thread; the last was alone
        assert sorted(n for name, n in seen[2:]) == [1, 2] and {name for name, _ in seen[2:]} == {"queued0", "queued1"}
        assert predictor._waiting == 0 and torch.get_num_threads() == 2
    finally:
        release.set()
        hook.remove()
        torch.set_num_threads(original)


def test_ten_concurrent_gradio_clients_each_get_their_own_answer(client, predictor, tmp_path):
    """Ten clients call /predict at once (each its own pair): no error, and each answer is the
    one its own pair gets alone."""
    import threading

    from app_helpers import write_pair

    url = client.src
    pairs = [write_pair(tmp_path, seed) for seed in range(10)]
    answers, errors, start = [None] * 10, [], threading.Barrier(10)

    def call(i):
        own = Client(url, verbose=False)
        start.wait()
        try:
            answers[i] = own.predict(handle_file(str(pairs[i][0])), handle_file(str(pairs[i][1])),
                                     api_name="/predict")[1]["data"]
        except Exception as err:  # noqa: BLE001 (collected and asserted below)
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for (clinical, derm), got in zip(pairs, answers):
        predictor.forget()  # computed again, not remembered from the concurrent call
        alone = client.predict(handle_file(str(clinical)), handle_file(str(derm)), api_name="/predict")[1]["data"]
        assert got == alone
    assert len({str(a) for a in answers}) > 1  # different pairs, different answers


def test_queue_filters_and_a_reviewers_place_survive_a_new_page(release, predictor, tmp_path):
    """A Derm7pt queue opens on its test split; filters by your reviews and by predicted
    diagnosis; order, filters and open case come back for the same reviewer only, and not
    after the queue file changed."""
    import gradio as gr

    from skinnet.ui import review
    from skinnet.corrections import CorrectionsLog, NO_CHANGE, Review, new_event_id
    from skinnet.data import Derm7pt

    import shutil

    root = tmp_path / "queues"
    shutil.copytree(release, root / "release")  # a copy: this test edits the queue file at the end
    name = "release/meta/meta.csv"
    log = CorrectionsLog(tmp_path / "log")
    state, _, status = review.open_queue_handler(review.new_state(), str(root / name), root, log, "dr_a", name)
    test_ids = [c.case_id for c in Derm7pt(root / "release").split("test")]
    assert [c["case_id"] for c in state["queue"]] == test_ids and len(state["all"]) == 24
    assert f"Showing {len(test_ids)} of 24 cases (test split)" in status
    predicted = {t: "ABS" for t in ("PN", "STR", "PIG", "RS", "DaG", "BWV", "VS")} | {"DIAG": "NEV"}
    log.append(Review(new_event_id(), "dr_a", test_ids[0], "derm7pt", "skip", predicted,
                      {t: NO_CHANGE for t in predicted}))
    unreviewed = review.apply_filters(state, log, "dr_a", {"status": "unreviewed"})
    assert [c["case_id"] for c in unreviewed["queue"]] == test_ids[1:]
    assert [c["case_id"] for c in review.apply_filters(state, log, "dr_b", {"status": "unreviewed"})["queue"]] == test_ids
    with pytest.raises(gr.Error, match="press 'Least sure first' first"):
        review.apply_filters(state, log, "dr_a", {"predicted": "MEL"})
    with pytest.raises(gr.Error, match="Unknown filter"):
        review.apply_filters(state, log, "dr_a", {"split": "../../etc"})

    state, _, _ = review.order_by_uncertainty(state, predictor, log, "dr_a", root)
    order = [c["case_id"] for c in state["queue"]]
    scores = [state["uncertainty"][c] for c in order]
    assert sorted(order) == sorted(test_ids) and scores == sorted(scores, reverse=True)
    some_class = state["predicted"][order[0]]
    only = review.apply_filters(state, log, "dr_a", {"predicted": some_class})
    assert only["queue"] and all(state["predicted"][c["case_id"]] == some_class for c in only["queue"])
    state = review.move(only, "next", log, "dr_a") if len(only["queue"]) > 1 else only
    review.remember(state, log.folder, "dr_a")

    back = review.restore(review.new_state(), log.folder, root, log, "dr_a")
    assert [c["case_id"] for c in back["queue"]] == [c["case_id"] for c in state["queue"]]
    assert back["filters"] == state["filters"] and back["case"]["case_id"] == state["case"]["case_id"]
    assert review.restore(review.new_state(), log.folder, root, log, "dr_b") is None  # per reviewer
    meta = root / name
    meta.write_text(meta.read_text() + "\n")  # the file changed: its old order means nothing now
    assert review.restore(review.new_state(), log.folder, root, log, "dr_a") is None


def test_examples_are_read_as_clean_pairs_and_a_bad_file_is_left_out(tmp_path, caplog):
    from skinnet.ui.examples import read_examples

    examples = read_examples(write_examples(tmp_path / "examples"))
    assert [(e.name, e.clinical is not None, e.dermoscopy is not None) for e in examples] == [
        ("first pair", True, True), ("second", False, True)]
    assert "left out example broken" in caplog.text
    first = examples[0]
    assert first.clinical.mode == "RGB" and not first.clinical.info.get("exif") and not first.clinical.getexif()
    sheet = first.thumbnail()
    assert sheet.width > sheet.height and max(examples[1].thumbnail().size) <= 160
    assert read_examples(None) == []
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match="examples folder"):
            read_examples(folder)


def test_each_shipped_example_shows_the_shipped_model_doing_what_its_name_says():
    """A drawn pair named "swapped" never showed the swap message (the model reads a drawn
    clinical photo as dermoscopy): each example's name is checked against the shipped model."""
    from skinnet.ui.synthetic_examples import synthetic_examples

    shipped = Predictor.from_checkpoint(Path(__file__).parents[1] / "checkpoints" / "skinnet_lite2.safetensors")
    for example in synthetic_examples():
        checks = shipped.predict(example.clinical, example.dermoscopy).checks
        assert checks.swapped == ("swapped" in example.name), example.name
        assert checks.not_lesion or "not a lesion" not in example.name, example.name
