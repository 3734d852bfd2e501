#!/bin/sh
# Builds model.plan for Triton's TensorRT backend from model.onnx (written by deploy/export_triton.py).
# Run it ON THE GPU HOST that serves the model: a TensorRT engine is specific to the GPU and the TensorRT version,
# so it cannot be built on the machine that exported the ONNX. Tiles vary in size (sides multiples of 32 up to 512):
# the profile spans the smallest tile at batch 1 to full tiles at the largest batch, tuned for full tiles.
# Inside the Triton image, e.g.:
#   docker run --rm --gpus all -v "$$PWD":/models nvcr.io/nvidia/tritonserver:24.08-py3 \
#     sh /models/${model_name}/${version}/build_engine.sh
set -eu
cd "$$(dirname "$$0")"
/usr/src/tensorrt/bin/trtexec --onnx=model.onnx --saveEngine=model.plan ${precision_flag} \
  --minShapes=${input_name}:1x${min_dims} \
  --optShapes=${input_name}:${opt_batch}x${input_dims} \
  --maxShapes=${input_name}:${max_batch}x${input_dims}
