"""Turn a model's `[padding]` config into the batcher's PaddingPlan, checked against the graph.

Every mistake is found at load, with the input or output and what the graph says about it,
rather than as a wrong answer later: a padded input must have exactly one variable axis
besides the batch axis, the padded inputs must share it, and outputs to cut back must exist.
"""

from __future__ import annotations

from app.batching.padding import PaddedInput, PaddingPlan
from app.errors import ModelLoadError
from app.repository.sections import PaddingConfig
from app.tensors import TensorSpec


def build_padding_plan(
    config: PaddingConfig | None,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    max_batch_size: int,
) -> PaddingPlan | None:
    if config is None:
        return None
    if max_batch_size <= 0:
        raise ModelLoadError("[padding] needs batching: set max_batch_size above 0")
    by_name = {spec.name: spec for spec in inputs}
    padded: list[PaddedInput] = []
    axis_names: set[str] = set()
    for name, value in config.inputs.items():
        spec = by_name.get(name)
        if spec is None:
            raise ModelLoadError(
                f"padding.inputs names '{name}', which is not an input of the model "
                f"(inputs: {sorted(by_name)})"
            )
        if spec.datatype == "BYTES":
            raise ModelLoadError(f"padding.inputs: '{name}' is BYTES; only numbers are padded")
        variable = [axis for axis, dim in enumerate(spec.shape) if axis > 0 and dim == -1]
        if len(variable) != 1:
            raise ModelLoadError(
                f"padding.inputs: '{name}' has shape {list(spec.shape)}; a padded input needs "
                "exactly one variable axis besides the batch axis"
            )
        axis = variable[0]
        dim_name = spec.dim_names[axis] if axis < len(spec.dim_names) else None
        if dim_name is not None:
            axis_names.add(dim_name)
        padded.append(PaddedInput(name, axis, value))
    if len(axis_names) > 1:
        raise ModelLoadError(
            f"padding.inputs pad along differently named axes {sorted(axis_names)}; padded "
            "inputs must share one variable-length axis"
        )
    cut: dict[str, int] = {}
    for spec in outputs:
        for axis, dim_name in enumerate(spec.dim_names):
            if axis > 0 and dim_name is not None and dim_name in axis_names:
                cut[spec.name] = axis
    outputs_by_name = {spec.name: spec for spec in outputs}
    for name, axis in config.outputs.items():
        spec = outputs_by_name.get(name)
        if spec is None:
            raise ModelLoadError(
                f"padding.outputs names '{name}', which is not an output of the model "
                f"(outputs: {sorted(outputs_by_name)})"
            )
        if axis >= len(spec.shape) or spec.shape[axis] != -1:
            raise ModelLoadError(
                f"padding.outputs: '{name}' has shape {list(spec.shape)}; axis {axis} is not "
                "a variable axis to cut back"
            )
        cut[name] = axis
    return PaddingPlan(tuple(padded), cut, config.max_padding_ratio)
