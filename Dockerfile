# hvdtrain's images, CPU and GPU, from one file: FLAVOR picks the base image and
# requirements/<flavour>.txt, every other step is shared, so building the CPU image (CI does) proves
# the GPU image's steps too.
#   make image                        hvdtrain:cpu (scripts/image.sh: base image, pip secrets, BuildKit)
#   make image FLAVOR=gpu             hvdtrain:gpu
#   docker build -t hvdtrain:cpu .    the same where Docker Hub and PyTorch's index are reachable
#   docker build --build-arg FLAVOR=gpu -t hvdtrain:gpu .
# Stage `frameworks` has the compilers and makes the virtualenv: the pinned frameworks and Horovod
# compiled from source by scripts/install.sh. It reads only requirements/ and the install scripts,
# so a change to hvdtrain's source reuses it, and the compiled Horovod wheel stays in a cache mount
# between builds. The final image is the base, runtime packages, that virtualenv and hvdtrain's
# source: no compilers, no test-only packages. `hvdtrain doctor` (a live 2-worker allreduce) is the
# build's check.
ARG FLAVOR=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
# The CUDA 13.0 toolkit (nvcc) compiles Horovod's NCCL ops against requirements/gpu.txt's one CUDA
# stack (torch 2.14.1 for CUDA 13.0 with its NCCL, TensorFlow 2.21 with its CUDA 12 wheels). No cuDNN
# or NCCL from the base: the wheels bring the ones the frameworks were built for. Hosts need a
# driver >= 580. The final GPU image keeps this base: its runtime flavour is unproven here.
ARG GPU_BASE=nvidia/cuda:13.0.1-devel-ubuntu24.04

FROM ${CPU_BASE} AS base-cpu
FROM ${GPU_BASE} AS base-gpu
ENV CUDA_HOME=/usr/local/cuda

# hadolint ignore=DL3006
FROM base-${FLAVOR} AS frameworks
ARG FLAVOR
ARG EXTRAS=""
# PyPI's default torch is the CUDA build: the CPU flavour adds PyTorch's CPU index unless
# `make image` found torch's CPU wheel on this machine (then empty: see docker/wheels/README.md).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Compilers and Open MPI's headers (Horovod's MPI controller); Python where the base has none (CUDA's).
RUN pkgs="g++ make git libopenmpi-dev openmpi-bin ca-certificates"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3 python3-dev python3-venv"; \
    apt-get update \
    && apt-get install -y --no-install-recommends $pkgs \
    && rm -rf /var/lib/apt/lists/*
ENV HVDTRAIN_VENV=/opt/venv \
    HVDTRAIN_FLAVOR=${FLAVOR} \
    HVDTRAIN_EXTRAS=${EXTRAS} \
    HVDTRAIN_CACHE=/root/.cache/hvdtrain \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /opt/hvdtrain
# What install.sh reads before hvdtrain is installed: the requirements, the scripts, and
# hvdtrain.cudastack with what it imports and reads (the gpu flavour checks its CUDA stack with it;
# hvdtrain/requirements, the package's link to requirements/, is a copy here).
# tests/test_docker.py keeps this list complete.
COPY requirements/ requirements/
COPY requirements/ hvdtrain/requirements/
COPY scripts/install.sh scripts/patch_horovod.py scripts/system-packages.sh scripts/
COPY hvdtrain/__init__.py hvdtrain/cudastack.py hvdtrain/
COPY hvdtrain/core/__init__.py hvdtrain/core/versions.py hvdtrain/core/guards.py hvdtrain/core/context.py \
     hvdtrain/core/
# pip's configuration and CA bundle (an index mirror, a proxy's certificate) arrive as build secrets,
# never in a layer; docker/wheels holds wheels `make image` found on the building machine.
RUN --mount=type=cache,target=/root/.cache/hvdtrain \
    --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca,target=/run/secrets/pip_ca \
    --mount=type=bind,source=docker/wheels,target=/opt/wheels \
    if [ "$FLAVOR" = cpu ] && [ -n "$TORCH_CPU_INDEX" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_CPU_INDEX"; fi; \
    mkdir -p "$HVDTRAIN_CACHE/wheels" && cp -rn /opt/wheels/horovod/. "$HVDTRAIN_CACHE/wheels/" 2>/dev/null; \
    PIP_FIND_LINKS=/opt/wheels bash scripts/install.sh deps
# What only the compile needed goes before the final image copies the virtualenv: the frameworks'
# C++ headers, cmake, torch's C++ test programs, pandas' tests and the debug symbols of Horovod's
# extensions (about 650 MB; nothing in the image compiles, it has no compiler).
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && python -m pip uninstall -y -q cmake \
    && rm -rf "$site/tensorflow/include" "$site/torch/include" "$site/torch/test" "$site/pandas/tests" \
    && find "$site/horovod" -name '*.so' -exec strip --strip-unneeded {} +

# hadolint ignore=DL3006
FROM base-${FLAVOR}
ARG FLAVOR
ARG EXTRAS=""
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Open MPI's runtime (Horovod's MPI controller links it: hvdtrain run --mpi), ssh and sshd (hosts
# reach each other's containers over SSH: docker/README.md). openssh-server's install makes host
# keys; they go in the same layer (one key in every container of an image is no key): mount your own.
RUN pkgs="openmpi-bin openssh-client openssh-server ca-certificates"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3"; \
    apt-get update \
    && apt-get install -y --no-install-recommends $pkgs \
    && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*_key* \
    && mkdir -p /run/sshd
ENV HVDTRAIN_VENV=/opt/venv \
    HVDTRAIN_FLAVOR=${FLAVOR} \
    HVDTRAIN_EXTRAS=${EXTRAS} \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
COPY --from=frameworks /opt/venv /opt/venv
WORKDIR /opt/hvdtrain
# The package, its examples and scripts; never the checkout's other files (a stray key stays out).
COPY setup.py README.md Makefile ./
COPY requirements/ requirements/
COPY scripts/ scripts/
COPY slurm/ slurm/
COPY hvdtrain/ hvdtrain/
COPY torch_examples/ torch_examples/
COPY tf_examples/ tf_examples/
RUN bash scripts/install.sh self && hvdtrain doctor
# `docker run IMAGE` checks the image on this host (versions, build, a live 2-worker allreduce).
CMD ["hvdtrain", "doctor"]
