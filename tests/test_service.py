"""The web service against a real uvicorn server on loopback, through an HTTP client."""
import csv
import io
import os
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web service is the `serve` extra")
uvicorn = pytest.importorskip("uvicorn", reason="the web service is the `serve` extra")
httpx = pytest.importorskip("httpx", reason="the web service is the `serve` extra")

from classifiers.estimators.options import NOT_ASSESSABLE  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from covidct_core.errors import SettingsError  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from service.app import build_app  # noqa: E402
from service.settings import ServeSettings  # noqa: E402
from tests.conftest import SHARED, needs_shared  # noqa: E402
from tests.helpers import ct_like, make_dicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

pytestmark = pytest.mark.slow  # a real server, a fitted model
TOKEN = "s3cret-token-for-tests-0123456789"
STUDY = SHARED / "data" / "dicom-studies" / "Normal" / "normal001"


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def png_bytes(seed, covid=True):
    buffer = io.BytesIO()
    ct_like(seed, covid).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(logreg_model):
    root, path = logreg_model
    return load_model(path, RunContext(root / "features"))


@pytest.fixture(scope="module")
def open_server(model):
    with Server(build_app(model, ServeSettings(max_request_mb=5, max_files=20, heatmap_method="gradcam"))) as url:
        yield url


@pytest.fixture(scope="module")
def token_server(model):
    with Server(build_app(model, ServeSettings(token=TOKEN))) as url:
        yield url


def test_page_health_model_card_and_docs_are_served_offline(open_server):
    page = httpx.get(open_server + "/").text
    assert "Research use only" in page and "<script src=\"/static/app.js\">" in page
    for asset in ("/static/app.js", "/static/style.css", "/", "/docs"):
        text = httpx.get(open_server + asset).text
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, asset
    assert httpx.get(open_server + "/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(open_server + "/healthz").json()["status"] == "ok"
    card = httpx.get(open_server + "/api/v1/model").json()
    assert card["classifier"] == "logreg" and card["backbones"][0]["backbone"] == "mobilenetv2"
    assert card["research_use_only"] and "study_aggregation" in card
    assert "/api/v1/predict" in httpx.get(open_server + "/openapi.json").json()["paths"]


def test_good_and_bad_files_each_get_their_own_answer(open_server, tmp_path):
    hu = np.full((64, 64), -1000.0)
    hu[16:48, 16:48] = -600.0
    dicom = make_dicom(tmp_path / "PID98765_slice.dcm", hu, patient_id="PID98765")
    files = [("files", ("a.png", png_bytes(1), "image/png")),
             ("files", ("PID98765_slice.dcm", dicom.read_bytes(), "application/dicom")),
             ("files", ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")),
             ("files", ("empty.jpg", b"", "image/jpeg")),
             ("files", ("notes.txt", b"hello", "text/plain"))]
    response = httpx.post(open_server + "/api/v1/predict", files=files, data={"heatmaps": "true"}, timeout=120)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [i["name"] for i in images] == ["a.png", "[patient]_slice.dcm", "broken.png", "empty.jpg", "notes.txt"]
    assert 0 <= images[0]["p_covid"] <= 1 and images[0]["label"] in ("COVID", "NonCOVID")
    assert images[0]["heatmap"].startswith("data:image/jpeg;base64,") and images[0]["image"]
    assert all(i["error"] and i["p_covid"] is None for i in images[2:])
    assert "PID98765" not in response.text


def test_uploads_are_deleted_after_the_response(open_server):
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("covidct-upload-")}
    assert httpx.post(open_server + "/api/v1/predict", files=[("files", ("a.png", png_bytes(2), "image/png"))],
                      timeout=60).status_code == 200
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("covidct-upload-")}
    assert after <= before


def zip_of(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def symlink_member(name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


@pytest.mark.parametrize("members, status, message", [
    ([("../evil.png", b"x")], 400, "outside the archive"),
    ([("/etc/evil.png", b"x")], 400, "outside the archive"),
    ([symlink_member("link.png", "/etc/passwd")], 400, "symlink"),
    ([("bomb.dcm", b"\0" * (20 * 2**20))], 413, "zip bomb"),
])
def test_dangerous_zips_are_refused(open_server, members, status, message):
    response = httpx.post(open_server + "/api/v1/predict",
                          files=[("files", ("study.zip", zip_of(members), "application/zip"))], timeout=60)
    assert response.status_code == status and message in response.json()["detail"]


def test_limits_give_a_clear_413(open_server):
    big = httpx.post(open_server + "/api/v1/predict", files=[("files", ("big.png", b"\0" * (6 * 2**20), "image/png"))])
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    many = httpx.post(open_server + "/api/v1/predict",
                      files=[("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(21)])
    assert many.status_code == 413 and "too many files" in many.json()["detail"]


def test_the_token_is_required_when_set(token_server):
    files = [("files", ("a.png", png_bytes(3), "image/png"))]
    assert httpx.post(token_server + "/api/v1/predict", files=files).status_code == 401
    wrong = httpx.post(token_server + "/api/v1/predict", files=files, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(token_server + "/api/v1/model").status_code == 401
    ok = httpx.post(token_server + "/api/v1/predict", files=files, headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=60)
    assert ok.status_code == 200 and ok.json()["images"][0]["p_covid"] is not None
    assert httpx.get(token_server + "/healthz").status_code == 200  # for load balancers


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    with pytest.raises(SettingsError, match="needs --token-file"):
        ServeSettings(host="0.0.0.0")
    (tmp_path / "t").write_text("short")
    with pytest.raises(SettingsError, match="too short"):
        ServeSettings(token_file=str(tmp_path / "t"))
    (tmp_path / "t").write_text(TOKEN)
    assert ServeSettings(host="0.0.0.0", token_file=str(tmp_path / "t")).token == TOKEN
    assert ServeSettings(host="0.0.0.0", token=TOKEN).token == TOKEN


def test_concurrent_requests_queue_and_all_succeed(open_server):
    def one(i):
        response = httpx.post(open_server + "/api/v1/predict", timeout=300,
                              files=[("files", (f"c{i}.png", png_bytes(100 + i % 4), "image/png"))])
        return response.status_code, response.json()["images"][0]["p_covid"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert all(status == 200 for status, _ in results)
    by_image = {}
    for i, (_, p) in enumerate(results):
        by_image.setdefault(i % 4, set()).add(round(p, 6))
    assert all(len(ps) == 1 for ps in by_image.values())  # the same image, the same answer


def test_new_slices_of_concurrent_requests_share_cnn_batches_and_a_bad_file_fails_alone(model):
    app = build_app(model, ServeSettings(max_batch=16, batch_wait_ms=50))
    with Server(app) as url:
        def one(i):
            files = [("files", (f"n{i}.png", png_bytes(5000 + i), "image/png"))]
            if i % 2:
                files.append(("files", (f"bad{i}.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")))
            return httpx.post(url + "/api/v1/predict", files=files, timeout=300)

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, range(8)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for i, r in enumerate(responses):
        images = r.json()["images"]
        assert images[0]["name"] == f"n{i}.png" and images[0]["p_covid"] is not None and images[0]["error"] is None
        assert len(images) == 1 + i % 2 and all(im["error"] and im["p_covid"] is None for im in images[1:])
    assert max(app.state.service.batcher.batches) > 1  # requests' new slices ran together
    for r in responses:  # where each request's time went, for the load bench
        stages = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
        assert {"save", "decode", "queue", "cnn", "score", "pictures", "total"} <= set(stages)
        assert float(stages["total"]) >= float(stages["cnn"]) + float(stages["score"]) > 0


def test_a_zipped_study_with_heatmaps_is_answered(open_server, model, monkeypatch, tmp_path):
    """A study's top slices get their heatmaps under the same CNN lock as the study itself, and only
    where the study can be assessed: one unlike the training images gets its slices without heatmaps."""
    from tests.helpers import write_series

    paths = write_series(tmp_path / "ward-3", generate_uid(), n=6, prefix="slice")  # unlike the training images
    zipped = zip_of([(f"ward-3/{p.name}", p.read_bytes()) for p in paths])

    def study():
        response = httpx.post(open_server + "/api/v1/predict", data={"heatmaps": "true"}, timeout=300,
                              files=[("files", ("study.zip", zipped, "application/zip"))])
        assert response.status_code == 200, response.text
        (found,) = response.json()["studies"][0]["studies"]
        assert found["p_covid"] is not None and len(found["top_slices"]) == 3
        return found

    unlike = study()
    assert unlike["answer"] == NOT_ASSESSABLE and "unlike the training images" in unlike["answer_note"]
    assert all(t["heatmap"] is None and t["image"].startswith("data:image/") for t in unlike["top_slices"])
    monkeypatch.setattr(model.bundle, "ood", None)  # a model without a detector assesses every study
    assessed = study()
    assert assessed["answer"] != NOT_ASSESSABLE
    assert all(t["heatmap"].startswith("data:image/jpeg") for t in assessed["top_slices"])


@pytest.mark.integration
@needs_shared(STUDY)
def test_a_zipped_dicom_study_gets_one_answer(token_server):
    members = [(f"normal001/{p.name}", p.read_bytes()) for p in sorted(STUDY.glob("*.dcm"))]
    response = httpx.post(token_server + "/api/v1/predict", timeout=600, headers={"Authorization": f"Bearer {TOKEN}"},
                          files=[("files", ("ward-7.zip", zip_of(members), "application/zip"))])
    assert response.status_code == 200, response.text
    (upload,) = response.json()["studies"]
    (study,) = upload["studies"]
    assert study["study"] == "ward-7/normal001" and study["n_slices"] == 52 and 0 < study["n_used"] < 52
    assert 0 <= study["p_covid"] <= 1 and len(study["top_slices"]) == 3
    assert "99C628-ASAD" not in response.text  # the header's patient ID, also in the file names


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_a_real_browser_uploads_a_slice_and_sees_the_answer_and_heatmap(open_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser (test extra)")
    from PIL import Image

    slice_path = tmp_path / "slice.png"
    slice_path.write_bytes(png_bytes(7))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(open_server + "/")
        assert "Research use only" in page.inner_text("body")
        page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
        page.set_input_files("#files", str(slice_path))
        page.keyboard.press("Tab")  # the form works from the keyboard too
        page.focus("#send")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent === 'Done.'", timeout=120_000)
        card = page.inner_text("#results")
        assert "slice.png" in card and "P(COVID)" in card and ("COVID" in card)
        assert page.evaluate("document.querySelector('img.heatmap').naturalWidth") > 0
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not blank


def test_every_bad_input_kind_of_predict_gets_its_own_error(open_server, tmp_path):
    """The same files as tests/test_bad_inputs.py, uploaded: each answered, none a 500."""
    from tests.test_bad_inputs import BAD

    files, expected = [], {}
    for name, (make, reason) in BAD.items():
        if name == "broken-link.png":  # a link cannot be uploaded; its target is what a browser sends
            continue
        make(tmp_path / name)
        files.append(("files", (name, (tmp_path / name).read_bytes(), "application/octet-stream")))
        expected[name] = reason
    files.append(("files", ("good.png", png_bytes(5), "image/png")))
    response = httpx.post(open_server + "/api/v1/predict", files=files, timeout=120)
    assert response.status_code == 200, response.text
    answers = {i["name"]: i for i in response.json()["images"]}
    for name, reason in expected.items():
        assert reason in answers[name]["error"] and answers[name]["p_covid"] is None, (name, answers[name])
    assert answers["good.png"]["error"] is None


def test_a_field_declared_once_reaches_the_csv_the_api_schema_the_report_and_the_page(model, logreg_model,
                                                                                       monkeypatch, tmp_path):
    """prediction_record.py is the one declaration: a field added there (and nowhere else) is a
    column of predictions.csv, of the report's table and of a study's slice CSV, a typed property of
    the API's schema and its answers (images and a study's top slices), and a line of the web page;
    a study field added there is a column of studies.csv, a line of the study page and a property of
    the API's studies."""
    from classifiers.presentation.html_report import render_html
    from classifiers.records import prediction_record as record
    from classifiers.workflows.predict import predict_and_write
    from classifiers.workflows.report import collect
    from classifiers.workflows.studies import predict_studies_and_write, study_report_to_html
    from tests.helpers import write_series

    extra = record.RecordField("declared_once", str, "A field only this test declares.",
                               get=lambda row: None if row.p_covid is None else "seen")
    per_study = record.RecordField("study_declared_once", int, "A study field only this test declares.",
                                   get=lambda result: len(result.scored))
    monkeypatch.setattr(record, "SLICE", record.SLICE.with_field(extra, after="p_covid"))
    monkeypatch.setattr(record, "STUDY", record.STUDY.with_field(per_study))
    folder = tmp_path / "scans"
    folder.mkdir()
    ct_like(11, True).save(folder / "a.png")
    report = predict_and_write(model, folder, out=tmp_path / "p.csv")
    header, first = (tmp_path / "p.csv").read_text().splitlines()[:2]
    assert header.split(",")[:6] == ["path", "answer", "finding", "answer_note", "p_covid", "declared_once"]
    assert list(csv.DictReader(open(tmp_path / "p.csv")))[0]["declared_once"] == "seen"
    assert report.rows[0].p_covid is not None
    assert "declared_once" in render_html(collect(model, folder, heatmaps=0))
    studies = tmp_path / "studies"
    write_series(studies / "case-1", generate_uid(), n=4)
    predict_studies_and_write(model, studies, out=tmp_path / "slices.csv")
    slices, table = (list(csv.DictReader(open(tmp_path / name))) for name in ("slices.csv", "studies.csv"))
    assert {r["declared_once"] for r in slices} == {"seen"} and table[0]["study_declared_once"] == "4"
    _, page = study_report_to_html(model, studies, out=tmp_path / "studies.html", heatmaps=False)
    assert "study_declared_once" in page.read_text()
    zipped = tmp_path / "study.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in (studies / "case-1").iterdir():
            archive.write(path, path.name)
    with Server(build_app(model, ServeSettings())) as url:
        schema = httpx.get(url + "/openapi.json").json()["components"]["schemas"]
        assert schema["ImageResult"]["properties"]["declared_once"]["description"] == extra.help
        assert "study_declared_once" in schema["StudyResult"]["properties"]
        assert "declared_once" in schema["TopSlice"]["properties"]
        listed = [f["name"] for f in httpx.get(url + "/api/v1/fields").json()["image"]]
        assert listed.index("declared_once") == listed.index("p_covid") + 1
        answer = httpx.post(url + "/api/v1/predict", timeout=120,
                            files=[("files", ("a.png", (folder / "a.png").read_bytes(), "image/png")),
                                   ("files", ("study.zip", zipped.read_bytes(), "application/zip"))]).json()
        assert answer["images"][0]["declared_once"] == "seen"
        study = answer["studies"][0]["studies"][0]
        assert study["study_declared_once"] == 4 and study["top_slices"][0]["declared_once"] == "seen"
        if CHROMIUM is None:
            return
        sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser (test extra)")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url + "/")
            page.set_input_files("#files", str(folder / "a.png"))
            page.click("#send")
            page.wait_for_function("document.getElementById('status').textContent === 'Done.'", timeout=120_000)
            page.click("article[aria-label='image a.png'] details summary")  # "All fields", closed at first
            assert page.inner_text("dd[data-field=declared_once]") == "seen"
            assert page.get_attribute("dt[title='A field only this test declares.']", "title")
            browser.close()
