"""The control plane: everything but inference, transport-free, beside the data plane.

Server and model metadata, readiness, the model configuration, statistics, the repository
index, load and unload: REST's routers and gRPC's servicer only translate these answers and
errors (app.errors maps each to its HTTP status and gRPC code), so the two transports cannot
drift apart in what they answer or how they word a refusal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app import __version__
from app.errors import InvalidInputError, ModelLoadError, NotFoundError, PermissionDeniedError
from app.metrics import ModelStatistics, ServerMetrics
from app.repository import LoadedVersion, ModelRepository
from app.repository.triton_config import model_config

#: The v2 extensions this server implements, as GET /v2 and ServerMetadata list them.
EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "parameters",
    "statistics",
]


class ControlPlane:
    """One server's answers to the calls about it and its models."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        metrics: ServerMetrics,
        not_ready: Callable[[], str | None],
        model_control: bool,
    ) -> None:
        self._repository = repository
        self._metrics = metrics
        self._not_ready = not_ready
        self._model_control = model_control

    # -- the server -----------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready (loading, draining, a model failed), or None."""
        return self._not_ready()

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "batchserve", "version": __version__, "extensions": EXTENSIONS}

    # -- models ---------------------------------------------------------------------------

    def model_ready(self, model: str, version: str | None) -> dict[str, Any]:
        """The version serving (raises NotFoundError, or UnavailableError with the reason)."""
        loaded = self._repository.version(model, version)
        return {"name": model, "version": str(loaded.version), "ready": True}

    async def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """Inputs, outputs and devices; `versions` lists every version serving unless one
        was asked for. Like inference, it loads a model the memory budget keeps out."""
        loaded = await self._resident(model, version)
        versions = sorted(self._repository.entry(model).versions)
        return loaded.metadata([loaded.version] if version is not None else versions)

    async def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (perf_analyzer and Model Analyzer read it before
        they send anything, so it loads a model the memory budget keeps out)."""
        return model_config(await self._resident(model, version))

    async def _resident(self, model: str, version: str | None) -> LoadedVersion:
        loading = self._repository.load_on_request(model)
        if loading is not None:
            await loading
        return self._repository.version(model, version)

    def statistics(self, model: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton's `model_stats` for one version, every version of a model, or everything."""
        models = self._repository.models
        if model is None:
            targets = [(name, v) for name, e in models.items() for v in sorted(e.versions)]
        elif version is None:
            targets = [(model, v) for v in sorted(self._repository.entry(model).versions)]
        else:
            targets = [(model, self._repository.version(model, version).version)]
        stats = []
        for name, v in targets:
            metrics = self._metrics.known(name, v)
            stats.append(
                (metrics.statistics if metrics else ModelStatistics(name, str(v))).as_dict()
            )
        return stats

    # -- the repository -------------------------------------------------------------------

    def repository_index(self, *, ready: bool = False) -> list[dict[str, Any]]:
        """Every model found, with its state and, where it failed, the reason; only those
        ready to serve when `ready`."""
        rows = self._repository.index()
        return [row for row in rows if row["state"] == "READY"] if ready else rows

    async def load(self, model: str) -> None:
        """Load or reload a model: new versions are warmed before they take traffic, and the
        versions they replace finish what they hold. A failed reload keeps the old ones."""
        self._check_model_control()
        # "failed to load 'NAME'" is Triton's wording, which its clients' scripts match.
        try:
            await self._repository.load(model)
        except ModelLoadError as exc:
            raise InvalidInputError(f"failed to load '{model}': {exc}") from exc
        except NotFoundError as exc:
            raise NotFoundError(f"failed to load '{model}': {exc.message}") from exc

    async def unload(self, model: str) -> None:
        """Stop serving a model; requests already queued are still answered."""
        self._check_model_control()
        await self._repository.unload(model)

    def _check_model_control(self) -> None:
        if not self._model_control:
            raise PermissionDeniedError(
                "model control is off; start the server with BATCHSERVE_MODEL_CONTROL=true"
            )
