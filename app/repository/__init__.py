"""The model repository: scan `<root>/<model>/<version>/model.onnx`, read each model's
config.toml, load the selected versions and keep their state for the index."""

from app.repository.loader import ServingDefaults
from app.repository.repository import ModelRepository
from app.repository.state import LoadedVersion, ModelEntry, ModelState

__all__ = ["LoadedVersion", "ModelEntry", "ModelRepository", "ModelState", "ServingDefaults"]
