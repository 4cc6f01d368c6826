"""The web demo (`medsa-peft demo`): its JSON API over HTTP, and the page driven by a headless Chromium.

The pictures are the embedded MNI152 template: an axial slice as an 8-bit PNG and the whole volume as NIfTI. The
model is the shipped tiny SAM, the demo's default. The browser is Debian's chromium with its chromedriver (CI
installs both; see .ci/run); without them the browser tests fail and say so.
"""

import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datasets_scripts.mni152 import load_template
from peft import get_peft_model
from PIL import Image
from test_inference import saved_model
from test_io import hounsfield_volume, write_dicom_series
from transformers import SamModel

from helpers import randomize_adapters
from medsa_peft import MedSAConfig
from medsa_peft.cli import main
from medsa_peft.constants import MODALITIES
from medsa_peft.inference import MedSAPredictor, SlicePrompt
from medsa_peft.overlay import class_colour
from medsa_peft.tiny_sam import default_model_path
from medsa_peft.web import DemoApp, DemoServer, load_demo_predictor

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MASK_RED = class_colour(0)  # the mask's outline in the page's picture
AXIAL_SLICE = 45


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """brain.png (an axial slice of the MNI152 T1 template), brain.nii.gz (the template), truncated.nii.gz (its
    first half), noise.png (random bytes)."""
    folder = tmp_path_factory.mktemp("uploads")
    template, _ = load_template(2)
    volume = template.get_fdata(dtype=np.float32)
    Image.fromarray((np.clip(volume[:, :, AXIAL_SLICE], 0, 1) * 255).astype(np.uint8)).save(folder / "brain.png")
    nib.save(template, folder / "brain.nii.gz")
    whole = (folder / "brain.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(3000))
    return {path.name: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def app():
    with DemoApp(load_demo_predictor()) as app:
        yield app


@pytest.fixture(scope="module")
def url(app):
    """The demo served on a free port, in a thread."""
    with DemoServer(app) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.url
        server.shutdown()
        thread.join()


def multipart(paths: list[Path], modality: str = "") -> tuple[bytes, str]:
    """A multipart/form-data body as a browser's form sends it, and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
        for path in paths
    ]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="modality"\r\n\r\n{modality}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(url: str, path: str, data: bytes | dict | None = None, content_type: str = "application/json"):
    """(status, headers, body) of a GET, or of a POST of `data` (a dict is sent as JSON)."""
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    request = urllib.request.Request(url + path.lstrip("/"), data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def upload(url: str, paths: list[Path], modality: str = "") -> tuple[int, dict]:
    status, _, body = call(url, "/api/upload", *multipart(paths, modality))
    return status, json.loads(body)


def red_outline(png: bytes) -> np.ndarray:
    """bool (H, W): the pixels of the mask's outline colour in a picture of the page."""
    return np.all(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == MASK_RED, axis=-1)


def click(url: str, session: str, z: int, x: int, y: int, label: int = 1) -> dict:
    status, _, body = call(url, f"/api/sessions/{session}/click", {"slice": z, "x": x, "y": y, "label": label})
    assert status == 200, body
    return json.loads(body)


def test_click_on_a_picture_and_download_its_mask(url, app, files):
    status, image = upload(url, [files["brain.png"]])
    assert status == 200
    assert image == {
        "session": image["session"],
        "name": "brain.png",
        "volume": False,
        "width": 117,
        "height": 99,
        "slices": 1,
        "mask_name": "brain_mask.png",
    }
    session = image["session"]
    status, _, before = call(url, f"/api/sessions/{session}/slices/0.png")
    assert status == 200 and not red_outline(before).any()

    first = click(url, session, 0, 58, 50)
    state = click(url, session, 0, 20, 80, label=0)
    assert state["slice"] == 0 and state["clicks"] == {"0": [[58, 50, 1], [20, 80, 0]]}
    assert state["pixels"] > 0 and 0 < first["iou"] and 0 < state["iou"]

    status, headers, content = call(url, f"/api/sessions/{session}/mask")
    assert status == 200
    assert headers["Content-Disposition"] == 'attachment; filename="brain_mask.png"'
    mask = np.asarray(Image.open(io.BytesIO(content)))
    assert mask.shape == (99, 117) and set(np.unique(mask)) == {0, 255}
    assert np.count_nonzero(mask) == state["pixels"]
    # the clicks reach the predictor as they were given: x along columns, y along rows, labels kept, in order
    expected = app.predictor.session(files["brain.png"])
    expected.click(58, 50)
    np.testing.assert_array_equal(mask > 0, expected.click(20, 80, label=0).mask)

    _, _, after = call(url, f"/api/sessions/{session}/slices/0.png")
    outline = red_outline(after)
    assert outline.any() and (mask[outline] == 255).all()

    undone = json.loads(call(url, f"/api/sessions/{session}/undo", {})[2])
    assert undone == {**first, "clicks": {"0": [[58, 50, 1]]}}
    assert json.loads(call(url, f"/api/sessions/{session}/start-over", {})[2])["clicks"] == {}
    assert not Image.open(io.BytesIO(call(url, f"/api/sessions/{session}/mask")[2])).getbbox()


def test_a_volume_gets_a_nifti_mask_in_its_geometry(url, files, tmp_path):
    status, image = upload(url, [files["brain.nii.gz"]], modality="mri")
    assert status == 200
    assert (image["height"], image["width"], image["slices"], image["volume"]) == (99, 117, 95, True)
    assert image["mask_name"] == "brain_mask.nii.gz"
    state = click(url, image["session"], AXIAL_SLICE, 58, 50)

    status, _, content = call(url, f"/api/sessions/{image['session']}/mask")
    assert status == 200
    (tmp_path / "mask.nii.gz").write_bytes(content)
    written, source = nib.load(tmp_path / "mask.nii.gz"), nib.load(files["brain.nii.gz"])
    mask = np.asanyarray(written.dataobj)
    assert mask.shape == source.shape and mask.dtype == np.uint8
    np.testing.assert_allclose(written.affine, source.affine)
    assert np.count_nonzero(mask) == state["pixels"] > 0
    assert np.count_nonzero(mask[:, :, AXIAL_SLICE]) == np.count_nonzero(mask)  # only the clicked slice


def test_the_files_of_a_dicom_series_upload_as_one_volume(url, app, tmp_path):
    write_dicom_series(tmp_path / "ct", hounsfield_volume((40, 36, 4)))
    status, image = upload(url, sorted((tmp_path / "ct").iterdir()))
    assert status == 200
    assert (image["name"], image["height"], image["width"], image["slices"]) == ("series", 40, 36, 4)
    click(url, image["session"], 2, 10, 12)

    status, headers, content = call(url, f"/api/sessions/{image['session']}/mask")
    assert headers["Content-Disposition"] == 'attachment; filename="series_mask.nii.gz"'
    (tmp_path / "mask.nii.gz").write_bytes(content)
    mask = np.asanyarray(nib.load(tmp_path / "mask.nii.gz").dataobj)
    expected = app.predictor.session(tmp_path / "ct").click(10, 12, z=2).mask
    np.testing.assert_array_equal(mask > 0, expected)


@pytest.mark.parametrize(
    "name, modality, status, message",
    [
        ("noise.png", "", 400, "noise.png: cannot read the picture (cannot identify image file"),
        ("truncated.nii.gz", "mri", 400, "truncated.nii.gz: the gzip data is damaged"),
        ("brain.nii.gz", "", 400, "brain.nii.gz: say which intensity normalisation applies"),
        ("brain.png", "xray", 400, "unknown modality 'xray'; expected one of ct, mri"),
    ],
)
def test_bad_uploads_get_one_line_that_names_the_file(url, app, files, name, modality, status, message):
    answer = upload(url, [files[name]], modality)
    assert answer[0] == status
    assert answer[1]["error"].startswith(message)
    assert "\n" not in answer[1]["error"] and str(app.workdir) not in answer[1]["error"]


def test_bad_requests_get_one_line(url, files):
    _, image = upload(url, [files["brain.png"]])
    session = f"/api/sessions/{image['session']}"
    errors = {
        "outside": call(url, f"{session}/click", {"slice": 0, "x": 500, "y": 5, "label": 1}),
        "slice": call(url, f"{session}/click", {"slice": 3, "x": 5, "y": 5, "label": 1}),
        "label": call(url, f"{session}/click", {"slice": 0, "x": 5, "y": 5, "label": 2}),
        "undo": call(url, f"{session}/undo", {}),
        "json": call(url, f"{session}/click", b"{not json"),
        "session": call(url, "/api/sessions/nosuchsession/slices/0.png"),
        "action": call(url, f"{session}/explode", {}),
        "path": call(url, "/etc/passwd"),
        "form": call(url, "/api/upload", b"x", "text/plain"),
    }
    messages = {key: (status, json.loads(body)["error"]) for key, (status, _, body) in errors.items()}
    assert messages["outside"][0] == 400 and "lies outside the 117 x 99" in messages["outside"][1]
    assert messages["slice"] == (400, "slice 3 does not exist; brain.png has slices 0 to 0")
    assert messages["label"] == (400, "a click's label is 1 (object) or 0 (background), got 2")
    assert messages["undo"] == (400, "brain.png: no click to undo")
    assert messages["action"] == (404, f"nothing to post at {session}/explode")
    assert messages["json"][0] == 400 and messages["json"][1].startswith("the request is not JSON")
    assert messages["session"][0] == 404 and "no image has session 'nosuchsession'" in messages["session"][1]
    assert messages["path"] == (404, "nothing at /etc/passwd")
    assert messages["form"] == (400, "upload the file as multipart/form-data (an HTML form)")


def test_an_upload_over_the_servers_limit_is_refused(app, files):
    with DemoServer(app, max_upload_bytes=1000) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        status, answer = upload(server.url, [files["brain.png"]])
        server.shutdown()
        thread.join()
    assert status == 413
    assert answer["error"].startswith("the upload has ") and answer["error"].endswith("limit of 1000 bytes")


def test_an_adapter_is_loaded_with_its_base_model(sam, tmp_path, files):
    _, adapter = saved_model(sam, tmp_path, depth_adapter=False)
    predictor = load_demo_predictor(adapter=adapter, model=tmp_path / "sam")
    with DemoApp(predictor) as app:
        session = app.upload([("brain.png", files["brain.png"].read_bytes())])
        state = app.click(session.id, 0, 58, 50, 1)
        mask = np.asarray(Image.open(app.mask_file(session.id))) > 0
    # one click is a plain prompt
    expected = predictor.predict_file(files["brain.png"], SlicePrompt(points=[(58, 50)], labels=[1])).mask
    np.testing.assert_array_equal(mask, expected)
    assert state["pixels"] == np.count_nonzero(expected)


def test_an_adapter_that_names_no_base_model_runs_on_the_shipped_sam(tmp_path, files):
    # the offline demo trains on the shipped SAM and names no base model (its config carries no path)
    model = get_peft_model(SamModel.from_pretrained(default_model_path()), MedSAConfig())
    randomize_adapters(model).save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": ""}))

    prompt = SlicePrompt(points=[(58, 50)], labels=[1])
    mask = load_demo_predictor(adapter=tmp_path / "adapter").predict_file(files["brain.png"], prompt).mask
    expected = MedSAPredictor.from_pretrained(tmp_path / "adapter", default_model_path()).predict_file(
        files["brain.png"], prompt
    )
    np.testing.assert_array_equal(mask, expected.mask)
    plain = load_demo_predictor().predict_file(files["brain.png"], prompt)  # SAM alone: the adapter is used above
    assert not np.array_equal(plain.mask, expected.mask)


def test_demo_command_serves_the_page_and_reports_a_missing_model(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "no-sam")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"medsa-peft demo: error: cannot load the SAM model '{tmp_path / 'no-sam'}'")
    assert len(error.strip().splitlines()) == 1

    command = [sys.executable, "-m", "medsa_peft.cli", "demo", "--port", "0"]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as demo:
        try:
            line = demo.stdout.readline()
            assert line.startswith("medsa-peft demo: open http://127.0.0.1:")
            served = line.split()[3]
            status, headers, page = call(served, "/")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert b'<script src="/static/app.js">' in page
        finally:
            demo.terminate()


# The page in a real browser.


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    """Headless Chromium driven by selenium through Debian's chromedriver (no driver or browser download)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(
            f"the browser tests need Debian's chromium and chromium-driver, missing {', '.join(missing)}: "
            "apt-get install -y chromium chromium-driver (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    for flag in [*flags.split(), "--disable-component-update", "--disable-sync", "--window-size=1200,1000"]:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="medsa-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, what: str, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda _: condition(), message=f"waited {timeout} s for {what}")


def click_pixel(driver, x: int, y: int, shift: bool = False) -> None:
    """Click the centre of pixel (x, y) of the picture the page shows, however it is scaled."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    view = driver.find_element("id", "view")
    scale = view.rect["width"] / int(view.get_property("naturalWidth"))
    offset_x = (x + 0.5) * scale - view.rect["width"] / 2
    offset_y = (y + 0.5) * scale - view.rect["height"] / 2
    actions = ActionChains(driver)
    if shift:
        actions.key_down(Keys.SHIFT)
    actions.move_to_element_with_offset(view, round(offset_x), round(offset_y)).click()
    if shift:
        actions.key_up(Keys.SHIFT)
    actions.perform()


def test_the_page_segments_a_clicked_picture_and_downloads_the_mask(browser, downloads, url, app, files):
    browser.get(url)
    assert browser.title == "Med-SA demo"
    options = browser.find_elements("css selector", "#modality option")
    assert [option.get_property("value") for option in options] == ["", *MODALITIES]

    browser.find_element("id", "file").send_keys(str(files["brain.png"]))
    view = browser.find_element("id", "view")
    wait(browser, lambda: view.get_property("complete") and view.get_property("naturalWidth") == 117, "the picture")
    shown = view.get_property("src")

    click_pixel(browser, 58, 50)
    wait(browser, lambda: view.get_property("src") != shown, "the picture with the mask")
    click_pixel(browser, 20, 80, shift=True)
    status = browser.find_element("id", "status")
    wait(browser, lambda: "2 click(s), " in status.text and "pixel(s) in the mask" in status.text, "the second mask")
    markers = browser.find_elements("css selector", "#markers .marker")
    assert [marker.get_attribute("class") for marker in markers] == ["marker object", "marker background"]
    assert browser.find_element("id", "message").is_displayed() is False

    _, _, picture = call(view.get_property("src"), "")
    outline = red_outline(picture)
    assert outline.any()

    browser.find_element("id", "download").click()
    downloaded = downloads / "brain_mask.png"
    wait(browser, downloaded.is_file, "the downloaded mask")
    mask = np.asarray(Image.open(downloaded)) > 0
    expected = app.predictor.session(files["brain.png"])
    expected.click(58, 50)
    np.testing.assert_array_equal(mask, expected.click(20, 80, label=0).mask)
    assert mask.any() and mask[outline].all()

    browser.find_element("id", "undo").click()
    wait(browser, lambda: len(browser.find_elements("css selector", "#markers .marker")) == 1, "one click left")
    wait(browser, lambda: "1 click(s), " in status.text, "the mask of the first click")


@pytest.mark.parametrize(
    "name, message",
    [
        ("noise.png", "noise.png: cannot read the picture"),
        ("truncated.nii.gz", "truncated.nii.gz: the gzip data is damaged"),
    ],
)
def test_the_page_shows_bad_uploads_as_a_message(browser, url, app, files, name, message):
    browser.get(url)
    browser.find_element("id", "modality").send_keys("mri")
    browser.find_element("id", "file").send_keys(str(files[name]))
    shown = browser.find_element("id", "message")
    wait(browser, shown.is_displayed, "the error message")
    assert shown.text.startswith(message)
    assert "Traceback" not in browser.page_source and str(app.workdir) not in shown.text
    assert not browser.find_element("id", "view").get_property("src")
