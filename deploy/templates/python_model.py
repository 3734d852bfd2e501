"""Triton python-backend model: GAMMA's exported ONNX graph through ONNX Runtime on CPU.

Copied as ``<repository>/<model>/<version>/model.py`` by ``deploy/export_triton.py --backend python``. It imports
nothing from this project: tensor names come from the model config Triton hands to ``initialize`` (written from
``gamma/wire.py``), so the wire contract keeps one home and the server needs only numpy and onnxruntime.

Why this backend exists: no ONNX Runtime backend ships with the CPU Triton build used on machines without a GPU;
the python backend with ONNX Runtime inside gives the same graph, the same batching and the same client API.

Tensors cross the stub boundary through DLPack, not ``as_numpy()``/``Tensor(name, ndarray)``: the stub's pybind11
code was compiled against numpy 1.x and reads a numpy 2 dtype's item size as 0, so numpy outputs arrive at the
client as empty buffers. DLPack carries dtype and shape itself and works with either numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by the Triton python backend stub


class TritonPythonModel:
    """One ONNX Runtime session per model instance; each ``execute`` is one ``session.run``."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        # Threads per instance: with several instances on few cores, 1-2 each avoids oversubscription.
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = int(params.get("inter_op_threads", "1"))
        # Idle threads busy-wait unless told not to; on shared cores that steals time from the working ones.
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("intra_op_spinning", "0"))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(version_dir / params.get("onnx_file", "model.onnx")), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Concatenate the requests of the dynamic batch that share a tile shape into one run each, then split the
        rows back per request.

        One run of B rows costs less than B runs of one row (fewer kernel launches and thread-pool wake-ups), and
        it is the batch the scheduler formed: running the requests one by one would waste it. Images are
        (B, 3, H, W) with H and W varying between requests (config dims -1); Triton's dynamic batcher only groups
        requests of one shape, but requests of different shapes cannot be concatenated, so they are grouped here
        too rather than trusted to never meet.
        """
        arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, array in enumerate(arrays):
            by_shape.setdefault(tuple(array.shape[1:]), []).append(index)
        responses: list[Any] = [None] * len(requests)
        for members in by_shape.values():
            for index, response in zip(members, self._run([arrays[i] for i in members])):
                responses[index] = response
        return responses

    def _run(self, arrays: list[np.ndarray]) -> list[Any]:
        """One ``session.run`` over requests of one tile shape; one response per request, rows in order."""
        sizes = [len(a) for a in arrays]
        try:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            outputs = self.session.run(self.output_names, {self.input_name: batch})
        except Exception as exc:  # an error response per request beats a crashed stub
            shape = "x".join(str(d) for d in arrays[0].shape[1:])
            error = pb_utils.TritonError(f"onnxruntime failed on a batch of {sum(sizes)} ({shape}): {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in arrays]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(output[start : start + size]))
                for name, output in zip(self.output_names, outputs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self) -> None:
        self.session = None
