"""The page a radiologist reads, in a real browser (Playwright driving Debian's Chromium): a zipped DICOM
study's card leads with the answer, the finding and the severity, shows the lungs and lesion of the slices
with the most lesion (named by InstanceNumber), the six zones with their percentages, and links to the
study's files; a study that is not assessable shows no P(COVID) heatmap."""
import shutil
import zipfile

import pytest

pytest.importorskip("fastapi", reason="the web service is the `serve` extra")
pytest.importorskip("uvicorn", reason="the web service is the `serve` extra")
httpx = pytest.importorskip("httpx", reason="the web service is the `serve` extra")
playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (test extra)")

from classifiers.workflows.model import load_model  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from service.app import build_app  # noqa: E402
from service.settings import ServeSettings  # noqa: E402
from tests.test_radiology_outputs import lung_windowed_series  # noqa: E402
from tests.test_service import Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's chromium)")]


def test_a_study_card_shows_the_lesion_evidence_zones_and_downloads(lesion_model, tmp_path):
    root, _, _, path = lesion_model
    model = load_model(path, RunContext(root / "features"))
    lung_windowed_series(tmp_path / "study" / "case-7", n=5)
    archive = tmp_path / "case-7.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for dcm in sorted((tmp_path / "study").rglob("*.dcm")):
            zf.write(dcm, str(dcm.relative_to(tmp_path / "study")))
    with Server(build_app(model, ServeSettings(heatmap_method="occlusion"))) as url, \
            playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page()
        page.goto(url + "/")
        page.set_input_files("#files", [str(archive)])  # the heatmaps box is ticked: they are asked for
        page.click("#send")
        page.wait_for_function("document.getElementById('status').textContent === 'Done.'", timeout=300_000)
        card = page.locator("article.study")
        assert card.count() == 1
        text = card.inner_text()
        assert "not assessable" in text and "Lesion finding" in text and "CT severity score" in text
        assert card.locator("img.lesion").count() >= 1  # the lungs and lesion of the slices with the most lesion
        assert "#" in card.locator(".strip figcaption").first.inner_text()  # named by InstanceNumber
        assert card.locator("table.zones td[data-zone]").count() == 6 and "%" in card.locator("table.zones").inner_text()
        assert card.locator("img.heatmap").count() == 0  # no P(COVID) evidence for a study not assessable
        links = {a.get_attribute("data-file"): a.get_attribute("href") for a in card.locator("a.download").all()}
        assert {"csv", "slices_csv", "nifti", "seg"} <= set(links)
        browser.close()
        got = httpx.get(url + links["nifti"])
        assert got.status_code == 200 and got.content[:2] == b"\x1f\x8b"  # a gzipped NIfTI
        assert httpx.get(url + links["csv"]).text.startswith("study,answer,finding")
        assert httpx.get(url + "/api/v1/files/" + "0" * 32 + "/x.csv").status_code == 404
