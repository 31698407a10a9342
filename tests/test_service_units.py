"""Service parts without a server: settings, providers, repository loading, batching, archives."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import (
    ArchiveTooLarge,
    ImageTooLarge,
    InvalidArchive,
    InvalidImage,
    UnknownModel,
    WrongTask,
)
from service.evaluation.archive import extract_archive
from service.imaging import decode_image
from service.repository import ModelLoadError, ModelRepository, load_model
from service.runtime import ProviderUnavailable, create_session
from service.settings import Settings
from tests.server import ROOT

DEMO = ROOT / "models" / "digits" / "1"


def test_settings_read_env_and_refuse_oversubscription(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIC_MAX_BATCH_SIZE", "7")
    assert Settings().max_batch_size == 7
    with pytest.raises(ValueError, match="exceeds"):
        Settings(workers=2, intra_op_threads=64)
    assert Settings(workers=1).ort_intra_op_threads >= 1


def test_explicit_gpu_provider_never_falls_back() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("GPU build installed: this test is for CPU-only machines")
    with pytest.raises(ProviderUnavailable, match="OPTIC_PROVIDER=cuda"):
        create_session(DEMO / "model.onnx", Settings(provider="cuda"))
    _, provider = create_session(DEMO / "model.onnx", Settings(provider="auto"))
    assert provider == "cpu"


def test_a_graph_onnx_runtime_refuses_fails_its_version_only(tmp_path: Path) -> None:
    """Its sha256 matches, but ONNX Runtime cannot load it: that version is reported, the others serve."""
    repo = tmp_path / "models"
    shutil.copytree(DEMO, repo / "digits" / "1")
    shutil.copytree(DEMO, repo / "broken" / "1")
    onnx = repo / "broken" / "1" / "model.onnx"
    onnx.write_bytes(b"not an onnx graph" * 100)
    meta = json.loads((repo / "broken" / "1" / "model.json").read_text())
    meta.update(name="broken", sha256=hashlib.sha256(onnx.read_bytes()).hexdigest())
    (repo / "broken" / "1" / "model.json").write_text(json.dumps(meta))
    repository = ModelRepository.load(Settings(model_repository=repo, warmup_runs=0))
    assert repository.names() == ["digits"]
    assert "ONNX Runtime cannot run it" in repository.failures["broken/1"]


def test_sha_mismatch_is_not_served(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(DEMO, repo / "digits" / "1")
    shutil.copytree(DEMO, repo / "tampered" / "1")
    meta = json.loads((repo / "tampered" / "1" / "model.json").read_text())
    meta.update(name="tampered", sha256="0" * 64)
    (repo / "tampered" / "1" / "model.json").write_text(json.dumps(meta))
    settings = Settings(model_repository=repo, warmup_runs=0)
    repository = ModelRepository.load(settings)
    assert repository.names() == ["digits"]
    assert "sha256" in repository.failures["tampered/1"]
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(repo / "tampered" / "1", settings)
    with pytest.raises(UnknownModel):
        repository.resolve("tampered", "classification")
    with pytest.raises(WrongTask):
        repository.resolve("digits", "detection")
    assert repository.resolve(None, "classification").metadata.name == "digits"


def test_batcher_groups_concurrent_items_and_keeps_order() -> None:
    sizes: list[int] = []

    def run(batch: np.ndarray, busy: bool = False) -> dict[str, np.ndarray]:
        time.sleep(0.01)
        return {"y": batch * 2}

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = MicroBatcher(
            run,
            max_batch_size=8,
            max_wait_s=0.05,
            executor=ThreadPoolExecutor(1),
            on_batch=lambda n, *_: sizes.append(n),
        )
        batcher.expect(20)
        results = await asyncio.gather(*(batcher.submit(np.array([i])) for i in range(20)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert [int(r["y"][0]) for r in results] == [2 * i for i in range(20)]
    assert max(sizes) == 8 and sum(sizes) == 20


def test_batcher_mixes_chunks_and_images_and_never_splits_a_chunk() -> None:
    """A v2 request's whole batch is one item: it shares a run with other requests' images, gets its own rows
    back, and a chunk that would overflow a batch starts the next one."""
    runs: list[tuple[int, bool]] = []

    def run(batch: np.ndarray, busy: bool = False) -> dict[str, np.ndarray]:
        time.sleep(0.02)
        runs.append((len(batch), busy))
        return {"y": batch[:, 0] * 10}

    async def main() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.05, executor=ThreadPoolExecutor(1))
        first = asyncio.ensure_future(batcher.submit(np.array([100])))  # runs alone while the rest queue
        await asyncio.sleep(0.005)
        chunks = [batcher.submit_chunk(np.arange(k * 10, k * 10 + 5)[:, None]) for k in range(3)]
        singles = [batcher.submit(np.array([200 + i])) for i in range(3)]
        results = await asyncio.gather(first, *chunks, *singles)
        await batcher.close()
        return results[1:4], results[4:]

    chunks, singles = asyncio.run(main())
    for k, chunk in enumerate(chunks):
        assert chunk["y"].tolist() == [10 * v for v in range(k * 10, k * 10 + 5)]
    assert [int(r["y"]) for r in singles] == [2000, 2010, 2020]
    assert sum(n for n, _ in runs) == 1 + 15 + 3 and all(n <= 8 for n, _ in runs[1:])
    assert not any(busy for n, busy in runs if n == 5), "tensors alone use every ORT thread"


def test_lone_request_does_not_wait() -> None:
    async def main() -> float:
        batcher = MicroBatcher(
            lambda b, busy: {"y": b}, max_batch_size=8, max_wait_s=1.0, executor=ThreadPoolExecutor(1)
        )
        started = time.perf_counter()
        await batcher.submit(np.zeros(1))
        await batcher.close()
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.5


def test_decode_limits() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), filename="a", max_pixels=10_000).width == 100
    with pytest.raises(ImageTooLarge):
        decode_image(buffer.getvalue(), filename="a", max_pixels=9_999)
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        decode_image(buffer.getvalue()[:60], filename="a", max_pixels=10_000)


def test_archive_limits(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x/a.bin", b"\0" * 5000)
        zf.writestr("x/b.bin", b"\0" * 5000)
    extracted = extract_archive(archive, tmp_path / "ok", max_bytes=20_000, max_members=5)
    assert (extracted / "x" / "a.bin").exists()
    with pytest.raises(ArchiveTooLarge):
        extract_archive(archive, tmp_path / "big", max_bytes=6000, max_members=5)
    with pytest.raises(ArchiveTooLarge):
        extract_archive(archive, tmp_path / "many", max_bytes=20_000, max_members=1)
    assert not (tmp_path / "big").exists()
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(InvalidArchive):
        extract_archive(tmp_path / "junk.zip", tmp_path / "junk", max_bytes=20_000, max_members=5)


def test_admission_refuses_past_the_budget_and_never_a_lone_request() -> None:
    from service.admission import Admission
    from service.errors import Overloaded

    admission = Admission(max_queue_images=100, latency_budget_s=1.0)
    admission.admit("m:1", 64)  # nothing queued: a lone request always gets in, however big
    admission.release("m:1", 64)
    admission.observe_batch("m:1", 10, ready=100.0, ended=100.5)  # 50 ms an image
    admission.observe_batch("m:1", 10, ready=200.0, ended=200.5)  # an idle gap before it is not cost
    assert abs(admission._load("m:1").cost_s - 0.05) < 1e-9
    admission.admit("m:1", 9)  # 0.45 s of backlog: within half the budget
    with pytest.raises(Overloaded) as refused:
        admission.admit("m:1", 2)  # 0.55 s
    assert refused.value.status_code == 503 and refused.value.headers == {"retry-after": "1"}
    assert "OPTIC_LATENCY_BUDGET_MS" in refused.value.message
    assert admission.pending("m:1") == 9, "a refusal counts nothing in"
    admission.admit_unchecked("m:1", 50)  # evaluation: never refused
    with pytest.raises(Overloaded, match="OPTIC_MAX_QUEUE_IMAGES"):
        Admission(max_queue_images=4, latency_budget_s=1.0).admit("x:1", 5)
