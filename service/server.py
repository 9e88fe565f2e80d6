"""`serve`: the app under uvicorn. FastAPI and uvicorn are the `serve` extra; without them,
one clear error."""
from __future__ import annotations

from pathlib import Path

from feature_extractor.errors import SettingsError
from feature_extractor.run_context import RunContext

from .settings import ServeSettings


def serve(model_path: str | Path | None, context: RunContext, settings: ServeSettings) -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: form uploads)
        import uvicorn
    except ImportError as exc:
        raise SettingsError(f"serve needs the web extra, which is not installed here ({exc.name}): "
                            'pip install -e ".[serve]"') from None
    from .app import create_app

    app = create_app(model_path, context, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
