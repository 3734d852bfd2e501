"""The exported model served by a real Triton server, through ``TritonBackend``, against the in-process model.

One server per session (tests/fixtures/triton.py): the tiny random gamma-b0 checkpoint, python backend,
max_batch_size 2. Tolerances are the export's parity tolerances: probability 1e-4 absolute, masks one uint8 step.
Inputs: tiles of several shapes (contract v2: any multiple of 32 up to 512, one shape per batch) from
scikit-image's photographs and synthetic photographs through ``gamma.preprocess`` (the tiles the worker sends),
plus noise and a gradient; and whole images through ``gamma.inference.Detector`` (tiling, batching, stitching).
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sysconfig
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import deploy.export_triton as export_triton
from deploy.onnx_export import (
    MASK_MAX_STEP,
    PARITY_BATCHES,
    PARITY_SHAPES,
    PROBABILITY_ATOL,
    contract_tiles,
    synthetic_photo,
)
from deploy.triton_client import ModelNotFound, TritonBackend, TritonUnavailable
from deploy.triton_config import parse_config
from deploy.triton_server import TritonServer, free_port
from gamma import wire
from gamma.inference import BatchOutputs, Detector, ImageResult, TorchBackend
from gamma.weights import DEFAULT_MODEL, Checkpoint, load_checkpoint
from tests.fixtures.services import on_termination
from tests.fixtures.triton import TRITON_MAX_BATCH, sample_image_tiles

pytestmark = pytest.mark.integration

MODEL = "gamma-test"  # the tiny checkpoint's name


def _gradient(height: int, width: int) -> np.ndarray:
    """A smooth uint8 (3, height, width) ramp: the opposite of noise for the encoder."""
    rows = np.linspace(0, 255, height, dtype=np.float32)[None, :, None]
    columns = np.linspace(0, 255, width, dtype=np.float32)[None, None, :]
    return np.broadcast_to(columns * 2 / 3 + rows / 4, wire.IMAGES.concrete(height, width)).astype(np.uint8)


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, wire.IMAGES.concrete(height, width), dtype=np.uint8)


def _tiles() -> dict[tuple[int, int], np.ndarray]:
    """Batches by tile shape (height, width), uint8 (N, 3, H, W): what the worker sends (real photographs and
    synthetic JPEG/PNG photographs through ``gamma.preprocess``) and the two extremes of what a tile looks like to
    the encoder (uniform noise, a smooth gradient), interleaved so that every batch of the served model mixes
    kinds. Full tiles; the small non-square tile of the export's parity gate; coffee's 384x512 tiles."""
    photos = sample_image_tiles("full")
    astronaut, coffee = photos["astronaut.png"].pixels, photos["coffee.png"].pixels
    (synthetic,) = contract_tiles(1, seed=11)
    small_height, small_width = PARITY_SHAPES[1]
    small_synthetic = contract_tiles(2, seed=12, height=small_height, width=small_width)
    return {
        (512, 512): np.stack(
            [astronaut[0], _noise(512, 512, 7), synthetic, _gradient(512, 512), astronaut[0, :, ::-1]]
        ),
        (small_height, small_width): np.stack(
            [small_synthetic[0], _noise(small_height, small_width, 8), small_synthetic[1]]
        ),
        tuple(coffee.shape[-2:]): coffee,  # type: ignore[dict-item]
    }


TILES_BY_SHAPE = _tiles()
CROPS = TILES_BY_SHAPE[(512, 512)]  # full tiles: the batches most tests send


@pytest.fixture(scope="module")
def torch_backend(tiny_checkpoint: Checkpoint) -> TorchBackend:
    return TorchBackend(tiny_checkpoint.model, tiny_checkpoint.config, MODEL, tiny_checkpoint.version)


@pytest.fixture(scope="module")
def expected_by_shape(torch_backend: TorchBackend) -> dict[tuple[int, int], BatchOutputs]:
    return {shape: torch_backend.infer(tiles) for shape, tiles in TILES_BY_SHAPE.items()}


@pytest.fixture(scope="module")
def expected(expected_by_shape: dict[tuple[int, int], BatchOutputs]) -> BatchOutputs:
    return expected_by_shape[(512, 512)]


@pytest.fixture(scope="module")
def backend(triton_server: TritonServer) -> Iterator[TritonBackend]:
    backend = TritonBackend(triton_server.grpc_url, MODEL, timeout_s=60)
    yield backend
    backend.close()


def _assert_close(actual: BatchOutputs, expected: BatchOutputs) -> None:
    assert len(actual) == len(expected)
    np.testing.assert_allclose(actual.probability, expected.probability, rtol=0, atol=PROBABILITY_ATOL)
    for name in ("ai_mask", "manipulation_mask"):
        got, want = getattr(actual, name), getattr(expected, name)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= MASK_MAX_STEP, name


def test_backend_describes_the_served_model(backend: TritonBackend, tiny_checkpoint: Checkpoint) -> None:
    assert backend.model_version == tiny_checkpoint.version
    assert backend.max_batch_size == TRITON_MAX_BATCH
    assert backend.thresholds == tiny_checkpoint.config.thresholds
    assert backend.is_ready()


def _rows(outputs: BatchOutputs, start: int, stop: int) -> BatchOutputs:
    return BatchOutputs(*(getattr(outputs, f)[start:stop] for f in ("probability", "ai_mask", "manipulation_mask")))


def test_served_outputs_match_in_process(
    backend: TritonBackend, expected_by_shape: dict[tuple[int, int], BatchOutputs]
) -> None:
    """Every tile of every shape, in requests of at most max_batch_size (no client-side split), matches the
    in-process model; masks are a quarter of the tile."""
    for (height, width), tiles in TILES_BY_SHAPE.items():
        expected = expected_by_shape[(height, width)]
        assert expected.ai_mask.shape[1:] == (height // 4, width // 4)
        for start in range(0, len(tiles), TRITON_MAX_BATCH):
            stop = min(start + TRITON_MAX_BATCH, len(tiles))
            _assert_close(backend.infer(tiles[start:stop]), _rows(expected, start, stop))


def test_request_above_max_batch_is_split(
    backend: TritonBackend, expected: BatchOutputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[int] = []
    original = backend._infer_chunk

    def spy(images: np.ndarray) -> tuple[BatchOutputs, int]:
        sent.append(len(images))
        return original(images)

    monkeypatch.setattr(backend, "_infer_chunk", spy)
    served = backend.infer(CROPS)
    full, rest = divmod(len(CROPS), TRITON_MAX_BATCH)
    assert sent == [TRITON_MAX_BATCH] * full + ([rest] if rest else [])
    _assert_close(served, expected)


def _executions_by_batch_size(url: str) -> Counter[int]:
    with grpcclient.InferenceServerClient(url) as client:
        (stats,) = client.get_inference_statistics(MODEL).model_stats
    return Counter({s.batch_size: s.compute_infer.count for s in stats.batch_stats})


def test_concurrent_requests_of_different_tile_shapes_each_get_their_own_outputs(
    backend: TritonBackend, expected_by_shape: dict[tuple[int, int], BatchOutputs]
) -> None:
    """Single-tile requests of three shapes from several threads at once: the server's dynamic batcher groups only
    requests of one shape, and every response holds its own request's outputs."""
    jobs = [(shape, row) for shape, tiles in TILES_BY_SHAPE.items() for row in range(min(2, len(tiles)))]
    start = threading.Barrier(len(jobs))
    results: dict[int, BatchOutputs] = {}

    def one(index: int) -> None:
        shape, row = jobs[index]
        start.wait()
        results[index] = backend.infer(TILES_BY_SHAPE[shape][row][None])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(len(jobs)))
    for index, (shape, row) in enumerate(jobs):
        _assert_close(results[index], _rows(expected_by_shape[shape], row, row + 1))


def test_concurrent_requests_are_batched_by_the_server(backend: TritonBackend, triton_server: TritonServer) -> None:
    """Single-image requests from several threads at once leave the server as batches (its statistics say so)."""
    requests = 2 * TRITON_MAX_BATCH
    before = _executions_by_batch_size(triton_server.grpc_url)
    start = threading.Barrier(requests)
    results: dict[int, BatchOutputs] = {}

    def one(index: int) -> None:
        start.wait()
        results[index] = backend.infer(CROPS[index % len(CROPS)][None])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(requests))
    # Triton updates its statistics after sending the response: give the last execution a moment to be counted.
    deadline = time.monotonic() + 10
    while True:
        delta = _executions_by_batch_size(triton_server.grpc_url) - before
        if sum(size * count for size, count in delta.items()) >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(size * count for size, count in delta.items()) == requests  # every request ran exactly once
    assert any(size > 1 for size in delta), f"no batched execution: {dict(delta)}"


def test_server_down_is_unavailable_within_seconds() -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}", MODEL, timeout_s=5, metadata_timeout_s=2)
    with pytest.raises(TritonUnavailable, match="UNAVAILABLE") as raised:  # refused, not a timeout
        backend.infer(CROPS[:1])
    assert raised.value.retryable


def test_unresponsive_server_is_unavailable_after_the_timeout() -> None:
    """A peer that accepts connections and never answers (a hung server) costs the timeout, not forever."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        backend = TritonBackend(f"127.0.0.1:{port}", MODEL, timeout_s=1, metadata_timeout_s=1)
        with pytest.raises(TritonUnavailable, match="DEADLINE_EXCEEDED"):  # ended by the timeout, not by a reply
            backend.infer(CROPS[:1])


def test_missing_version_or_model_is_model_not_found(backend: TritonBackend, triton_server: TritonServer) -> None:
    for missing in (
        TritonBackend(triton_server.grpc_url, MODEL, model_version=backend.model_version + 1),
        TritonBackend(triton_server.grpc_url, "no-such-model"),
    ):
        with pytest.raises(ModelNotFound, match="not found") as raised:
            missing.infer(CROPS[:1])
        assert not raised.value.retryable


def test_malformed_batch_is_rejected_before_sending(backend: TritonBackend) -> None:
    with pytest.raises(ValueError, match="uint8"):
        backend.infer(CROPS[:1].astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        backend.infer(CROPS[:1, :1])  # one channel
    with pytest.raises(ValueError, match="multiples of 32"):
        backend.infer(CROPS[:1, :, :200])  # a height no tile has


# Whole images through the Detector: tiling, batching of many images' tiles, aggregation and stitched masks.


def _jpeg(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    synthetic_photo(np.random.default_rng(seed), width, height).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# A large photograph (coverage "full": a 3 x 2 grid of 512x512 tiles) and a small one (one whole-image tile, cut to
# the stride: 288 x 192, W x H), as the worker would get them.
IMAGES = {"large.jpg": _jpeg(1100, 700, seed=21), "small.jpg": _jpeg(300, 200, seed=22)}


def _by_source(results: list[ImageResult]) -> dict[str, ImageResult]:
    for result in results:
        assert result.error is None and result.judgement is not None and result.tiles is not None, result
    return {result.source: result for result in results}


def test_detector_served_matches_in_process_on_tiled_images(
    backend: TritonBackend, torch_backend: TorchBackend
) -> None:
    """The same images through ``Detector(TorchBackend)`` and ``Detector(TritonBackend)`` (coverage ``full``):
    same tiles, same verdicts, probabilities within the export's tolerance, stitched masks within one step."""
    items = list(IMAGES.items())
    local = _by_source(Detector(torch_backend, coverage="full").classify_bytes(items))
    served = _by_source(Detector(backend, coverage="full").classify_bytes(items))

    large, small = local["large.jpg"].tiles, local["small.jpg"].tiles
    assert large is not None and small is not None
    assert (large.plan.tile_height, large.plan.tile_width, large.plan.tiles_seen) == (512, 512, 6)
    assert (small.plan.tile_height, small.plan.tile_width, small.plan.tiles_seen) == (192, 288, 1)
    for source, want in local.items():
        got = served[source]
        assert got.tiles is not None and want.tiles is not None
        assert got.judgement is not None and want.judgement is not None
        assert got.tiles.plan == want.tiles.plan
        np.testing.assert_allclose(
            got.tiles.tile_probabilities, want.tiles.tile_probabilities, rtol=0, atol=PROBABILITY_ATOL
        )
        assert got.judgement.verdict == want.judgement.verdict, source
        assert abs(got.judgement.probability - want.judgement.probability) <= PROBABILITY_ATOL, source
        seen = want.tiles.plan.seen()
        for name, area in (("ai_mask", "ai_area"), ("manipulation_mask", "manipulated_area")):
            got_mask, want_mask = getattr(got, name), getattr(want, name)
            assert got_mask.dtype == np.uint8 and got_mask.shape == want_mask.shape == want.tiles.plan.mask_shape
            assert np.abs(got_mask.astype(np.int16) - want_mask.astype(np.int16)).max() <= MASK_MAX_STEP, name
            # A flagged area can move only by the pixels whose (one-step) difference crossed the threshold.
            changed = float((got_mask != want_mask)[seen].mean())
            assert abs(getattr(got.judgement, area) - getattr(want.judgement, area)) <= changed + 1e-12, area


# The shipped model (models/gamma-local-effl0), exported by the README's command and served like a deployment would.


@pytest.fixture(scope="module")
def shipped() -> Checkpoint:
    return load_checkpoint(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def shipped_repository(shipped: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python deploy/export_triton.py --backend python`` (default checkpoint: the shipped one) into a temporary
    repository; max batch 2 as in the session fixture, parity at the exporter's default batches."""
    repository = tmp_path_factory.mktemp("shipped_repository")
    argv = ["--backend", "python", "--out", str(repository), "--max-batch", str(TRITON_MAX_BATCH)]
    assert export_triton.main(argv) == 0
    return repository


@pytest.mark.slow
def test_shipped_model_exports_for_the_python_backend(shipped: Checkpoint, shipped_repository: Path) -> None:
    model_dir = shipped_repository / DEFAULT_MODEL
    version_dir = model_dir / str(shipped.version)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([str(shipped.version), "config.pbtxt"])
    assert sorted(p.name for p in version_dir.iterdir()) == ["metadata.json", "model.onnx", "model.py"]
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert (config.name, config.backend, config.max_batch_size) == (DEFAULT_MODEL, "python", TRITON_MAX_BATCH)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["version"] == shipped.version and metadata["checkpoint"]["name"] == DEFAULT_MODEL
    assert metadata["thresholds"] == shipped.config.thresholds.to_dict()
    parity = metadata["parity"]
    assert set(parity["batches"]) == {str(b) for b in PARITY_BATCHES}
    assert parity["tile_shapes"] == [f"{h}x{w}" for h, w in sorted(PARITY_SHAPES)]
    for batch in parity["batches"].values():
        assert batch["probability_max_abs"] <= PROBABILITY_ATOL and batch["mask_max_step"] <= MASK_MAX_STEP


@pytest.mark.slow
def test_shipped_model_served_matches_in_process(shipped: Checkpoint, shipped_repository: Path, tmp_path: Path) -> None:
    local = TorchBackend(shipped.model, shipped.config, DEFAULT_MODEL, shipped.version)
    expected = {shape: local.infer(tiles) for shape, tiles in TILES_BY_SHAPE.items()}
    server = TritonServer(
        shipped_repository, http_port=free_port(), grpc_port=free_port(), log_file=tmp_path / "tritonserver.log"
    )
    with on_termination(server.stop), server:
        backend = TritonBackend(server.grpc_url, DEFAULT_MODEL, timeout_s=60)
        try:
            assert backend.model_version == shipped.version
            assert backend.thresholds == shipped.config.thresholds
            for shape, tiles in TILES_BY_SHAPE.items():
                _assert_close(backend.infer(tiles), expected[shape])
        finally:
            backend.close()


# The gamma-triton console script, as a developer runs it.

GAMMA_TRITON = Path(sysconfig.get_paths()["scripts"]) / "gamma-triton"


def _lines(stream: object) -> queue.Queue[str]:
    """The lines of a text stream, read by a daemon thread (so waiting for one can time out)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_gamma_triton_cli_serves_until_sigterm(triton_repository: Path, tmp_path: Path) -> None:
    """``gamma-triton`` on free ports: ready line, real inference over gRPC, then SIGTERM to its PID stops it and
    its tritonserver with exit code 0."""
    assert GAMMA_TRITON.is_file(), f"{GAMMA_TRITON} missing: pip install -e ."
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "tritonserver.log"
    command = [str(GAMMA_TRITON), "--model-repository", str(triton_repository)]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-file", str(log)]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server_pid = None
    try:
        lines = _lines(cli.stdout)
        started = lines.get(timeout=60)
        match = re.fullmatch(rf"tritonserver pid (\d+), log {re.escape(str(log))}\n", started)
        assert match, started
        server_pid = int(match.group(1))
        assert server_pid != cli.pid and _alive(server_pid)
        ready = lines.get(timeout=120)
        assert ready == f"ready: gRPC 127.0.0.1:{grpc_port}, HTTP http://127.0.0.1:{http_port}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        backend = TritonBackend(f"127.0.0.1:{grpc_port}", MODEL, timeout_s=60)
        try:
            assert backend.infer(CROPS[:1]).probability.shape == (1,)
        finally:
            backend.close()

        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0, cli.stderr.read() if cli.stderr else ""  # a hang guard, not a timing
        assert not _alive(server_pid), "tritonserver outlived gamma-triton"
        with socket.socket() as probe:  # the ports are free again
            assert probe.connect_ex(("127.0.0.1", grpc_port)) != 0
        assert "Started GRPCInferenceService at 127.0.0.1:" in log.read_text(errors="replace")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if server_pid is not None and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_gamma_triton_cli_refuses_a_missing_repository(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(GAMMA_TRITON), "--model-repository", str(tmp_path / "absent"), "--http-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: model repository ") and "is not a folder" in done.stderr
