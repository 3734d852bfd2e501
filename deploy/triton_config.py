"""``config.pbtxt`` for a served GAMMA model, written from :mod:`gamma.wire` so names and shapes exist once.

Built as Triton's own ``ModelConfig`` protobuf (shipped in ``tritonclient``) and printed as text: a misspelt
field fails here, at export time, instead of when a server loads the repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from gamma import wire
from gamma.tiling import STRIDE, TILE_SIZE
from gamma.wire import TensorSpec

Backend = Literal["onnxruntime", "tensorrt", "python"]
BACKENDS: tuple[Backend, ...] = ("onnxruntime", "tensorrt", "python")
InstanceKind = Literal["KIND_GPU", "KIND_CPU"]

# File each backend loads from the version folder.
MODEL_FILES: dict[Backend, str] = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}

# Config parameter keys (read by the python backend's model.py and by deploy/triton_client.py).
PARAM_ONNX_FILE = "onnx_file"
PARAM_INTRA_OP_THREADS = "intra_op_threads"
PARAM_INTER_OP_THREADS = "inter_op_threads"
PARAM_SPINNING = "intra_op_spinning"
THRESHOLDS_PARAM_PREFIX = "gamma_thresholds_v"  # + version: JSON of the checkpoint's VerdictThresholds

# The tile sides a served model accepts (config dims are -1 for both): multiples of the encoder's stride from one
# stride up to a full tile. Preprocessing never cuts a side below gamma.tiling.MIN_SIDE (64); a client may send less.
MIN_TILE_SIDE = STRIDE
MAX_TILE_SIDE = TILE_SIZE


def thresholds_param(version: int) -> str:
    return f"{THRESHOLDS_PARAM_PREFIX}{version}"


@dataclass(frozen=True)
class ModelSettings:
    """What varies between deployments of the same exported model.

    ``max_queue_delay_us``: how long Triton may hold a request to grow a batch. On a GPU a batch of 8 costs little
    more than 1, so a few milliseconds of waiting buys throughput; on CPU the cost is linear in the batch and the
    delay should stay small.
    ``versions``: ``None`` serves the newest version only; a tuple pins exactly those versions.
    ``cpu_threads``: ONNX Runtime intra-op threads per python-backend instance (0 = one per core).
    ``cpu_spinning``: let idle ONNX Runtime threads busy-wait. Off by default: on a CPU shared with other work (or
    with several instances) spinning threads burn the cores the busy ones need; measured on 2 shared cores,
    gamma-b0 ran ~30% faster with it off.
    """

    name: str
    backend: Backend = "onnxruntime"
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    instance_kind: InstanceKind | None = None  # None: GPU for onnxruntime/tensorrt, CPU for python
    versions: tuple[int, ...] | None = None
    cpu_threads: int = 0
    cpu_spinning: bool = False
    trt_fp16: bool = True
    trt_cache_dir: str = "/tmp/triton-trt-cache"
    parameters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} not one of {BACKENDS}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {self.instance_count}")
        if self.versions is not None and not self.versions:
            raise ValueError("versions: give at least one version, or None for the latest")

    @property
    def kind(self) -> InstanceKind:
        if self.instance_kind is not None:
            return self.instance_kind
        return "KIND_CPU" if self.backend == "python" else "KIND_GPU"

    @property
    def preferred_batch_sizes(self) -> list[int]:
        """Half and full ``max_batch_size``: batches worth waiting for, without pinning every size."""
        return sorted({max(1, self.max_batch_size // 2), self.max_batch_size})


def _tensor(message: pb.ModelInput | pb.ModelOutput, spec: TensorSpec) -> None:
    """Name, dtype and dims (without the batch axis) from the wire contract: -1 where the tile size varies."""
    message.name = spec.name
    message.data_type = pb.DataType.Value(f"TYPE_{spec.triton_dtype}")
    message.dims.extend(spec.shape)


def _tensorrt_accelerator(config: pb.ModelConfig, settings: ModelSettings) -> None:
    """ONNX Runtime on a GPU hands the graph to its TensorRT execution provider: FP16, engines cached on disk so a
    restart does not rebuild them (building takes minutes for gamma-b2)."""
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
    accelerator.name = "tensorrt"
    accelerator.parameters.update(
        {
            "precision_mode": "FP16" if settings.trt_fp16 else "FP32",
            "max_workspace_size_bytes": str(2 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"{settings.trt_cache_dir.rstrip('/')}/{settings.name}",
        }
    )


# Warm-up samples (name, tile side): a warm-up needs concrete dims. The full tile first (most requests, and the
# largest arena), then the smallest: ONNX Runtime's TensorRT provider widens its engine's shape range to what it
# has seen, so after both no tile size in between triggers an engine rebuild mid-traffic.
WARMUP_TILES: tuple[tuple[str, int], ...] = (("zeros", MAX_TILE_SIDE), ("zeros_smallest", MIN_TILE_SIDE))


def _warmup(config: pb.ModelConfig) -> None:
    """Zero batches of one tile at load: the first real request then does not pay for lazy initialisation (ORT
    arena growth, TensorRT engine build)."""
    spec = wire.IMAGES
    for name, side in WARMUP_TILES:
        sample = config.model_warmup.add(name=name, batch_size=1)
        warm_input = sample.inputs[spec.name]
        warm_input.data_type = pb.DataType.Value(f"TYPE_{spec.triton_dtype}")
        warm_input.dims.extend(spec.concrete(side, side))  # (3, side, side)
        warm_input.zero_data = True


def build_config(settings: ModelSettings) -> pb.ModelConfig:
    config = pb.ModelConfig(name=settings.name, backend=settings.backend, max_batch_size=settings.max_batch_size)
    if settings.backend != "python":
        config.default_model_filename = MODEL_FILES[settings.backend]
    if settings.versions is None:
        config.version_policy.latest.num_versions = 1
    else:
        config.version_policy.specific.versions.extend(sorted(settings.versions))
    for spec in wire.INPUTS:
        _tensor(config.input.add(), spec)
    for spec in wire.OUTPUTS:
        _tensor(config.output.add(), spec)
    config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    config.instance_group.add(count=settings.instance_count, kind=pb.ModelInstanceGroup.Kind.Value(settings.kind))
    if settings.backend == "onnxruntime" and settings.kind == "KIND_GPU":
        _tensorrt_accelerator(config, settings)
    _warmup(config)
    parameters = dict(settings.parameters)
    if settings.backend == "python":
        parameters.setdefault(PARAM_ONNX_FILE, MODEL_FILES["onnxruntime"])
        parameters.setdefault(PARAM_INTRA_OP_THREADS, str(settings.cpu_threads))
        parameters.setdefault(PARAM_INTER_OP_THREADS, "1")
        parameters.setdefault(PARAM_SPINNING, "1" if settings.cpu_spinning else "0")
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = value
    return config


def render_config(settings: ModelSettings) -> str:
    """The whole ``config.pbtxt`` text."""
    return text_format.MessageToString(build_config(settings))


def parse_config(text: str) -> pb.ModelConfig:
    """``config.pbtxt`` text -> ``ModelConfig`` (raises ``text_format.ParseError`` on a malformed file)."""
    return text_format.Parse(text, pb.ModelConfig())
