"""The web service: `python cli.py serve` (FastAPI + uvicorn), a page and a JSON API."""
