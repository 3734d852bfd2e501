"""A chunk is judged and recorded under one Triton model version, even when the server changes version mid-chunk.

The gRPC client is replaced by :class:`FakeTriton`, a stand-in that serves versions whose outputs differ (v1 says
"real", v2 says "ai-generated") and that rolls over to v2 after the first request, as Triton does when a new
version is loaded under the ``latest`` policy. Every row of a chunk must carry the one version whose outputs it
holds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from deploy.triton_client import ModelNotFound, PinnedVersion, TritonBackend, TritonInferenceError, TritonUnavailable
from deploy.triton_config import thresholds_param
from gamma import wire
from gamma.inference import BatchOutputs
from gamma.tiling import MASK_STRIDE
from gamma.verdict import VerdictThresholds
from worker.db import Result
from worker.pipeline import run_chunk
from worker.runtime import FixedVersion, ModelVersionChanged, Runtime, pin
from worker.settings import Settings
from worker.storage import ObjectRef

NAME = "gamma-fake"
PROBABILITY = {1: 0.02, 2: 0.98}  # v1 judges everything real, v2 ai-generated
VERDICT = {1: "real", 2: "ai-generated"}


class _Result:
    def __init__(self, arrays: dict[str, np.ndarray], version: int) -> None:
        self.arrays = arrays
        self.version = version

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)

    def get_response(self) -> service_pb2.ModelInferResponse:
        return service_pb2.ModelInferResponse(model_name=NAME, model_version=str(self.version))


class FakeTriton:
    """What TritonBackend calls on ``tritonclient.grpc.InferenceServerClient``, for a model with versions.

    ``ready``: the versions loaded now (``latest`` answers the newest). ``after_infer(n)`` runs after the n-th
    request (1-based), e.g. to load v2 mid-chunk. ``requests``: the ``model_version`` argument of each request.
    """

    def __init__(self, ready: list[int], max_batch_size: int = 1) -> None:
        self.ready = ready
        self.max_batch_size = max_batch_size
        self.requests: list[str] = []
        self.shapes: list[tuple[int, int]] = []  # (height, width) of each request's tiles
        self.metadata_calls = 0
        self.after_infer: Callable[[int], None] = lambda n: None

    def get_model_metadata(self, name: str, version: str = "", client_timeout: float | None = None) -> Any:
        self.metadata_calls += 1
        return service_pb2.ModelMetadataResponse(name=name, versions=[str(v) for v in sorted(self.ready)])

    def get_model_config(self, name: str, version: str = "", client_timeout: float | None = None) -> Any:
        number = int(version)
        config = model_config_pb2.ModelConfig(name=name, max_batch_size=self.max_batch_size)
        for spec in wire.INPUTS:
            config.input.add(name=spec.name)
        for spec in wire.OUTPUTS:
            config.output.add(name=spec.name)
        thresholds = VerdictThresholds(ai_probability=0.5 if number == 1 else 0.6).to_dict()
        config.parameters[thresholds_param(number)].string_value = json.dumps(thresholds)
        return service_pb2.ModelConfigResponse(config=config)

    def infer(self, name: str, inputs: list[Any], model_version: str = "", **_: Any) -> _Result:
        self.requests.append(model_version)
        version = int(model_version) if model_version else max(self.ready)
        if version not in self.ready:
            raise InferenceServerException(
                msg=f"Request for unknown model: '{name}' version {version} is not found",
                status="StatusCode.NOT_FOUND",
            )
        batch, _, height, width = (int(d) for d in inputs[0].shape())
        self.shapes.append((height, width))
        mask = np.full((batch, *wire.AI_MASK.concrete(height, width)), 0, dtype=np.uint8)
        arrays = {
            wire.PROBABILITY.name: np.full((batch, 1), PROBABILITY[version], dtype=np.float32),
            wire.AI_MASK.name: mask,
            wire.MANIPULATION_MASK.name: mask.copy(),
        }
        self.after_infer(len(self.requests))
        return _Result(arrays, version)

    def is_model_ready(self, *_: Any, **__: Any) -> bool:
        return True

    def close(self) -> None:
        pass


def triton(server: FakeTriton, **kw: Any) -> TritonBackend:
    backend = TritonBackend("127.0.0.1:1", NAME, **kw)  # the channel is lazy: nothing connects to this port
    backend._client.close()
    backend._client = server  # type: ignore[assignment]
    return backend


def crops(n: int, height: int = 512, width: int = 512) -> np.ndarray:
    """``n`` black tiles, uint8 (n, 3, height, width)."""
    return np.zeros((n, *wire.IMAGES.concrete(height, width)), dtype=np.uint8)


def load_v2_after_first_request(server: FakeTriton, unload_v1: bool = False) -> None:
    def roll(n: int) -> None:
        if n == 1:
            server.ready = [2] if unload_v1 else [1, 2]

    server.after_infer = roll


# --- the client ---------------------------------------------------------------------------------------------


def test_a_pinned_view_names_its_version_in_every_request_while_the_server_moves_on() -> None:
    server = FakeTriton([1])
    load_v2_after_first_request(server)
    pinned = triton(server).pinned()
    assert isinstance(pinned, PinnedVersion) and pinned.model_version == 1 and pinned.max_batch_size == 1
    outputs = pinned.infer(crops(4))  # four requests of one; v2 is "latest" from the second on
    assert server.requests == ["1", "1", "1", "1"]
    np.testing.assert_allclose(outputs.probability, PROBABILITY[1])
    assert pinned.model_version == 1 and pinned.thresholds.ai_probability == 0.5  # v1's own thresholds


def test_the_unpinned_client_would_have_mixed_versions() -> None:
    """Why pinning is needed: following ``latest`` mid-batch returns v2's outputs after v1's."""
    server = FakeTriton([1])
    load_v2_after_first_request(server)
    outputs = triton(server).infer(crops(3))
    np.testing.assert_allclose(outputs.probability, [PROBABILITY[1], PROBABILITY[2], PROBABILITY[2]])


def test_each_pin_asks_the_server_once_and_reads_each_version_config_once() -> None:
    server = FakeTriton([1])
    backend = triton(server)
    assert backend.pinned().model_version == 1
    assert backend.pinned().model_version == 1
    assert server.metadata_calls == 2  # once per pin (per chunk): the version is never assumed
    server.ready = [1, 2]
    second = backend.pinned()
    assert (second.model_version, second.thresholds.ai_probability) == (2, 0.6)
    assert backend.model_version == 2  # the unpinned attributes follow what was last found ready


def test_a_configured_version_is_pinned_without_asking() -> None:
    server = FakeTriton([1, 2])
    pinned = triton(server, model_version=1).pinned()
    assert pinned.model_version == 1 and server.metadata_calls == 0
    pinned.infer(crops(2))
    assert server.requests == ["1", "1"]


def test_a_pinned_version_unloaded_mid_chunk_is_retryable_a_configured_one_is_not() -> None:
    server = FakeTriton([1])
    load_v2_after_first_request(server, unload_v1=True)
    with pytest.raises(TritonUnavailable, match="went away mid-chunk"):
        triton(server).pinned().infer(crops(2))
    server = FakeTriton([1])
    load_v2_after_first_request(server, unload_v1=True)
    with pytest.raises(ModelNotFound):
        triton(server, model_version=1).pinned().infer(crops(2))


def test_requests_carry_the_tile_shape_of_their_batch() -> None:
    """Tiles of any multiple of 32 up to 512 go out as they are (the served dims are -1); masks come back at a
    quarter of the tile."""
    server = FakeTriton([1], max_batch_size=2)
    backend = triton(server)
    for height, width in ((512, 512), (192, 288), (64, 480), (32, 32)):
        outputs = backend.infer(crops(3, height, width))  # split 2 + 1, each request of this shape
        assert outputs.ai_mask.shape == outputs.manipulation_mask.shape == (3, height // 4, width // 4)
    assert server.shapes == [(512, 512)] * 2 + [(192, 288)] * 2 + [(64, 480)] * 2 + [(32, 32)] * 2


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((1, 3, 512, 512), dtype=np.float32),  # not uint8
        np.zeros((3, 512, 512), dtype=np.uint8),  # no batch axis
        np.zeros((0, 3, 512, 512), dtype=np.uint8),  # empty batch
        np.zeros((1, 1, 512, 512), dtype=np.uint8),  # not RGB
        np.zeros((1, 3, 200, 512), dtype=np.uint8),  # not a multiple of 32
        np.zeros((1, 3, 544, 512), dtype=np.uint8),  # above a full tile
        np.zeros((1, 3, 512, 0), dtype=np.uint8),  # below the smallest tile
    ],
    ids=["float32", "no-batch", "empty", "one-channel", "height-200", "height-544", "width-0"],
)
def test_batches_the_model_cannot_take_are_refused_before_sending(images: np.ndarray) -> None:
    server = FakeTriton([1])
    with pytest.raises(ValueError, match=r"uint8|multiples of 32"):
        triton(server).infer(images)
    with pytest.raises(ValueError, match=r"uint8|multiples of 32"):
        triton(server, model_version=1).pinned().infer(images)
    assert server.requests == []


def test_a_response_from_another_version_than_asked_is_refused() -> None:
    server = FakeTriton([1])
    pinned = triton(server).pinned()
    original = server.infer

    def lying(*args: Any, **kw: Any) -> _Result:
        result = original(*args, **kw)
        result.version = 2
        return result

    server.infer = lying  # type: ignore[method-assign]
    with pytest.raises(TritonInferenceError, match="asked for v1, the response says v2"):
        pinned.infer(crops(1))


# --- the pipeline: one version per chunk, in the database ---------------------------------------------------


def _png(seed: int) -> bytes:
    """A 128x96 noise PNG: one 96x128 tile (H x W), above the contract's 64-px minimum side."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(tmp_path: Path, n: int, start: int = 0) -> list[ObjectRef]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i in range(start, start + n):
        (images / f"{i:02d}.png").write_bytes(_png(i))
    return [ObjectRef(f"{i:02d}.png") for i in range(start, start + n)]


def _runtime(tmp_path: Path, backend: Any) -> Runtime:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url=str(tmp_path / "masks"))
    return Runtime.create(settings, backend=backend)


def _rows(runtime: Runtime) -> list[tuple[int, str, str]]:
    with runtime.sessions() as session:
        rows = session.execute(select(Result.model_version, Result.verdict, Result.ai_mask_url)).all()
    return [(int(v), str(verdict), str(url)) for v, verdict, url in rows]


def test_a_chunk_straddling_a_version_change_is_recorded_under_the_version_that_judged_it(tmp_path: Path) -> None:
    server = FakeTriton([1])
    load_v2_after_first_request(server)
    runtime = _runtime(tmp_path, triton(server))
    source_uri = (tmp_path / "images").as_uri()
    refs = _folder(tmp_path, 5)
    outcomes = run_chunk(runtime, source_uri, refs, None, reuse=False)
    assert [o.verdict for o in outcomes] == ["real"] * 5
    assert server.requests == ["1"] * 5  # v2 became latest after the first request; the chunk stayed on v1
    rows = _rows(runtime)
    assert len(rows) == 5
    assert {(version, verdict) for version, verdict, _ in rows} == {(1, VERDICT[1])}
    assert all(f"/{NAME}/v1/" in url for _, _, url in rows)  # masks filed under the same version

    more = _folder(tmp_path, 3, start=5)  # the next chunk pins the version ready now
    run_chunk(runtime, source_uri, more, None, reuse=False)
    rows = _rows(runtime)
    assert sorted((v, verdict) for v, verdict, _ in rows) == [(1, "real")] * 5 + [(2, "ai-generated")] * 3
    runtime.close()


def test_a_chunk_whose_version_is_unloaded_mid_chunk_records_nothing_then_runs_whole_on_the_new_one(
    tmp_path: Path,
) -> None:
    server = FakeTriton([1])
    load_v2_after_first_request(server, unload_v1=True)
    runtime = _runtime(tmp_path, triton(server))
    source_uri = (tmp_path / "images").as_uri()
    refs = _folder(tmp_path, 4)
    with pytest.raises(TritonUnavailable):  # the task retries the chunk (a transient error)
        run_chunk(runtime, source_uri, refs, None, reuse=False)
    assert _rows(runtime) == []
    run_chunk(runtime, source_uri, refs, None, reuse=False)
    assert {(v, verdict) for v, verdict, _ in _rows(runtime)} == {(2, VERDICT[2])}
    runtime.close()


# --- backends without pinned(): held to their version, or the chunk is retried ------------------------------


class _Drifting:
    """An in-process-like backend whose version changes after its first batch (which no real one does)."""

    model_name = NAME
    max_batch_size = 1
    thresholds = VerdictThresholds()

    def __init__(self) -> None:
        self.model_version = 1

    def infer(self, images: np.ndarray) -> BatchOutputs:
        version, self.model_version = self.model_version, 2
        n, _, height, width = images.shape
        mask = np.zeros((n, height // MASK_STRIDE, width // MASK_STRIDE), dtype=np.uint8)
        return BatchOutputs(np.full(n, PROBABILITY[version], dtype=np.float32), mask, mask.copy())


def test_a_backend_without_pinning_that_changes_version_fails_the_chunk_as_transient(tmp_path: Path) -> None:
    from worker.tasks import TRANSIENT_ERRORS

    drifting = _Drifting()
    fixed = pin(drifting)
    assert isinstance(fixed, FixedVersion) and fixed.model_version == 1
    with pytest.raises(ModelVersionChanged):
        fixed.infer(crops(1))
    assert issubclass(ModelVersionChanged, TRANSIENT_ERRORS)

    runtime = _runtime(tmp_path, _Drifting())
    with pytest.raises(ModelVersionChanged):
        run_chunk(runtime, (tmp_path / "images").as_uri(), _folder(tmp_path, 2), None, reuse=False)
    assert _rows(runtime) == []
    runtime.close()
