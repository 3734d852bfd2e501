"""deploy/export_triton.py: config.pbtxt content, repository layout, refusal to overwrite, parity gate, and tiles
of any shape (contract v2: H and W dynamic, multiples of 32 up to 512).

A micro GAMMA (widths 8-16, one block per stage) keeps the parity runs fast; the exporter does not care about the
preset. One real dynamo export per module; other tests reuse its ONNX through a stand-in exporter.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2 as pb

import deploy.export_triton as export_triton
import deploy.onnx_export as onnx_export
import deploy.triton_config as triton_config
import gamma.weights
from deploy.export_triton import ExportOptions, VersionExists, export_to_repository
from deploy.onnx_export import PARITY_SHAPES, ExportError, ExportResult, ParityError, check_parity, export_onnx
from deploy.triton_config import ModelSettings, parse_config, render_config, thresholds_param
from gamma import wire
from gamma.inference import ort_session
from gamma.model import GammaModel
from gamma.model.serving import ServingModel
from gamma.verdict import VerdictThresholds
from gamma.weights import Checkpoint, load_checkpoint, save_checkpoint
from tests.fixtures.models import MICRO_CONFIG

THRESHOLDS = VerdictThresholds(ai_probability=0.6, review_band=0.05, mask_pixel=0.4, manipulated_area=0.02)
MICRO = MICRO_CONFIG.replace(thresholds=THRESHOLDS)


def _micro_checkpoint(directory: Path, version: int, thresholds: VerdictThresholds = THRESHOLDS) -> Checkpoint:
    torch.manual_seed(version)
    model = GammaModel(MICRO.replace(thresholds=thresholds)).eval()
    save_checkpoint(model, directory, {"name": "gamma-micro", "version": version})
    return load_checkpoint(directory)


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return _micro_checkpoint(tmp_path_factory.mktemp("models") / "gamma-micro", version=3)


@pytest.fixture(scope="module")
def exported(micro: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with micro v3 exported for the python backend by the real exporter."""
    repository = tmp_path_factory.mktemp("repository")
    export_to_repository(micro, repository, ExportOptions(backend="python", max_batch_size=4), log=lambda _: None)
    return repository


@pytest.fixture
def reuse_export(exported: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Replace the (slow) ONNX export with a copy of the module's exported graph; parity still runs for real."""
    source = exported / "gamma-micro" / "3" / "model.onnx"

    def copy_export(serving: ServingModel, path: str | Path, opset: int = 18, max_batch: int = 64) -> ExportResult:
        shutil.copyfile(source, path)
        return ExportResult(Path(path), "dynamo", opset)

    monkeypatch.setattr(export_triton, "export_onnx", copy_export)
    return source


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- config.pbtxt ---------------------------------------------------------------------------------------------


def test_config_tensors_come_from_the_wire_contract() -> None:
    config = parse_config(render_config(ModelSettings(name="m")))
    assert [(t.name, list(t.dims)) for t in config.input] == [(s.name, list(s.shape)) for s in wire.INPUTS]
    assert [(t.name, list(t.dims)) for t in config.output] == [(s.name, list(s.shape)) for s in wire.OUTPUTS]
    # Tiles of any size: Triton takes -1 as "any size" for height and width, images and masks alike.
    assert [list(t.dims) for t in (*config.input, *config.output)] == [[3, -1, -1], [1], [1, -1, -1], [1, -1, -1]]
    data_types = [pb.DataType.Name(t.data_type) for t in (*config.input, *config.output)]
    assert data_types == [f"TYPE_{s.triton_dtype}" for s in (*wire.INPUTS, *wire.OUTPUTS)]


def test_onnxruntime_gpu_config_batches_and_uses_tensorrt_fp16() -> None:
    text = render_config(
        ModelSettings(name="gamma-x", backend="onnxruntime", max_batch_size=16, max_queue_delay_us=500)
    )
    config = parse_config(text)
    assert config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_GPU)]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_engine_cache_path"] == "/tmp/triton-trt-cache/gamma-x"
    assert config.version_policy.latest.num_versions == 1
    # A warm-up needs concrete dims: a full tile, then the smallest one (the TensorRT provider's shape range then
    # spans every tile before traffic arrives).
    assert [(w.batch_size, list(w.inputs[wire.IMAGES.name].dims)) for w in config.model_warmup] == [
        (1, [3, 512, 512]),
        (1, [3, 32, 32]),
    ]
    assert all(w.inputs[wire.IMAGES.name].zero_data for w in config.model_warmup)


def test_python_config_runs_on_cpu_with_configured_threads_and_pinned_version() -> None:
    settings = ModelSettings(name="m", backend="python", instance_count=3, cpu_threads=2, versions=(7,))
    config = parse_config(render_config(settings))
    assert config.backend == "python"
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, pb.ModelInstanceGroup.KIND_CPU)]
    assert config.parameters["intra_op_threads"].string_value == "2"
    assert config.parameters["onnx_file"].string_value == "model.onnx"
    assert config.parameters["intra_op_spinning"].string_value == "0"
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert list(config.version_policy.specific.versions) == [7]


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ModelSettings(name="m", max_batch_size=0)
    with pytest.raises(ValueError, match="backend"):
        ModelSettings(name="m", backend="pytorch")  # type: ignore[arg-type]


# --- exporting ------------------------------------------------------------------------------------------------


def test_export_writes_a_servable_version(exported: Path, micro: Checkpoint) -> None:
    model_dir = exported / "gamma-micro"
    assert sorted(p.name for p in (model_dir / "3").iterdir()) == ["metadata.json", "model.onnx", "model.py"]
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert config.name == "gamma-micro" and config.backend == "python" and config.max_batch_size == 4
    served_thresholds = json.loads(config.parameters[thresholds_param(3)].string_value)
    assert VerdictThresholds.from_dict(served_thresholds) == THRESHOLDS
    metadata = json.loads((model_dir / "3" / "metadata.json").read_text())
    assert metadata["model_name"] == "gamma-micro" and metadata["version"] == 3
    assert VerdictThresholds.from_dict(metadata["thresholds"]) == THRESHOLDS
    assert metadata["onnx"]["exporter"] in ("dynamo", "torchscript") and metadata["onnx"]["opset"] >= 17
    parity = metadata["parity"]
    assert set(parity["batches"]) == {"1", "4"}
    assert parity["tile_shapes"] == ["192x288", "512x512"]  # every batch at both tile shapes
    assert set(parity["runs"]) == {"1x3x192x288", "4x3x192x288", "1x3x512x512", "4x3x512x512"}
    assert metadata["wire"]["inputs"]["images"] == {"dtype": "uint8", "shape": [3, -1, -1]}
    assert metadata["wire"]["outputs"]["ai_mask"] == {"dtype": "uint8", "shape": [1, -1, -1]}
    # The written graph is the checked one: it still agrees with PyTorch.
    assert check_parity(ServingModel(micro.model), model_dir / "3" / "model.onnx", batches=(2,)).ok


def test_existing_version_is_not_overwritten(exported: Path, micro: Checkpoint) -> None:
    before = _tree(exported)
    with pytest.raises(VersionExists, match="--force"):
        export_to_repository(micro, exported, ExportOptions(backend="python"), log=lambda _: None)
    assert _tree(exported) == before


def test_cli_refusal_is_a_clear_nonzero_exit(exported: Path, micro: Checkpoint, capsys: pytest.CaptureFixture) -> None:
    code = export_triton.main(["--checkpoint", str(micro.path), "--out", str(exported), "--backend", "python"])
    assert code != 0
    assert "already exported" in capsys.readouterr().err


def test_force_replaces_the_version(reuse_export: Path, micro: Checkpoint, tmp_path: Path) -> None:
    options = ExportOptions(backend="python", max_batch_size=4)
    export_to_repository(micro, tmp_path, options, log=lambda _: None)
    (tmp_path / "gamma-micro" / "3" / "stale.txt").write_text("from the previous export")
    export_to_repository(
        micro, tmp_path, ExportOptions(backend="python", max_batch_size=2, force=True), log=lambda _: None
    )
    assert not (tmp_path / "gamma-micro" / "3" / "stale.txt").exists()
    assert parse_config((tmp_path / "gamma-micro" / "config.pbtxt").read_text()).max_batch_size == 2
    assert not [p for p in (tmp_path / "gamma-micro").iterdir() if p.name.startswith(".")]


def test_parity_failure_writes_nothing(
    exported: Path, micro: Checkpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A graph whose classification bias drifted by 0.5 must be caught, and no file may reach the repository."""
    source = exported / "gamma-micro" / "3" / "model.onnx"

    def broken_export(serving: ServingModel, path: str | Path, opset: int = 18, max_batch: int = 64) -> ExportResult:
        graph = onnx.load(str(source))
        (bias,) = [t for t in graph.graph.initializer if "cls_head.bias" in t.name]
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
        onnx.save(graph, str(path))
        return ExportResult(Path(path), "dynamo", opset)

    monkeypatch.setattr(export_triton, "export_onnx", broken_export)
    repository = tmp_path / "repository"
    with pytest.raises(ParityError, match="probability"):
        export_to_repository(micro, repository, ExportOptions(backend="python"), log=lambda _: None)
    assert not repository.exists() or not any(repository.rglob("*"))
    code = export_triton.main(["--checkpoint", str(micro.path), "--out", str(repository)])
    assert code != 0
    assert not repository.exists() or not any(repository.rglob("*"))


def test_thresholds_of_every_served_version_reach_the_config(reuse_export: Path, tmp_path: Path) -> None:
    other = VerdictThresholds(ai_probability=0.7)
    first = _micro_checkpoint(tmp_path / "v3", version=3)
    second = _micro_checkpoint(tmp_path / "v4", version=4, thresholds=other)
    options = ExportOptions(backend="python")
    for checkpoint in (first, second):
        # Same graph file for both (stand-in exporter), so only v3's weights pass parity: give v4 the v3 weights.
        checkpoint.model.load_state_dict(first.model.state_dict())
        export_to_repository(checkpoint, tmp_path / "repo", options, log=lambda _: None)
    config = parse_config((tmp_path / "repo" / "gamma-micro" / "config.pbtxt").read_text())
    assert json.loads(config.parameters[thresholds_param(3)].string_value) == THRESHOLDS.to_dict()
    assert json.loads(config.parameters[thresholds_param(4)].string_value) == other.to_dict()


def test_tensorrt_export_leaves_the_engine_build_to_the_gpu_host(
    reuse_export: Path, micro: Checkpoint, tmp_path: Path
) -> None:
    export_to_repository(micro, tmp_path, ExportOptions(backend="tensorrt", max_batch_size=8), log=lambda _: None)
    version_dir = tmp_path / "gamma-micro" / "3"
    config = parse_config((tmp_path / "gamma-micro" / "config.pbtxt").read_text())
    assert config.backend == "tensorrt" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    script = (version_dir / "build_engine.sh").read_text()
    assert "--saveEngine=model.plan --fp16" in script
    # One profile over every tile: the smallest at batch 1 to full tiles at the largest batch, tuned for full tiles.
    assert "--minShapes=images:1x3x32x32" in script
    assert "--optShapes=images:4x3x512x512" in script and "--maxShapes=images:8x3x512x512" in script
    assert "${" not in script  # every template placeholder was filled


def test_dynamo_failure_falls_back_to_torchscript(
    micro: Checkpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("unsupported pattern")

    monkeypatch.setattr(onnx_export, "_export_dynamo", fail)
    serving = ServingModel(micro.model)
    result = export_onnx(serving, tmp_path / "model.onnx")
    assert result.exporter == "torchscript"
    assert result.fallback_reason is not None and "unsupported pattern" in result.fallback_reason
    assert check_parity(serving, result.path).ok


def test_missing_default_checkpoint_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(gamma.weights, "REPO_MODELS_DIR", tmp_path / "no-models")
    monkeypatch.delenv("GAMMA_MODEL_PATH", raising=False)
    assert export_triton.main(["--out", str(tmp_path / "repo")]) != 0
    assert gamma.weights.DEFAULT_MODEL in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_python_template_reads_exactly_the_param_keys_of_triton_config() -> None:
    """The python backend's model.py imports nothing from the project (the server has no gamma installed), so it
    repeats the PARAM_* keys by design; this pins the copy to the source: every ``params.get(KEY, default)`` key
    is a PARAM_* value and every PARAM_* value is read. The file default must be the file the exporter writes."""
    tree = ast.parse((export_triton.TEMPLATES / "python_model.py").read_text())
    reads = {
        call.args[0].value: call.args[1].value if len(call.args) > 1 else None
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "get"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "params"
        and call.args
        and isinstance(call.args[0], ast.Constant)
    }
    declared = {getattr(triton_config, n) for n in dir(triton_config) if n.startswith("PARAM_")}
    assert declared, "no PARAM_* constants found in deploy/triton_config.py"
    assert set(reads) == declared
    assert reads[triton_config.PARAM_ONNX_FILE] == triton_config.MODEL_FILES["onnxruntime"]


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """A graph tensor's dims: the size where fixed, None where symbolic."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def test_dynamo_export_takes_the_positional_dynamic_shapes(exported: Path) -> None:
    """The module's export came from the dynamo exporter (dynamic_shapes given positionally), not the fallback, and
    batch, height and width are symbolic on the images and on both masks."""
    metadata = json.loads((exported / "gamma-micro" / "3" / "metadata.json").read_text())
    assert metadata["onnx"]["exporter"] == "dynamo", metadata["onnx"]["fallback_reason"]
    graph = onnx.load(str(exported / "gamma-micro" / "3" / "model.onnx"), load_external_data=False)
    assert graph.graph.input[0].name == wire.IMAGES.name
    assert _dims(graph.graph.input[0]) == [None, 3, None, None]
    outputs = {value.name: _dims(value) for value in graph.graph.output}
    assert outputs[wire.PROBABILITY.name] == [None, 1]
    assert outputs[wire.AI_MASK.name] == outputs[wire.MANIPULATION_MASK.name] == [None, 1, None, None]


@pytest.fixture(scope="module")
def micro_session(exported: Path) -> Any:
    return ort_session(exported / "gamma-micro" / "3" / "model.onnx")


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (512, 96), (96, 512), (320, 448)])
def test_exported_graph_matches_torch_at_every_kind_of_tile(
    exported: Path, micro: Checkpoint, height: int, width: int
) -> None:
    """Beyond the gate's two shapes: the smallest tile the model takes, the smallest an image gives, long thin
    tiles both ways and an odd one. A size baked into the graph (a Reshape or an interpolation traced at the
    example's 256x384) would give wrong shapes or numbers here."""
    report = check_parity(
        ServingModel(micro.model), exported / "gamma-micro" / "3" / "model.onnx", batches=(3,), shapes=[(height, width)]
    )
    assert report.ok, report.summary()
    assert set(report.differences) == {(3, height, width)}


def test_one_session_takes_batches_of_different_tile_shapes_in_turn(micro_session: Any) -> None:
    """One ONNX Runtime session (one Triton instance) serves tile shapes one after another, as the dynamic batcher
    sends them: masks are always a quarter of the tile."""
    for height, width in ((512, 512), (192, 288), (512, 512), (64, 480)):
        images = np.zeros((2, *wire.IMAGES.concrete(height, width)), dtype=np.uint8)
        probability, ai, manipulation = micro_session.run([s.name for s in wire.OUTPUTS], {wire.IMAGES.name: images})
        assert probability.shape == (2, 1)
        assert (
            ai.shape
            == manipulation.shape
            == (2, *wire.AI_MASK.concrete(height, width))
            == (2, 1, height // 4, width // 4)
        )


def test_a_graph_with_a_fixed_tile_size_is_refused(exported: Path, tmp_path: Path) -> None:
    """An export that fixed H (as a batch-only export at 512 would) accepts one tile size: the signature check
    refuses it before parity even runs."""
    graph = onnx.load(str(exported / "gamma-micro" / "3" / "model.onnx"))
    graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 512
    onnx.save(graph, str(tmp_path / "fixed.onnx"))
    with pytest.raises(ExportError, match="images: axis 2 is fixed at 512, wire contract says dynamic"):
        onnx_export._check_signature(tmp_path / "fixed.onnx")


def test_parity_gate_runs_every_batch_at_every_default_tile_shape(exported: Path, micro: Checkpoint) -> None:
    report = check_parity(ServingModel(micro.model), exported / "gamma-micro" / "3" / "model.onnx", batches=(2,))
    assert set(report.differences) == {(2, h, w) for h, w in PARITY_SHAPES}
    assert report.ok and "batch 2 at 192x288" in report.summary()


# --- the python backend's model.py, with a stand-in for Triton's stub ------------------------------------------


class _FakeStub(types.ModuleType):
    """What model.py uses of ``triton_python_backend_utils``: tensors by name, responses, errors."""

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self.array = name, array

        @classmethod
        def from_dlpack(cls, name: str, array: np.ndarray) -> _FakeStub.Tensor:
            return cls(name, np.from_dlpack(array))

    class InferenceResponse:
        def __init__(self, output_tensors: list[Any], error: Any = None) -> None:
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    class TritonError:
        def __init__(self, message: str) -> None:
            self.message = message

    @staticmethod
    def get_input_tensor_by_name(request: dict[str, np.ndarray], name: str) -> np.ndarray:
        return request[name]


def test_python_backend_runs_a_dynamic_batch_of_mixed_tile_shapes(
    exported: Path, micro_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's dynamic batcher groups requests of one shape; should requests of two shapes reach one ``execute``,
    model.py runs each shape once and answers every request with its own rows."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeStub("triton_python_backend_utils"))
    model_dir = exported / "gamma-micro"
    namespace: dict[str, Any] = {"__name__": "gamma_test_python_model"}
    exec(compile((model_dir / "3" / "model.py").read_text(), str(model_dir / "3" / "model.py"), "exec"), namespace)
    config = parse_config((model_dir / "config.pbtxt").read_text())
    model_config = {
        "input": [{"name": t.name} for t in config.input],
        "output": [{"name": t.name} for t in config.output],
        "parameters": {key: {"string_value": value.string_value} for key, value in config.parameters.items()},
    }
    model = namespace["TritonPythonModel"]()
    model.initialize(
        {"model_config": json.dumps(model_config), "model_repository": str(model_dir), "model_version": "3"}
    )
    rng = np.random.default_rng(0)
    shapes = [(1, 512, 512), (2, 192, 288), (1, 512, 512), (1, 192, 288)]
    requests = [
        {wire.IMAGES.name: rng.integers(0, 256, (b, *wire.IMAGES.concrete(h, w)), dtype=np.uint8)} for b, h, w in shapes
    ]
    responses = model.execute(requests)
    names = [s.name for s in wire.OUTPUTS]
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        expected = micro_session.run(names, request)
        for name, want in zip(names, expected):
            got = response.outputs[name]
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=0, atol=1e-6 if got.dtype == np.float32 else 1
            )


def test_efficientnet_lite_gamma_exports_and_matches_torch(tmp_path: Path) -> None:
    """The CNN encoder (constant "same" padding, BatchNorm, ReLU6) exports like MiT: the exporter's own parity gate
    passes (it raises and writes nothing otherwise), and the written graph agrees with PyTorch again here."""
    from gamma.config import preset

    torch.manual_seed(0)
    model = GammaModel(preset("gamma-effl0")).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, as after ImageNet training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    save_checkpoint(model, tmp_path / "gamma-effl0-test", {"name": "gamma-effl0-test", "version": 1})
    checkpoint = load_checkpoint(tmp_path / "gamma-effl0-test")
    options = ExportOptions(max_batch_size=2, parity_batches=(2,))
    exported = export_to_repository(checkpoint, tmp_path / "repository", options, log=lambda _: None)
    assert check_parity(ServingModel(checkpoint.model), exported.version_dir / "model.onnx", batches=(1,)).ok
