"""report --out report.html: one self-contained file with the card, metrics, plots and cases."""
import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from tests.helpers import ct_like


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


class Structure(HTMLParser):
    """Collects what the assertions look at: sections, images, table rows, links, scripts."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.rows, self.links, self.scripts = set(), [], [], [], 0
        self.text, self._row, self._in_cases, self._cell = [], None, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table" and a.get("id") == "cases":
            self._in_cases = True
        if tag == "img":
            self.images.append(a)
            if self._row is not None:
                self._row["images"].append(a.get("class"))
        if tag in ("a", "link") and "href" in a:
            self.links.append(a["href"])
        if tag == "script":
            self.scripts += 1
            assert "src" not in a, "scripts must be inline"
        if self._in_cases and tag == "tr":
            self._row = {"class": a.get("class", ""), "cells": [], "images": []}
        if self._row is not None and tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_cases = False
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row["cells"]:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def decode_data_uri(uri: str) -> Image.Image:
    header, payload = uri.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.fixture(scope="module")
def report_file(workspace, tmp_path_factory):
    root, data, _ = workspace
    model = root / "models" / "report-svm.joblib"
    fitted = run("fit", "--clf", "svm", "--data", data, "--features-dir", root / "features", "--model", model,
                 "--cv-folds", "3")
    assert fitted.exit_code == 0, fitted.output
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = run("report", "--model", model, "--data", data, "--features-dir", root / "features",
                 "--out", out, "--heatmaps", "5", "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    assert "12 images" in result.output and "5 heatmaps" in result.output
    assert " out of distribution" in result.output and " out of distribution)</h2>" in out.read_text()
    return out, model


def test_report_is_one_self_contained_file_with_every_part(report_file):
    out, model = report_file
    page = Structure()
    page.feed(out.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert "Research use only, not for clinical diagnosis" in text
    assert {"disclaimer", "metrics", "plots", "predictions", "model-card", "cases"} <= page.ids
    # nothing is fetched from elsewhere: every image inline, links stay in the page
    assert page.images and all(img["src"].startswith("data:image/") for img in page.images)
    assert all(link.startswith("#") for link in page.links)
    assert page.scripts == 1
    # three plots, real PNGs
    plots = [img for img in page.images if img.get("alt") in ("roc", "calibration", "confusion")]
    assert len(plots) == 3 and all(decode_data_uri(p["src"]).format == "PNG" for p in plots)
    # the model card names the backbone, its weights hash, the classifier and the threshold
    import json

    manifest = json.loads(model.with_suffix(".json").read_text())
    assert manifest["backbones"][0]["weights_sha256"] in text
    assert "mobilenetv2" in text and "svm" in text and "decision threshold" in text
    for metric in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert metric in text


def test_cases_table_lists_every_test_image_misclassified_first(report_file):
    out, _ = report_file
    page = Structure()
    page.feed(out.read_text(encoding="utf-8"))
    rows = page.rows
    assert len(rows) == 12  # the replica's test split: 3 patients x 2 slices x 2 classes
    wrong = ["wrong" in r["class"] for r in rows]
    assert wrong == sorted(wrong, reverse=True), "misclassified rows must come first"
    assert all("thumb" in r["images"] for r in rows)
    assert [("heatmap" in r["images"]) for r in rows] == [True] * 5 + [False] * 7
    thumb = next(img for img in page.images if img.get("class") == "thumb")
    assert decode_data_uri(thumb["src"]).format == "JPEG"


def test_rows_are_ordered_misclassified_first_most_confident_mistake_on_top():
    from classifiers.presentation.html_report import CaseRow, order_rows
    from classifiers.workflows.predict import PredictionRow

    def case(path, p=None, predicted=None, truth=None, error=None):
        return CaseRow(PredictionRow(path=path, p_covid=p, label=predicted, error=error), truth)

    rows = [case("ok-high", 0.9, "COVID", "COVID"), case("unreadable", error="empty file"),
            case("wrong-mild", 0.55, "COVID", "NonCOVID"), case("ok-low", 0.1, "NonCOVID", "NonCOVID"),
            case("wrong-sure", 0.02, "NonCOVID", "COVID")]
    assert [r.path for r in order_rows(rows, 0.5)] == ["wrong-sure", "wrong-mild", "ok-high", "ok-low",
                                                       "unreadable"]


def test_report_on_an_unlabeled_folder_has_predictions_only(workspace, report_file, tmp_path):
    root, _, _ = workspace
    _, model = report_file
    folder = tmp_path / "scans"
    folder.mkdir()
    ct_like(1, True).save(folder / "a.png")
    ct_like(2, False).save(folder / "b.png")
    out = tmp_path / "r.html"
    result = run("report", "--model", model, "--data", folder, "--features-dir", root / "features",
                 "--out", out, "--heatmaps", "0")
    assert result.exit_code == 0, result.output
    page = Structure()
    page.feed(out.read_text(encoding="utf-8"))
    assert len(page.rows) == 2 and "no metrics" in " ".join(page.text)
    assert not any(img.get("alt") == "roc" for img in page.images)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_report_renders_in_headless_chromium(report_file, tmp_path):
    out, _ = report_file
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-sortable="ready"' in dom.stdout  # the sorting script ran without an error
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--window-size=1280,2000", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000)
    assert len(np.unique(np.asarray(image))) > 50  # rendered content, not a blank page
