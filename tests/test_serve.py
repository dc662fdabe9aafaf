"""The local inspection app (``skanomaly serve``): its HTTP API, and the page
driven in a real headless Chromium (skipped, with one line, without it)."""

import json
import shutil
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from skanomaly import make_patchcore
from skanomaly.calibration import conformal_pvalues, pixel_threshold
from skanomaly.cli import main
from skanomaly.datasets import make_synthetic
from skanomaly.serve import MAP_SIDE, PIXEL_RATES, make_server

SIZE = 48


@pytest.fixture(scope="module")
def data():
    return make_synthetic(40, 10, image_size=SIZE, random_state=0)


@pytest.fixture(scope="module")
def pipe(data):
    # 30 normal images, 10 held out: enough for a 10% false-alarm rate.
    return make_patchcore(image_size=SIZE, contamination=0.1, random_state=0).set_params(
        knndetector__calibration_size=10).fit(data.images[:30])


@pytest.fixture(scope="module")
def folder(data, tmp_path_factory):
    """Six test images as PNG files (three normal, three defective) and one
    truncated PNG."""
    root = tmp_path_factory.mktemp("images")
    normal = [i for i in range(30, 50) if data.target[i] == 1][:3]
    defective = [i for i in range(30, 50) if data.target[i] == -1][:3]
    for i in normal + defective:
        kind = "good" if data.target[i] == 1 else "bad"
        Image.fromarray(data.images[i]).save(root / f"{i:03d}_{kind}.png")
    whole = (root / f"{normal[0]:03d}_good.png").read_bytes()
    (root / "zz_truncated.png").write_bytes(whole[: len(whole) // 2])
    return root


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _post(url, data, name):
    request = urllib.request.Request(url + "api/images", data=data, method="POST",
                                     headers={"X-Filename": name})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _wait_scanned(server, timeout=60):
    end = time.monotonic() + timeout
    while server.pending and time.monotonic() < end:
        time.sleep(0.1)
    assert server.pending == 0, "the folder scan did not finish"


def _png_bytes(image):
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(pipe, folder):
    server = make_server(pipe, [folder], port=0).start()
    _wait_scanned(server)
    yield server
    server.close()


def test_the_model_endpoint_gives_the_estimators_thresholds(server, pipe):
    info = _get(server.url + "api/model")
    assert server.server_address[0] == "127.0.0.1"  # this machine only, by default
    assert info["offset"] == pipe[-1].offset_
    assert info["contamination"] == 0.1 and info["has_maps"]
    rates = dict((r, t) for r, t in info["pixel_rates"])
    assert set(PIXEL_RATES) <= set(rates)
    for rate in (0.01, 0.1):
        assert rates[rate] == pixel_threshold(pipe, rate)


def test_the_folder_scan_scores_every_file_and_names_the_bad_one(server, folder, pipe):
    body = _get(server.url + "api/results")
    assert body["pending"] == 0
    by_name = {r["name"]: r for r in body["results"]}
    assert len(by_name) == 7 and body["total"] >= 7
    # A polling page gets each result once.
    later = _get(server.url + f"api/results?since={body['total']}")
    assert later["results"] == [] and later["total"] == body["total"]
    assert "zz_truncated.png" in by_name["zz_truncated.png"]["error"]
    good = sorted(folder.glob("*_good.png"))[0]
    expected = pipe.score_samples([str(good)])[0]
    assert by_name[good.name]["score"] == pytest.approx(expected, rel=1e-5)
    assert by_name[good.name]["p_value"] == pytest.approx(conformal_pvalues(pipe, [str(good)])[0])


def test_an_upload_is_scored_as_the_estimator_scores_it(server, pipe, data):
    image = data.images[45]
    status, result = _post(server.url, _png_bytes(image), "part%20one.png")
    assert status == 200
    assert result["name"] == "part one.png" and result["source"] == "upload"
    decoded = np.asarray(Image.open(__import__("io").BytesIO(_png_bytes(image))))
    assert result["score"] == pytest.approx(pipe.score_samples([decoded])[0], rel=1e-5)
    # The map the page thresholds: float32, at most MAP_SIDE on a side.
    side = result["map"]
    values = np.frombuffer(__import__("base64").b64decode(side["data"]), dtype="<f4")
    assert values.size == side["width"] * side["height"] and max(side["width"], side["height"]) <= MAP_SIDE
    assert result["overlay"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("payload, why", [
    (b"not an image at all", "not a readable image"),
    (b"", "empty"),
])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, data, payload, why):
    status, result = _post(server.url, payload, "notes.txt")
    assert status == 400 and "notes.txt" in result["error"] and why in result["error"]
    status, _ = _post(server.url, _png_bytes(data.images[31]), "after.png")
    assert status == 200


def test_a_truncated_upload_is_refused_by_name(server, folder):
    status, result = _post(server.url, (folder / "zz_truncated.png").read_bytes(), "cut.png")
    assert status == 400 and "cut.png" in result["error"]


def test_nothing_is_served_from_disk(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "api/results?since=-1", timeout=10)
    assert info.value.code == 400
    for path in ("../../etc/passwd", "serve.py", "api/../../etc/hostname", "zz_truncated.png"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + path, timeout=10)
        assert info.value.code == 404


def test_an_unfitted_pipeline_or_a_missing_folder_is_refused(pipe, tmp_path):
    with pytest.raises(ValueError, match="fitted skanomaly pipeline"):
        make_server(make_patchcore(), port=0)
    with pytest.raises(ValueError, match="nowhere"):
        make_server(pipe, [tmp_path / "nowhere"], port=0)


def test_the_command_line_refuses_exports_and_a_taken_port(pipe, tmp_path, capsys):
    import joblib

    model = tmp_path / "m.joblib"
    joblib.dump(pipe, model)
    assert main(["serve", str(tmp_path / "m.onnx")]) == 1
    assert "not an ONNX export" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(model), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert main(["serve", str(model), "--save-to", str(model)]) == 1
    assert "is the model being served" in capsys.readouterr().err


def _post_json(url, payload, origin=None):
    headers = {"Content-Type": "application/json"}
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(url + "api/thresholds", data=json.dumps(payload).encode(),
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_saving_thresholds_writes_a_model_that_predicts_with_them(pipe, data, tmp_path):
    from skanomaly.persistence import load_model

    out = tmp_path / "tuned.joblib"
    server = make_server(pipe, port=0, save_to=out).start()
    try:
        # A raw image threshold between two test scores and a pixel rate.
        scores = np.sort(pipe.score_samples(data.images[30:]))
        offset = float((scores[3] + scores[4]) / 2)
        status, info = _post_json(server.url, {"offset": offset, "pixel_false_alarm_rate": 0.2})
        assert status == 200 and info["saved"] == str(out)
        tuned = load_model(out)
        assert np.sum(tuned.predict(data.images[30:]) == -1) == 4
        assert pixel_threshold(tuned) == pytest.approx(pixel_threshold(pipe, 0.2))
        assert _get(server.url + "api/model")["offset"] == offset  # the page's next load
        # As a rate: predict's conformal rule at that rate.
        status, info = _post_json(server.url, {"false_alarm_rate": 0.3})
        tuned = load_model(out)
        assert status == 200 and tuned[-1].contamination == 0.3
        p_values = conformal_pvalues(tuned, data.images[30:])
        np.testing.assert_array_equal(tuned.predict(data.images[30:]), np.where(p_values <= 0.3, -1, 1))
        # A bad value changes nothing, in the file or in the served model.
        before = out.read_bytes()
        for bad in ({"false_alarm_rate": 0.9}, {"offset": "x"}, {"color": 1},
                    {"false_alarm_rate": 0.1, "offset": 1.0}):
            status, body = _post_json(server.url, bad)
            assert status == 400 and "not saved" in body["error"], bad
        assert out.read_bytes() == before and server.pipeline[-1].contamination == 0.3
        # Another site's page cannot overwrite the model.
        status, body = _post_json(server.url, {"false_alarm_rate": 0.1}, origin="http://evil.example")
        assert status == 403 and out.read_bytes() == before
    finally:
        server.close()
    assert pipe[-1].contamination == 0.1, "the caller's pipeline was changed"


def test_saving_needs_a_file_to_save_to(server):
    status, body = _post_json(server.url, {"false_alarm_rate": 0.1})
    assert status == 403 and "--save-to" in body["error"]


def test_an_image_level_method_is_served_without_maps(data):
    from skanomaly import make_dfkde

    pipe = make_dfkde(image_size=SIZE, random_state=0).fit(data.images[:30])
    server = make_server(pipe, port=0).start()
    try:
        info = _get(server.url + "api/model")
        assert not info["has_maps"] and info["pixel_rates"] == [] and info["pixel_threshold"] is None
        status, result = _post(server.url, _png_bytes(data.images[45]), "part.png")
        assert status == 200 and "map" not in result
        assert result["score"] == pytest.approx(pipe.score_samples(
            [np.asarray(Image.open(__import__("io").BytesIO(_png_bytes(data.images[45]))))])[0], rel=1e-5)
    finally:
        server.close()


# --- in a real browser -------------------------------------------------------

def _chromium():
    """A headless Chromium driven by selenium, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser tests: selenium is not installed (pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("browser tests: no chromium/chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1300,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not look for a driver online
    driver = _chromium()
    yield driver
    driver.quit()


def _wait(condition, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def _flagged(driver):
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.ID, "counts").get_attribute("data-flagged"))


def test_the_page_shows_scores_and_thresholds_move_without_the_model(pipe, folder, data,
                                                                    browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = make_server(pipe, [folder], port=0).start()
    try:
        browser.get(server.url)
        _wait(lambda: "6 scored, 1 unreadable" in browser.find_element(By.ID, "status").text)
        # The unreadable folder file is named on the page.
        assert "zz_truncated.png" in browser.find_element(By.ID, "messages").text
        # A score read from the page is the server's (the estimator's) score.
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        first = rows[0]
        name = first.find_element(By.CSS_SELECTOR, "td.name").text
        result = next(r for r in server.results if r["name"] == name)
        assert float(first.find_element(By.CSS_SELECTOR, "td.score").text) == pytest.approx(
            result["score"], abs=1e-4)
        # Sorted by score, ascending (most anomalous first).
        shown = [float(r.find_element(By.CSS_SELECTOR, "td.score").text) for r in rows
                 if "failed" not in r.get_attribute("class")]
        assert shown == sorted(shown)

        calls = server.n_model_calls
        browser.find_element(By.CSS_SELECTOR, "input[name=image-mode][value=raw]").click()
        slider = browser.find_element(By.ID, "image-slider")
        slider.send_keys(Keys.END)  # flag every score below the highest: all six
        assert _wait(lambda: _flagged(browser) == 6)
        slider.send_keys(Keys.HOME)
        assert _wait(lambda: _flagged(browser) == 0)
        # The pixel threshold redraws the masks: their total area grows as
        # the pixel false-alarm rate is loosened.
        def total_area():
            cells = browser.find_elements(By.CSS_SELECTOR, "#results tbody td.area")
            return sum(float(c.text) for c in cells if c.text)

        pixel = browser.find_element(By.ID, "pixel-slider")
        pixel.send_keys(Keys.HOME)  # the strictest rate
        time.sleep(0.3)
        strict = total_area()
        pixel.send_keys(Keys.END)  # the loosest
        _wait(lambda: total_area() > strict)
        assert server.n_model_calls == calls, "a threshold change called the model"

        # Drop in an image through the file input, then a bad file.
        upload = tmp_path / "new_part.png"
        upload.write_bytes(_png_bytes(data.images[46]))
        browser.find_element(By.ID, "upload").send_keys(str(upload))
        _wait(lambda: "7 scored" in browser.find_element(By.ID, "status").text)
        assert server.n_model_calls == calls + 1
        bad = tmp_path / "readme.txt"
        bad.write_text("not an image")
        browser.find_element(By.ID, "upload").send_keys(str(bad))
        _wait(lambda: "readme.txt" in browser.find_element(By.ID, "messages").text)
        browser.find_element(By.ID, "upload").send_keys(str(upload))  # still serving
        _wait(lambda: "8 scored" in browser.find_element(By.ID, "status").text)

        csv = browser.execute_script("return window.skanomalyCsv()").strip().splitlines()
        assert csv[0].startswith("image,score,p_value,label") and len(csv) == 1 + 10  # 8 scored, 2 unreadable
        browser.find_element(By.CSS_SELECTOR, "#results tbody tr").click()
        _wait(lambda: browser.find_elements(By.ID, "detail-mask"))
        assert browser.find_element(By.ID, "save-thresholds").get_attribute("disabled")
        shot = tmp_path / "app.png"
        browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 0
    finally:
        server.close()


def test_the_save_button_writes_what_the_sliders_show(pipe, folder, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from skanomaly.persistence import load_model

    out = tmp_path / "tuned.joblib"
    server = make_server(pipe, [folder], port=0, save_to=out).start()
    try:
        browser.get(server.url)
        _wait(lambda: "6 scored" in browser.find_element(By.ID, "status").text)
        browser.find_element(By.CSS_SELECTOR, "input[name=image-mode][value=raw]").click()
        slider = browser.find_element(By.ID, "image-slider")
        slider.send_keys(Keys.HOME)
        for _ in range(400):  # up from the lowest score until some, not all, are flagged
            if 0 < _flagged(browser) < 6:
                break
            slider.send_keys(Keys.ARROW_RIGHT)
        flagged = _flagged(browser)
        assert 0 < flagged < 6
        browser.find_element(By.ID, "pixel-slider").send_keys(Keys.END)
        chosen = browser.execute_script("return window.skanomalyChosenThresholds()")
        browser.find_element(By.ID, "save-thresholds").click()
        _wait(lambda: "saved to" in browser.find_element(By.ID, "messages").text)
        tuned = load_model(out)
        assert tuned[-1].offset_ == pytest.approx(chosen["offset"])
        paths = sorted(str(p) for p in folder.glob("*_*.png") if "truncated" not in p.name)
        assert np.sum(tuned.predict(paths) == -1) == flagged  # the model flags what the page did
        assert pixel_threshold(tuned) == pytest.approx(pixel_threshold(pipe, PIXEL_RATES[-1]))
    finally:
        server.close()
