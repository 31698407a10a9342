"""ONNX Runtime sessions with an explicit, verified execution provider.

`get_available_providers()` lists CUDA and TensorRT whenever the GPU wheel is installed, GPU or not, so the
only truth is what a created session reports from `get_providers()`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from service.settings import Provider, Settings

log = logging.getLogger("bentoml.optic")

_PROVIDER_CHAINS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_SHORT_NAMES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


class ProviderUnavailable(RuntimeError):
    """An explicitly requested GPU provider could not be had: start-up stops, no silent fallback."""


def session_options(settings: Settings, *, spinning: bool | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    spin = settings.intra_op_spinning != "false" if spinning is None else spinning
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


# A model whose lone image runs faster than this is cheap next to decoding a photo: under load, decoding is
# most of the work, and ORT's threads spinning between runs take the cores it needs.
CHEAP_MODEL_S = 0.002


def create_busy_session(path: Path, settings: Settings, lone_image_s: float) -> ort.InferenceSession | None:
    """With OPTIC_INTRA_OP_SPINNING=auto on the CPU, a cheap model gets a second session for batches: one
    thread, never spinning, so decoding keeps the other cores.

    Spinning threads answer a lone image fastest; under load they spin on cores that decoding needs. Measured
    on the 2-core machine at concurrency 16: digits/1 (0.5 ms an image) 536 img/s with one spinning session,
    698 with a non-spinning one of two threads, 736 with one thread. A heavier model is the other way round:
    its batches are mostly inference, which spinning speeds up (shapes/2 at concurrency 4: 23.8 ms an image
    without spinning, 15.8 with), so it keeps its one spinning session for everything.
    """
    if settings.intra_op_spinning != "auto" or settings.ort_intra_op_threads < 2 or lone_image_s >= CHEAP_MODEL_S:
        return None
    options = session_options(settings, spinning=False)
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def create_session(path: Path, settings: Settings) -> tuple[ort.InferenceSession, str]:
    """Return a session and the short name of the provider that really runs it."""
    requested: Provider = settings.provider
    available = ort.get_available_providers()
    if requested == "auto":
        chain = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        chain = [p for p in chain if p in available]
    else:
        chain = _PROVIDER_CHAINS[requested]
        missing = [p for p in chain if p not in available]
        if missing and requested != "cpu":
            raise ProviderUnavailable(
                f"OPTIC_PROVIDER={requested} but this onnxruntime build has no {missing[0]} "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or set OPTIC_PROVIDER=cpu"
            )
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(settings), providers=chain)
    except Exception as exc:
        if requested in ("cuda", "tensorrt"):
            raise ProviderUnavailable(f"OPTIC_PROVIDER={requested}: could not create a session: {exc}") from exc
        if requested == "auto" and chain[0] != "CPUExecutionProvider":
            log.warning("CUDA session failed (%s); auto falls back to CPU", exc)
            session = ort.InferenceSession(
                str(path), sess_options=session_options(settings), providers=["CPUExecutionProvider"]
            )
        else:
            raise
    active = session.get_providers()[0]
    if requested in ("cuda", "tensorrt") and active != _PROVIDER_CHAINS[requested][0]:
        raise ProviderUnavailable(
            f"OPTIC_PROVIDER={requested} but the session runs on {active} (no usable GPU or driver); "
            "refusing to fall back silently. Set OPTIC_PROVIDER=auto or cpu to allow CPU."
        )
    return session, _SHORT_NAMES.get(active, active)
