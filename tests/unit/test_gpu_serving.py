"""bench/gpu_serving.py (TensorRT fp16 throughput and fraction of peak) and GPU-vs-CPU parity.

The arithmetic, the peak table, trtexec parsing and the no-CUDA exit run everywhere; tests marked ``gpu`` need
CUDA and are skipped without it (tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import string
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from gamma import wire
from gamma.config import preset
from gamma.model import GammaModel
from gamma.model.serving import ServingModel
from gamma.preprocess import preprocess

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "gpu_serving.py"


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_serving = _load(BENCH, "gamma_bench_gpu_serving")


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("Tesla T4", 65.0),
        ("NVIDIA L40S", None),  # "L4" is a word of the name, not a prefix
        ("NVIDIA A10G", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_table_matches_device_names_by_word(device_name: str, peak: float | None) -> None:
    assert gpu_serving.peak_tflops_for(device_name) == peak


def test_fraction_of_peak_is_achieved_flops_over_peak() -> None:
    # 1,852 images/s x 267.2 GFLOPs = 494.8 TFLOPs, half of an H100 SXM's 989.
    assert gpu_serving.fraction_of_peak(1852.0, 267.2, 989.0) == pytest.approx(0.5003, abs=1e-4)
    assert gpu_serving.fraction_of_peak(0.0, 267.2, 989.0) == 0.0


def test_flops_per_image_come_from_model_cost() -> None:
    """The bench's FLOPs are bench/model_cost.py's count (README table: gamma-b0 37.7 GFLOPs at 512)."""
    model_cost = _load(REPO / "bench" / "model_cost.py", "gamma_bench_model_cost_test")
    gflops = gpu_serving.flops_per_image("gamma-b0", 512)
    assert gflops == pytest.approx(model_cost.cost("gamma-b0", 512)[1])
    assert gflops == pytest.approx(37.7, abs=0.05)


def test_trtexec_throughput_is_parsed_from_its_summary() -> None:
    output = """[06/01/2025-10:00:00] [I] === Performance summary ===
[06/01/2025-10:00:00] [I] Throughput: 61.2345 qps
[06/01/2025-10:00:00] [I] Latency: min = 16.01 ms, max = 16.9 ms, mean = 16.3 ms, median = 16.3 ms
"""
    assert gpu_serving.parse_trtexec_throughput(output) == pytest.approx(61.2345)
    with pytest.raises(ValueError, match="Throughput"):
        gpu_serving.parse_trtexec_throughput("[E] Error[4]: engine build failed")


def test_tile_dims_are_the_served_profile_range() -> None:
    """The exported graph's H and W are dynamic (-1 on the wire); a TensorRT profile needs them concrete: from the
    smallest tile the client sends to a full tile."""
    assert wire.IMAGES.shape == (3, -1, -1)
    assert gpu_serving.tile_dims() == ((3, 32, 32), (3, 512, 512))


def test_engine_builds_use_the_served_build_flags() -> None:
    """trtexec in the bench builds with build_engine.sh's flags; the ONNX Runtime provider gets the same shapes."""
    smallest, full = gpu_serving.tile_dims()
    template = string.Template((REPO / "deploy" / "templates" / "build_engine.sh").read_text())
    script = template.substitute(
        model_name="m",
        version=1,
        input_name=wire.IMAGES.name,
        min_dims="x".join(str(d) for d in smallest),
        input_dims="x".join(str(d) for d in full),
        opt_batch=64,
        max_batch=64,
        precision_flag="--fp16",
    )
    served = " ".join(line.strip().rstrip("\\") for line in script.splitlines() if not line.startswith("#"))
    served_flags = {flag for flag in served.split() if flag.startswith("--") and "=model." not in flag}
    command = gpu_serving.trtexec_build_command(
        "trtexec", Path("model.onnx"), Path("model.plan"), wire.IMAGES.name, full, 64, min_dims=smallest
    )
    assert {flag for flag in command[1:] if not flag.startswith(("--onnx=", "--saveEngine="))} == served_flags
    assert "--minShapes=images:1x3x32x32" in command and "--maxShapes=images:64x3x512x512" in command
    options = gpu_serving.trt_provider_options(Path("/cache"), wire.IMAGES.name, full, 64, min_dims=smallest)
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "images:1x3x32x32"
    assert options["trt_profile_max_shapes"] == options["trt_profile_opt_shapes"] == "images:64x3x512x512"
    # Without min_dims the profile is one tile size (the bench's shapes stay concrete either way).
    fixed = gpu_serving.trt_provider_options(Path("/cache"), wire.IMAGES.name, full, 8)
    assert fixed["trt_profile_min_shapes"] == "images:1x3x512x512"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the bench runs for real (see the gpu test)")
def test_bench_without_cuda_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skipped: no CUDA")


def test_cuda_without_tensorrt_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(gpu_serving, "find_trtexec", lambda: None)
    assert gpu_serving.main(["--engine", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no TensorRT here" in err and "onnxruntime-gpu" in err and "trtexec" in err


def _real_tiles() -> list[np.ndarray]:
    """scikit-image's astronaut (512x512 PNG: one 512x512 tile) and coffee (600x400: 384x512 tiles, coverage
    ``full``) through the preprocessing contract: one uint8 (N, 3, H, W) batch per tile shape."""
    spec = importlib.util.find_spec("skimage.data")
    assert spec is not None and spec.submodule_search_locations, "scikit-image (dev extra) is needed"
    folder = Path(next(iter(spec.submodule_search_locations)))
    return [
        preprocess((folder / name).read_bytes(), coverage="full").pixels for name in ("astronaut.png", "coffee.png")
    ]


@pytest.mark.gpu
@torch.inference_mode()
def test_cuda_fp32_outputs_match_cpu() -> None:
    """The served module on CUDA (fp32, TF32 off) gives the CPU's outputs on real tiles and noise, at each tile
    shape."""
    torch.manual_seed(0)
    serving = ServingModel(GammaModel(preset("gamma-b0"))).eval()
    rng = np.random.default_rng(0)
    for tiles in _real_tiles():
        noise = rng.integers(0, 256, (2, *tiles.shape[1:]), dtype=np.uint8)
        images = torch.from_numpy(np.concatenate([tiles, noise]))
        expected = [t.numpy() for t in serving.cpu()(images)]
        matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            actual = [t.cpu().numpy() for t in serving.to("cuda")(images.to("cuda"))]
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
        # fp32 on another device reorders sums: ~1e-6 on a logit; the export's tolerances hold with room to spare.
        np.testing.assert_allclose(actual[0], expected[0], rtol=0, atol=1e-4)
        for got, want in zip(actual[1:], expected[1:]):
            assert got.dtype == np.uint8 and np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1


@pytest.mark.gpu
def test_onnxruntime_cuda_provider_matches_cpu(tmp_path: Path) -> None:
    """The exported graph on ONNX Runtime's CUDA provider (what Triton's onnxruntime backend runs) agrees with
    the CPU provider on real tiles, at each tile shape, in one session."""
    import onnxruntime as ort

    from deploy.onnx_export import export_onnx
    from gamma.inference import ort_session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    torch.manual_seed(0)
    result = export_onnx(ServingModel(GammaModel(preset("gamma-b0"))).eval(), tmp_path / "model.onnx", max_batch=4)
    names = [spec.name for spec in wire.OUTPUTS]
    cpu = ort_session(result.path)
    cuda = ort.InferenceSession(str(result.path), providers=["CUDAExecutionProvider"])
    assert cuda.get_providers()[0] == "CUDAExecutionProvider"
    for tiles in _real_tiles():
        expected = cpu.run(names, {wire.IMAGES.name: tiles})
        actual = cuda.run(names, {wire.IMAGES.name: tiles})
        assert [a.shape for a in actual] == [e.shape for e in expected]
        np.testing.assert_allclose(actual[0], expected[0], rtol=0, atol=1e-3)  # cuDNN may pick TF32 convolutions
        for got, want in zip(actual[1:], expected[1:]):
            assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 2


@pytest.mark.gpu
def test_gpu_bench_prints_images_per_second_and_fraction_of_peak(capsys: pytest.CaptureFixture[str]) -> None:
    """A short real run of the bench on gamma-b0 (the b2 run is the bench itself)."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers() and gpu_serving.find_trtexec() is None:
        pytest.skip("no TensorRT (onnxruntime-gpu's TensorRT provider or trtexec)")
    code = gpu_serving.main(["--preset", "gamma-b0", "--batches", "1", "4", "--seconds", "1", "--peak-tflops", "100"])
    out = capsys.readouterr().out
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("gamma-b0 @ 512: best ") and "images/s at batch " in last and "of 100 TFLOPs" in last
