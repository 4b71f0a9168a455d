"""batchserve's ASGI app for other servers to run (load_tests/bench_front.py compares them):

BATCHSERVE_MODEL_REPOSITORY=models uvicorn load_tests.baselines.batchserve_app:app --http h11
"""

from __future__ import annotations

from app.main import create_app
from app.settings import Settings

app = create_app(Settings()).asgi
