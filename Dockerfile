# syntax=docker/dockerfile:1
# GPU training image: CUDA + cuDNN, CUDA builds of torch and TensorFlow, Horovod built with NCCL
# (and MPI) by the same scripts/install.sh a laptop and CI use. `hvdtrain doctor` is the build check.
#   docker build -t hvdtrain:gpu .
#   docker run --gpus all --rm hvdtrain:gpu hvdtrain run -np 2 torch_examples/digits.py
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ make git openssh-client openssh-server \
        libopenmpi-dev openmpi-bin ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV HVDTRAIN_VENV=/opt/venv \
    HVDTRAIN_FLAVOR=gpu \
    HVDTRAIN_CACHE=/root/.cache/hvdtrain \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

WORKDIR /opt/hvdtrain
COPY . .
# The cache mount keeps the compiled Horovod wheel between image builds.
RUN --mount=type=cache,target=/root/.cache/hvdtrain bash scripts/install.sh \
    && hvdtrain doctor
CMD ["hvdtrain", "doctor"]
