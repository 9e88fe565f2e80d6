"""The FastAPI application: one model loaded once, a page, a JSON API, offline docs.

Requests queue for the CNN (one lock: the model and its extractors are not shared between
threads); features of images seen before come from the cache. Uploads live in a private
temporary folder for the request only. Every bad file gets its own error in the response;
a request the service refuses gets one status and message (401, 413, 400), never a 500.
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from importlib import resources
from typing import Callable

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from classifiers.workflows.model import LoadedModel

from .predictions import PredictionService
from .schema import fields_listing, response_models
from .settings import ServeSettings
from .uploads import UploadRejected

log = logging.getLogger(__name__)
API = "/api/v1"
RESEARCH_ONLY = "Research use only: not a diagnostic device."


def server_timing(timings: dict[str, float]) -> str:
    """The W3C Server-Timing header of a request's stages (seconds in, milliseconds out)."""
    return ", ".join(f"{stage};dur={1000 * seconds:.1f}" for stage, seconds in timings.items())


def build_app(model: LoadedModel, settings: ServeSettings) -> FastAPI:
    """The app serving ``model`` (loaded once, with its integrity check, by the caller)."""
    app = FastAPI(title="covid-ct deep-features", version="1", description=RESEARCH_ONLY,
                  docs_url=None, redoc_url=None)
    service = PredictionService(model, settings, threading.RLock())  # reentrant: a study's pictures take it again
    app.state.service = service  # its batcher's record, for the load bench and tests
    add_limits(app, settings)
    add_pages(app)
    add_api(app, service, bearer_check(settings))
    return app


def bearer_check(settings: ServeSettings) -> Callable[[Request], None]:
    """The dependency every API route has: the bearer token, when the service has one."""
    def authorized(request: Request) -> None:
        if not settings.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
    return authorized


def add_limits(app: FastAPI, settings: ServeSettings) -> None:
    """Requests over the size limit get 413 before they are read; refused uploads their own status."""
    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_request_mb * 2**20:
            return JSONResponse({"detail": f"request of {int(length) / 2**20:.0f} MB is over the "
                                           f"{settings.max_request_mb:g} MB limit"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)


def add_pages(app: FastAPI) -> None:
    """The page, its static files and the offline API docs (plain OpenAPI JSON without swagger-ui-bundle)."""
    static = resources.files("service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    try:
        import swagger_ui_bundle

        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
        docs_assets = True
    except ImportError:
        docs_assets = False

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (static / "index.html").read_text(encoding="utf-8")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs():
        if not docs_assets:
            return HTMLResponse("<p>Interactive docs need the swagger-ui-bundle package; the API is described "
                                "at <a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="covid-ct API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")


def add_api(app: FastAPI, service: PredictionService, authorized: Callable[[Request], None]) -> None:
    """The JSON API: health, the model card, the fields of an answer, and predict."""
    PredictResponse = response_models()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": service.model.path.name}

    @app.get(f"{API}/model", dependencies=[Depends(authorized)])
    def model_card() -> dict:
        """The model card: classifier, backbones, training sources, CV metrics, threshold, OOD, aggregation."""
        return service.model_card()

    @app.get(f"{API}/files/{{token}}/{{name:path}}", dependencies=[Depends(authorized)], include_in_schema=True)
    def download(token: str, name: str) -> FileResponse:
        """A file a study's answer links to (its CSV rows, NIfTI label volume and tables, DICOM SEG), kept for the
        last requests only."""
        path = service.downloads.file(token, name)
        if path is None:
            raise HTTPException(404, "no such file (files are kept for the last 32 requests only)")
        return FileResponse(path, filename=path.name)

    @app.get(f"{API}/fields", dependencies=[Depends(authorized)])
    def fields() -> dict:
        """The fields of an image's and a study's answer, in order, with their types and help."""
        return fields_listing()

    @app.post(f"{API}/predict", dependencies=[Depends(authorized)], response_model=PredictResponse)
    def predict(response: Response,
                files: list[UploadFile] = File(..., description="PNG/JPEG/DICOM slices, or zips of DICOM studies"),
                heatmaps: bool = Form(False, description="a heatmap per slice (top 3 per study); slower")) -> dict:
        """Per slice: the same fields as predictions.csv; per zipped study: those of studies.csv. The
        Server-Timing header says where the request's time went (save, decode, queue, cnn, score, pictures,
        studies, total; milliseconds)."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        answer = service.predict(files, heatmaps, timings)
        timings["total"] = time.perf_counter() - start
        response.headers["Server-Timing"] = server_timing(timings)
        return answer
