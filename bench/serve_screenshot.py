#!/usr/bin/env python
"""The README's screenshot of the service page: a slice with its heatmap and lesion map and a
zipped DICOM study, answered by the demo's configuration with its segmentation network (bench/lesions.py's
model, else `make demo`'s; headless Chromium through Playwright). The images are the tests' synthetic phantoms, so
no patient image of ../shared ends up in the repository; the page rightly answers "not
assessable" for them.

    .venv/bin/python bench/serve_screenshot.py [--out docs/serve.png]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
import zipfile

from common import REPO

MODEL = REPO / "bench" / "out" / "models" / "lesions-shipped.joblib"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=REPO / "docs" / "serve.png")
    parser.add_argument("--model", default=MODEL if MODEL.exists() else REPO / "models" / "demo.joblib",
                        help="the demo's configuration with its segmentation network (bench/lesions.py's, else make demo's)")
    args = parser.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from classifiers.workflows.model import load_model
    from covidct_core.run_context import RunContext
    from service.app import build_app
    from service.settings import ServeSettings

    model = load_model(args.model, RunContext(REPO / "features", offline=True))
    server = uvicorn.Server(uvicorn.Config(build_app(model, ServeSettings(heatmap_method="occlusion")),
                                           host="127.0.0.1", port=0, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    work = REPO / "bench" / "out" / "screenshot"
    work.mkdir(parents=True, exist_ok=True)
    from pydicom.uid import generate_uid

    from tests.helpers import ct_like
    from tests.helpers import write_series

    study = work / "phantom-study"
    shutil.rmtree(study, ignore_errors=True)
    write_series(study / "ward-3", generate_uid(), n=12, prefix="slice")
    with zipfile.ZipFile(work / "phantom-study.zip", "w") as archive:
        for path in sorted(study.rglob("*.dcm")):
            archive.write(path, str(path.relative_to(study)))
    ct_like(4, True, size=256).save(work / "slice.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.set_input_files("#files", [str(work / "slice.png"), str(work / "phantom-study.zip")])
        page.click("#send")
        page.wait_for_function("document.getElementById('status').textContent === 'Done.'", timeout=600_000)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
