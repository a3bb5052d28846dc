# syntax=docker/dockerfile:1
# A slim serving image: `terrazzo serve`, `worker`, `run`, `verify`, `inspect` with TVM's
# runtime only (no libtvm_compiler, no Relax compiler, torch, onnx, transformers or Ray).
# Build from the repository root: docker build -t terrazzo-serve:0.1.0 .
# (GPU nodes: docker build --build-arg CUDA=1 -t terrazzo-serve:0.1.0-cuda .)
# Used by the manifests `terrazzo deploy k8s` writes. Bundles are compiled elsewhere.

FROM python:3.11-slim AS build
# CUDA=1: add NVIDIA's CUDA 13.0 runtime wheel (libcudart, which libtvm_runtime_cuda links);
# the driver comes from the node (NVIDIA container toolkit).
ARG CUDA=0
WORKDIR /src
COPY deploy/requirements-serve.txt ./
RUN pip install --no-cache-dir --prefix=/install -r requirements-serve.txt \
    && if [ "$CUDA" = "1" ]; then \
         pip install --no-cache-dir --prefix=/install nvidia-cuda-runtime==13.0.96; fi
# the compiler library and the packages only it uses (same list as benchmarks/gpu_prepare.py)
RUN tvm=/install/lib/python3.11/site-packages/tvm \
    && rm -rf "$tvm/libtvm_compiler.so" "$tvm/3rdparty" "$tvm/relax" "$tvm/s_tir" \
              "$tvm/topi" "$tvm/src" "$tvm/web" \
    && find /install -name '__pycache__' -type d -prune -exec rm -rf {} +
COPY pyproject.toml README.md ./
COPY terrazzo ./terrazzo
RUN pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# TVM loads its runtime library alone; gRPC and NumPy threads follow the pod's CPU limit.
ENV TVM_USE_RUNTIME_LIB=1 \
    LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia/cu13/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/terrazzo
RUN useradd --uid 10001 --create-home --home-dir /home/terrazzo terrazzo
USER 10001
WORKDIR /home/terrazzo
EXPOSE 8001 8002 9000
ENTRYPOINT ["terrazzo"]
CMD ["--help"]
