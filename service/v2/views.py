"""Two v2 views of every model, and the one inference call both transports make.

- `NAME`: the graph's own input, uint8 `[-1, 3, H, W]` (NCHW, RGB): the client preprocesses, optic runs it.
- `NAME_image`: BYTES `[-1, 1]`, encoded image files (JPEG, PNG, WebP, ...), decoded and resized by optic's
  own preprocessing, refused as the JSON routes refuse a bad image. Detection and instance boxes come back in
  each image's own pixels.

Outputs are the graph's (classification `probabilities`; detection `boxes`, `scores`, `labels`,
`num_detections`; semantic `class_map` at the model's input size; instance ones plus `masks`, MxM inside each
box), one row per image. Requests of both views go through the pipeline's admission and batcher, so they batch
with `/classify` and friends and are refused with them under overload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import NoImages, TooManyImages, UnknownModel
from service.repository import LoadedModel, ModelRepository, _version_key
from service.settings import Settings
from service.v2.tensors import (
    ORT_DATATYPES,
    BadTensor,
    InferRequest,
    InferResult,
    Tensor,
    classification,
    output_tensor,
)

if TYPE_CHECKING:
    from service.service import Optic

IMAGE_SUFFIX = "_image"
INPUT = "images"
PLATFORM = "onnxruntime_onnx"
IMAGE_PLATFORM = "optic_image"  # not a Triton backend: optic decodes, then runs the ONNX graph
TRITON_TYPES = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL"}


def triton_type(datatype: str) -> str:
    return TRITON_TYPES.get(datatype, f"TYPE_{datatype}")


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: list[int]  # -1 for the batch and any dynamic dimension

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class View:
    name: str  # the v2 model name
    model: str  # optic's model name
    encoded: bool
    models: tuple[LoadedModel, ...]  # its loaded versions, oldest first (of the snapshot the views were built on)

    def versions(self) -> list[str]:
        return [m.metadata.version for m in self.models]

    def resolve(self, version: str | None) -> LoadedModel:
        """The version asked for, or the latest."""
        if not version:
            return self.models[-1]
        for model in self.models:
            if model.metadata.version == version:
                return model
        raise UnknownModel(f"model {self.name!r} has no version {version!r}")

    def inputs(self, model: LoadedModel) -> list[Spec]:
        spec = model.metadata.input
        if self.encoded:
            return [Spec(INPUT, "BYTES", [-1, 1])]
        return [Spec(INPUT, "UINT8", [-1, 3, spec.height, spec.width])]

    def outputs(self, model: LoadedModel) -> list[Spec]:
        return [
            Spec(o.name, ORT_DATATYPES.get(o.type, "FP32"), [d if isinstance(d, int) else -1 for d in o.shape])
            for o in model.session.get_outputs()
        ]

    def metadata(self, model: LoadedModel) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions(),
            "platform": IMAGE_PLATFORM if self.encoded else PLATFORM,
            "inputs": [s.json() for s in self.inputs(model)],
            "outputs": [s.json() for s in self.outputs(model)],
        }

    def config(self, model: LoadedModel, settings: Settings) -> dict[str, Any]:
        """Triton's model configuration (JSON form): what tritonclient's get_model_config and perf_analyzer
        read. With max_batch_size > 0, dims leave the batch dimension out."""
        inputs = []
        for spec in self.inputs(model):
            entry: dict[str, Any] = {"name": spec.name, "data_type": triton_type(spec.datatype), "dims": spec.shape[1:]}
            entry["format"] = "FORMAT_NONE" if self.encoded else "FORMAT_NCHW"
            inputs.append(entry)
        meta = model.metadata
        outputs = []
        for spec in self.outputs(model):
            out: dict[str, Any] = {"name": spec.name, "data_type": triton_type(spec.datatype), "dims": spec.shape[1:]}
            if meta.task == "classification":
                out["label_filename"] = ""  # labels travel in model.json; class_count answers carry them
            outputs.append(out)
        return {
            "name": self.name,
            "platform": IMAGE_PLATFORM if self.encoded else PLATFORM,
            "backend": "onnxruntime",
            "version_policy": {"specific": {"versions": [int(v) for v in self.versions() if v.isdigit()]}},
            "max_batch_size": min(settings.max_images_per_request, model.max_batch_size or 1 << 30),
            "input": inputs,
            "output": outputs,
            "dynamic_batching": {
                "preferred_batch_size": [settings.max_batch_size],
                "max_queue_delay_microseconds": int(settings.max_batch_wait_ms * 1000),
            },
            "instance_group": [{"count": 1, "kind": "KIND_CPU" if model.provider == "cpu" else "KIND_GPU"}],
            "parameters": {
                "task": {"string_value": meta.task},
                "labels": {"string_value": ",".join(meta.labels)},
                "provider": {"string_value": model.provider},
            },
        }

class Views:
    """Every loaded model's two views, by v2 name, over one snapshot of the served versions (a new snapshot
    gets new views)."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.views: dict[str, View] = {}
        by_name: dict[str, list[LoadedModel]] = {}
        for model in repository:
            by_name.setdefault(model.metadata.name, []).append(model)
        for name in repository.names():
            models = tuple(sorted(by_name[name], key=lambda m: _version_key(m.metadata.version)))
            self.views.setdefault(name, View(name, name, False, models))
        for name in repository.names():
            self.views.setdefault(name + IMAGE_SUFFIX, View(name + IMAGE_SUFFIX, name, True, self.views[name].models))

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every version of every view, READY, or UNAVAILABLE with the reason it
        failed to load (a failed version never replaces a working one: the others stay READY)."""
        entries = []
        for view in self.views.values():
            for version in view.versions():
                entries.append({"name": view.name, "version": version, "state": "READY"})
        if not ready_only:
            for key, reason in sorted(self.repository.failures.items()):
                name, _, version = key.partition("/")
                for view_name in (name, name + IMAGE_SUFFIX):
                    entries.append({"name": view_name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        return sorted(entries, key=lambda e: (e["name"], _version_key(e["version"])))

    def get(self, name: str) -> View:
        view = self.views.get(name)
        if view is None:
            raise UnknownModel(f"unknown model {name!r}", detail={"models": sorted(self.views)})
        return view


async def infer(service: Optic, views: Views, request: InferRequest, protocol: str) -> InferResult:
    """One v2 inference: check the input against the view, run it through the pipeline, shape the outputs."""
    view = views.get(request.model)
    model = view.resolve(request.version)
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = [t.name for t in request.inputs]
        raise BadTensor(f"model {view.name!r} takes one input named {INPUT!r}, got {names}")
    tensor = request.inputs[0]
    limit = service.settings.max_images_per_request
    if view.encoded:
        files = _encoded(view, tensor, limit)
        predictions = await service.pipeline.predict(model, files, None, protocol)
        stacked = {name: np.stack([p.outputs[name] for p in predictions]) for name in predictions[0].outputs}
        arrays = model.task.tensor_outputs(stacked, [p.prepared.geometry for p in predictions], model.metadata)
    else:
        batch = _tensor(view, model, tensor, limit)
        outputs = await service.pipeline.infer_tensors(model, batch, protocol)
        arrays = model.task.tensor_outputs(outputs, None, model.metadata)
    return InferResult(view.name, model.metadata.version, request.id, _outputs(view, model, request, arrays))


def _encoded(view: View, tensor: Tensor, limit: int) -> list[tuple[str, bytes]]:
    if tensor.datatype != "BYTES" or not isinstance(tensor.data, list):
        raise BadTensor(f"model {view.name!r}: input {INPUT!r} is BYTES (encoded image files), not {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise BadTensor(f"model {view.name!r}: input {INPUT!r} has shape [-1, 1], got {tensor.shape}")
    _count(view, tensor.shape[0], limit)
    return [(f"images[{i}]", item) for i, item in enumerate(tensor.data)]


def _tensor(view: View, model: LoadedModel, tensor: Tensor, limit: int) -> np.ndarray:
    spec = model.metadata.input
    expected = [3, spec.height, spec.width]
    if tensor.datatype != "UINT8" or not isinstance(tensor.data, np.ndarray):
        raise BadTensor(
            f"model {view.name!r}: input {INPUT!r} is UINT8 [-1, 3, {spec.height}, {spec.width}], not "
            f"{tensor.datatype} (or send encoded images to {view.name + IMAGE_SUFFIX!r})"
        )
    if len(tensor.shape) != 4 or tensor.shape[1:] != expected:
        raise BadTensor(f"model {view.name!r}: input {INPUT!r} has shape [-1, 3, {spec.height}, {spec.width}], "
                        f"got {tensor.shape}")  # fmt: skip
    _count(view, tensor.shape[0], limit)
    return tensor.data


def _count(view: View, count: int, limit: int) -> None:
    if count < 1:
        raise NoImages(f"model {view.name!r}: a batch of {count} images")
    if count > limit:
        raise TooManyImages(f"{count} images exceeds the limit of {limit} per request (OPTIC_MAX_IMAGES_PER_REQUEST)")


def _outputs(view: View, model: LoadedModel, request: InferRequest, arrays: dict[str, np.ndarray]) -> list[Tensor]:
    if request.outputs is None:
        return [output_tensor(name, array) for name, array in arrays.items()]
    tensors = []
    for wanted in request.outputs:
        array = arrays.get(wanted.name)
        if array is None:
            raise BadTensor(f"model {view.name!r} has no output {wanted.name!r} (it has {sorted(arrays)})")
        if wanted.class_count > 0:
            if array.dtype.kind != "f" or array.ndim != 2:
                raise BadTensor(f"output {wanted.name!r}: the classification extension needs a [-1, classes] score")
            tensors.append(classification(wanted.name, array, wanted.class_count, model.metadata.labels))
        else:
            tensors.append(output_tensor(wanted.name, array))
    return tensors
