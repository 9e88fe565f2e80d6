"""`serve`: the app under uvicorn. FastAPI and uvicorn are the `serve` extra; without them,
one clear error."""
from __future__ import annotations

from classifiers.workflows.model import LoadedModel
from covidct_core.errors import SettingsError

from .settings import ServeSettings


def check_web_extra() -> None:
    """One clear error when the web extra is not installed (before any model is loaded)."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: form uploads)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SettingsError(f"serve needs the web extra, which is not installed here ({exc.name}): "
                            'pip install -e ".[serve]"') from None


def serve(model: LoadedModel, settings: ServeSettings) -> None:
    """Serve ``model`` under uvicorn until interrupted."""
    check_web_extra()
    import uvicorn

    from .app import build_app

    uvicorn.run(build_app(model, settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False)
