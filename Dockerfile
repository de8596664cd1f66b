# syntax=docker/dockerfile:1
# GPU training image: the CUDA 13.0 toolkit (nvcc) that compiles Horovod's NCCL ops, and
# requirements/gpu.txt's one CUDA stack (torch 2.14.1 for CUDA 13.0 with its NCCL 2.30.7,
# TensorFlow 2.21 with its CUDA 12 wheels), installed and checked by the same scripts/install.sh a
# laptop and CI use. No cuDNN or NCCL from the base image: the wheels bring the ones the
# frameworks were built for. `hvdtrain doctor` is the build check. Hosts need a driver >= 580.
#   docker build -t hvdtrain:gpu .
#   docker run --gpus all --ipc=host --rm hvdtrain:gpu hvdtrain run -np 2 torch_examples/digits.py
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ make git openssh-client openssh-server \
        libopenmpi-dev openmpi-bin ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV HVDTRAIN_VENV=/opt/venv \
    HVDTRAIN_FLAVOR=gpu \
    HVDTRAIN_CACHE=/root/.cache/hvdtrain \
    CUDA_HOME=/usr/local/cuda \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

WORKDIR /opt/hvdtrain
COPY . .
# The cache mount keeps the compiled Horovod wheel between image builds.
RUN --mount=type=cache,target=/root/.cache/hvdtrain bash scripts/install.sh \
    && hvdtrain doctor
CMD ["hvdtrain", "doctor"]
