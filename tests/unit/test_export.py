"""deploy/export_triton.py: config.pbtxt content, repository layout, refusal to overwrite, parity gate.

A micro GAMMA (widths 8-16, one block per stage) keeps the 512x512 parity runs fast; the exporter does not care
about the preset. One real dynamo export per module; other tests reuse its ONNX through a stand-in exporter.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

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
from deploy.onnx_export import ExportResult, ParityError, check_parity, export_onnx
from deploy.triton_config import ModelSettings, parse_config, render_config, thresholds_param
from gamma import wire
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
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    assert warmup.inputs[wire.IMAGES.name].zero_data
    assert list(warmup.inputs[wire.IMAGES.name].dims) == list(wire.IMAGES.shape)


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
    assert set(metadata["parity"]["batches"]) == {"1", "4"}
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
    assert "--minShapes=images:1x3x512x512" in script and "--maxShapes=images:8x3x512x512" in script
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


def test_dynamo_export_takes_the_positional_dynamic_shapes(exported: Path) -> None:
    """The module's export came from the dynamo exporter (dynamic_shapes given positionally), not the fallback."""
    metadata = json.loads((exported / "gamma-micro" / "3" / "metadata.json").read_text())
    assert metadata["onnx"]["exporter"] == "dynamo", metadata["onnx"]["fallback_reason"]
    graph = onnx.load(str(exported / "gamma-micro" / "3" / "model.onnx"), load_external_data=False)
    batch_axis = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert graph.graph.input[0].name == wire.IMAGES.name and not batch_axis.HasField("dim_value")


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
