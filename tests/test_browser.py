"""The app in a real headless Chromium (Debian's), driven by Playwright."""

import pytest

from app_helpers import free_port, png_is_not_blank, tiny_checkpoint, write_examples, write_pair
from skinnet.predict import Predictor
from skinnet.ui import AppSettings, build_app, launch
from skinnet_testkit.browser import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM

pytestmark = pytest.mark.skipif(not HAVE_CHROMIUM,
                                reason="Debian's chromium is not installed (tests/run.sh installs it)")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")))
    settings = AppSettings(checkpoint=predictor.card.name, port=free_port(),
                           log_dir=tmp_path_factory.mktemp("log"),
                           examples=write_examples(tmp_path_factory.mktemp("owner") / "examples"))
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{settings.port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_pair_see_predictions_and_maps(browser, app_url, tmp_path):
    clinical, derm = write_pair(tmp_path, seed=3)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_url)
    # the upload handler swaps each original for its de-identified PNG
    _upload(page, "clinical", clinical)
    _upload(page, "dermoscopy", derm)
    page.locator("#analyse").click()
    page.get_by_text("Fused head:").wait_for(timeout=60_000)
    page.locator("#gradcam-dermoscopy img").wait_for(timeout=60_000)
    page.locator("#gradcam-clinical img").wait_for(timeout=60_000)
    page.locator("#attention img").first.wait_for(timeout=60_000)
    text = page.locator("#summary").inner_text()
    assert "clinical + dermoscopy" in text and "Seven-point checklist score" in text
    assert "Research tool, not a diagnosis" in page.content()
    assert "MEL melanoma" in page.locator("#diagnosis-table").inner_text()
    srcs = page.eval_on_selector_all("#clinical-input img, #dermoscopy-input img", "els => els.map(e => e.src)")
    assert all(clinical.stem not in s and derm.stem not in s for s in srcs)
    shot = page.screenshot(full_page=True, path=str(tmp_path / "app.png"))
    assert png_is_not_blank(shot)
    cam = page.locator("#gradcam-dermoscopy img").screenshot()
    assert png_is_not_blank(cam)
    page.close()


def test_one_image_says_which_head(browser, app_url, tmp_path):
    _, derm = write_pair(tmp_path, seed=4)
    page = browser.new_page()
    page.goto(app_url)
    _upload(page, "dermoscopy", derm)  # the clean copy is in: the upload's clearing cannot wipe the answer
    page.locator("#analyse").click()
    page.get_by_text("Dermoscopy head:").wait_for(timeout=60_000)
    assert "Only the dermoscopy image was given" in page.locator("#summary").inner_text()
    page.close()


@pytest.fixture(scope="module")
def guarded_url(tmp_path_factory):
    from app_helpers import guarded_checkpoint

    predictor = Predictor.from_checkpoint(guarded_checkpoint(tmp_path_factory.mktemp("guarded")))
    settings = AppSettings(checkpoint=predictor.card.name, port=free_port(), log_dir=tmp_path_factory.mktemp("log"))
    app = build_app(predictor, settings)
    launch(app, settings, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{settings.port}/"
    app.close()


def _upload(page, slot: str, path) -> None:
    """Upload into a slot and wait for the server's clean copy (named by its pixels' SHA-256) to
    replace the browser's preview: until then a later action may act on an image that goes."""
    page.locator(f"#{slot}-input input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"(() => {{ const im = document.querySelector('#{slot}-input img');"
                           " return !!im && /[0-9a-f]{64}\\.png/.test(decodeURIComponent(im.src)); })()",
                           timeout=60_000)


def test_a_picture_that_is_not_a_lesion_is_hidden_until_asked_and_a_new_upload_clears_it(
        browser, guarded_url, tmp_path):
    import numpy as np
    from playwright.sync_api import expect
    from skinnet_testkit.non_lesion import generated_images
    from skinnet_testkit.synthetic import clinical_like_image, dermoscopy_like_image

    rng = np.random.default_rng(21)
    # JPEGs, as the synthetic release the guards were fitted on stores its images
    document, clinical, derm = tmp_path / "page.png", tmp_path / "clinical.jpg", tmp_path / "derm.jpg"
    dict(generated_images())["document-1"].save(document)
    clinical_like_image(rng).save(clinical, quality=90)
    dermoscopy_like_image(rng).save(derm, quality=90)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(guarded_url)
    _upload(page, "clinical", document)
    _upload(page, "dermoscopy", derm)
    page.locator("#analyse").click()
    page.get_by_text("No prediction shown").wait_for(timeout=60_000)
    assert "clinical photo does not look like a skin lesion" in page.locator("#summary").inner_text()
    assert "BCC" not in page.locator("#diagnosis-table").inner_text()
    page.screenshot(path=str(tmp_path / "not_a_lesion.png"))
    expect(page.locator("#diagnosis-bars")).to_be_hidden()
    page.locator("#show-anyway").click()
    page.get_by_text("Fused head:").wait_for(timeout=60_000)
    expect(page.locator("#diagnosis-bars")).to_contain_text("MEL melanoma", timeout=30_000)
    assert "does not look like a skin lesion" in page.locator("#summary").inner_text()
    page.locator("#gradcam-dermoscopy img").wait_for(timeout=60_000)
    # new images: the last pair's prediction and maps go before anything is analysed
    _upload(page, "clinical", clinical)
    page.wait_for_function("!document.querySelector('#summary').innerText.includes('Fused head')", timeout=30_000)
    assert page.locator("#gradcam-dermoscopy img").count() == 0
    expect(page.locator("#show-anyway")).to_be_hidden(timeout=30_000)
    page.close()


def _no_error_badges(page) -> None:
    """A user's mistake must not paint Gradio's red "Error" on any output, nor raise its error toast."""
    assert page.locator(".toast-body.error, .toast-wrap .error").count() == 0
    assert page.locator(".wrap .error, span.error").count() == 0


def test_swapped_images_show_the_swap_message_first_and_the_prediction_only_after_a_choice(
        browser, guarded_url, tmp_path):
    import numpy as np
    from playwright.sync_api import expect
    from skinnet_testkit.synthetic import clinical_like_image, dermoscopy_like_image

    rng = np.random.default_rng(22)
    clinical, derm = tmp_path / "clinical.jpg", tmp_path / "derm.jpg"  # JPEGs, as the guards were fitted on
    clinical_like_image(rng).save(clinical, quality=90)
    dermoscopy_like_image(rng).save(derm, quality=90)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(guarded_url)
    _upload(page, "clinical", derm)
    _upload(page, "dermoscopy", clinical)
    page.locator("#analyse").click()
    page.get_by_text("These images look swapped").wait_for(timeout=60_000)
    summary = page.locator("#summary").inner_text()
    assert "no prediction shown yet" in summary and "head:" not in summary  # no diagnosis of the swapped pair
    expect(page.locator("#diagnosis-bars")).to_be_hidden()
    expect(page.locator("#show-anyway")).to_have_text("They are right as they are", timeout=30_000)
    expect(page.locator("#swap-images")).to_be_visible()
    page.screenshot(path=str(tmp_path / "swapped.png"))
    # "They are right as they are": the pair's prediction, the warning kept
    page.locator("#show-anyway").click()
    page.wait_for_function("document.querySelector('#summary').innerText.includes('Fused head')", timeout=60_000)
    assert "These images look swapped" in page.locator("#summary").inner_text()
    expect(page.locator("#diagnosis-bars")).to_be_visible()
    expect(page.locator("#swap-images")).to_be_hidden(timeout=30_000)
    # a new analysis of the same swapped pair asks again; "Swap the images" swaps them and answers
    page.reload()
    _upload(page, "clinical", derm)
    _upload(page, "dermoscopy", clinical)
    page.locator("#analyse").click()
    page.get_by_text("These images look swapped").wait_for(timeout=60_000)
    page.locator("#swap-images").click()
    page.wait_for_function("document.querySelector('#summary').innerText.includes('Fused head') && "
                           "!document.querySelector('#summary').innerText.includes('swapped')", timeout=60_000)
    expect(page.locator("#swap-images")).to_be_hidden(timeout=30_000)
    _no_error_badges(page)
    page.close()


def test_first_screen_says_what_to_upload_and_a_click_on_an_example_answers_above_the_fold(
        browser, app_url, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(app_url)
    intro = page.locator("#intro")
    expect(intro).to_contain_text("clinical photo", timeout=30_000)
    expect(intro).to_contain_text("dermoscopy image")
    assert intro.locator("a[href='https://arxiv.org/abs/2403.19203']").count() == 1
    gallery = page.locator("#examples")
    expect(gallery).to_be_visible()
    # the drawn pairs the app ships (labelled synthetic), then the owner's: the full pair and the dermoscopy alone
    expect(gallery.locator("img")).to_have_count(6)
    expect(page.locator("#examples-note")).to_contain_text("synthetic")
    assert gallery.bounding_box()["y"] < 768
    # no review form for a visitor, folded or not; no "1 2 3" headers on the empty tables
    expect(page.locator("#review-form")).to_be_hidden()
    assert "Review form" not in page.locator("body").inner_text()
    for table in ("#diagnosis-table", "#criteria-table"):
        headers = page.locator(f"{table} th").all_inner_texts()
        assert not {"1", "2", "3"} & {h.strip() for h in headers}, headers
    gallery.locator("img").nth(4).click()  # the owner's full pair
    page.get_by_text("Fused head:").wait_for(timeout=60_000)
    srcs = page.eval_on_selector_all("#clinical-input img, #dermoscopy-input img", "els => els.map(e => e.src)")
    assert len(srcs) == 2 and not any("first_pair" in s or "examples" in s for s in srcs)
    bars = page.locator("#diagnosis-bars")
    expect(bars).to_contain_text("MEL melanoma")
    assert bars.locator(".confidence-set").count() == 5  # all five diagnoses, not only the top ones
    page.locator("#gradcam-dermoscopy img").wait_for(timeout=60_000)
    for element in ("#summary h3", "#diagnosis-bars", "#gradcam-dermoscopy img"):
        box = page.locator(element).first.bounding_box()
        assert box and box["y"] < 768, element  # on the first screen at 1366 x 768
    assert "research tool, not a diagnosis" in page.locator("#summary").inner_text()
    # the criteria table's fused column is not clipped: each cell shows its whole text
    page.locator("#criteria-table").scroll_into_view_if_needed()
    clipped = page.eval_on_selector_all("#criteria-table td", "cells => cells.filter(c => c.innerText.trim() && "
                                        "c.scrollWidth > c.clientWidth + 1).length")
    assert clipped == 0
    page.screenshot(path=str(tmp_path / "first_screen.png"))
    page.get_by_role("tab", name="Queue").click()
    expect(page.locator("#queue-demo-note")).to_contain_text("Review queues are for signed-in reviewers")
    expect(page.locator("#open-queue")).to_be_hidden()
    page.close()


def test_a_mistake_is_said_beside_the_images_and_a_refused_image_leaves_its_slot(browser, app_url, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(app_url)
    page.locator("#analyse").click()  # nothing uploaded
    expect(page.locator("#input-message")).to_contain_text("Upload a clinical photo", timeout=60_000)
    _no_error_badges(page)
    huge = tmp_path / "huge.jpg"  # 8000 x 6000: over the 40 megapixel limit, yet a small file
    gradient = np.linspace(0, 255, 8000, dtype=np.uint8)
    Image.fromarray(np.broadcast_to(gradient, (6000, 8000))).convert("RGB").save(huge, quality=60)
    page.locator("#clinical-input input[type=file]").set_input_files(str(huge))
    expect(page.locator("#input-message")).to_contain_text("too large (8000 x 6000 pixels", timeout=60_000)
    expect(page.locator("#clinical-input img")).to_have_count(0, timeout=30_000)  # removed from its slot
    _no_error_badges(page)
    message = page.locator("#input-message").bounding_box()
    images = page.locator("#case-images").bounding_box()
    assert message["y"] < images["y"] + images["height"] + 80  # beside the images, not at the page's bottom
    assert "/tmp" not in page.locator("#input-message").inner_text()
    page.screenshot(path=str(tmp_path / "refused.png"))
    # a good image afterwards clears the message and is analysed
    clinical, _ = write_pair(tmp_path, seed=8)
    _upload(page, "clinical", clinical)
    expect(page.locator("#input-message")).to_have_text("", timeout=30_000)
    page.locator("#analyse").click()
    page.get_by_text("Clinical head:").wait_for(timeout=60_000)
    page.close()


def test_ctrl_wheel_zooms_drag_pans_and_double_click_resets_an_image(browser, app_url, tmp_path):
    clinical, derm = write_pair(tmp_path, seed=6)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(app_url)
    _upload(page, "clinical", clinical)
    _upload(page, "dermoscopy", derm)
    image = page.locator("#dermoscopy-input img")
    page.wait_for_function("(() => { const im = document.querySelector('#dermoscopy-input img');"
                           " return im.complete && im.getBoundingClientRect().width > 20; })()")
    box = image.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)
    page.mouse.wheel(0, -120)  # a plain wheel, up or down, over an unzoomed image is the page's scroll
    page.wait_for_timeout(300)
    assert image.evaluate("el => el.style.transform") == ""
    page.keyboard.down("Control")
    for _ in range(3):
        page.mouse.wheel(0, -120)
    page.keyboard.up("Control")
    page.wait_for_function("Number(document.querySelector('#dermoscopy-input img').dataset.zoom) > 1.9")
    zoomed = image.evaluate("el => el.style.transform")
    assert "scale(1.95" in zoomed  # 1.25 ** 3
    assert image.evaluate("el => getComputedStyle(el.parentElement).overflow") == "hidden"  # stays in its frame
    page.mouse.down()
    page.mouse.move(centre[0] + 30, centre[1] + 20, steps=4)
    page.mouse.up()
    panned = image.evaluate("el => el.style.transform")
    assert panned != zoomed and "scale(1.95" in panned
    assert page.locator("#clinical-input img").evaluate("el => el.style.transform") == ""  # the other is untouched
    page.mouse.wheel(0, 120)  # zoomed, the plain wheel zooms back out a step
    page.wait_for_function("document.querySelector('#dermoscopy-input img').dataset.zoom === '1.56'")
    page.mouse.dblclick(*centre)
    page.wait_for_function("document.querySelector('#dermoscopy-input img').dataset.zoom === '1.00'")
    assert image.evaluate("el => el.style.transform") == ""
    # a pinch arrives as many small Ctrl + wheel steps: each zooms a little, not a whole notch
    page.keyboard.down("Control")
    page.mouse.wheel(0, -12)
    page.keyboard.up("Control")
    page.wait_for_function("document.querySelector('#dermoscopy-input img').dataset.zoom === '1.02'")
    page.mouse.dblclick(*centre)
    page.wait_for_function("document.querySelector('#dermoscopy-input img').dataset.zoom === '1.00'")
    # unzoomed, the wheel turned down over an image scrolls the page as everywhere else
    top = page.evaluate("window.scrollY")
    page.mouse.wheel(0, 300)
    page.wait_for_function(f"window.scrollY > {top}")
    assert image.evaluate("el => el.dataset.zoom") == "1.00"
    page.close()


def test_a_visitors_explain_sits_under_the_maps_it_changes_and_taking_an_image_away_takes_its_answer(
        browser, app_url, tmp_path):
    """From a visitor's report: Explain redrew a map a screen above it (nothing near the button
    moved); a slot left empty by the head chosen said nothing; Explain before any image put red
    "Error" badges on the maps; and removing an image left the pair's answer on screen."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(app_url)
    page.locator("#explain").click()  # nothing to explain yet: a note, no error on the maps
    expect(page.get_by_text("Nothing to explain yet")).to_be_visible(timeout=30_000)
    assert page.locator("#gradcam-clinical .error, #attention .error").count() == 0
    clinical, derm = write_pair(tmp_path, seed=5)
    _upload(page, "clinical", clinical)
    _upload(page, "dermoscopy", derm)
    page.locator("#analyse").click()
    page.locator("#gradcam-clinical img").wait_for(timeout=60_000)
    cam, controls = page.locator("#gradcam-clinical").bounding_box(), page.locator("#explain").bounding_box()
    assert 0 < controls["y"] - (cam["y"] + cam["height"]) < 200 and controls["x"] > 600  # right under the maps
    expect(page.locator("#gradcam-clinical")).to_contain_text("Grad-CAM, clinical · DIAG = ")
    page.locator("#explain-task input").click()  # tasks and classes are named in words too
    page.get_by_role("option", name="BWV · Blue-whitish veil", exact=True).click()
    page.locator("#explain-head label", has_text="dermoscopy").click()
    page.locator("#explain").click()
    expect(page.locator("#gradcam-clinical")).to_contain_text("none, the dermoscopy head does not read this image",
                                                              timeout=60_000)
    expect(page.locator("#gradcam-dermoscopy")).to_contain_text("Grad-CAM, dermoscopy · BWV = ")
    page.screenshot(path=str(tmp_path / "explained.png"))
    page.locator("#clinical-input button[aria-label='Remove Image']").click()
    expect(page.locator("#summary")).to_have_text("", timeout=30_000)
    expect(page.locator("#gradcam-dermoscopy img")).to_have_count(0)
    expect(page.locator("#diagnosis-bars")).to_be_hidden()
    page.close()


def test_on_a_phone_the_attention_maps_show_their_pictures_and_whole_captions(browser, app_url, tmp_path):
    """At 390 px the four maps were squashed to ~30 px under their captions, in a box of empty space."""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(app_url)
    clinical, derm = write_pair(tmp_path, seed=6)
    _upload(page, "clinical", clinical)
    _upload(page, "dermoscopy", derm)
    page.locator("#analyse").click()
    page.locator("#attention img").nth(3).wait_for(timeout=60_000)
    page.locator("#attention").scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#attention .thumbnail-item img')].every(i => i.complete "
                           "&& i.naturalHeight > 0)", timeout=30_000)
    sizes = page.eval_on_selector_all("#attention .thumbnail-item img", "els => els.map(e => [e.clientWidth, "
                                      "e.clientHeight])")
    assert len(sizes) == 4 and all(w >= 120 and h >= 120 for w, h in sizes), sizes
    cut = page.eval_on_selector_all("#attention .caption-label", "els => els.filter(e => e.scrollHeight > "
                                    "e.clientHeight + 1 || e.scrollWidth > e.clientWidth + 1).length")
    assert cut == 0
    page.screenshot(path=str(tmp_path / "phone_attention.png"), full_page=True)
    page.close()
