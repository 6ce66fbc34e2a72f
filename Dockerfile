# syntax=docker/dockerfile:1
# Images of lstm-serving, one build per target:
#   server      the gRPC server: onnxruntime, grpcio, prometheus-client, numpy; no torch
#   server-gpu  the same on onnxruntime-gpu (CUDA 13 and cuDNN from pip); run with a GPU
#   export      lstm-export with the CPU build of torch, to write models into a repository
#
# Offline and air-gapped builds: fill wheelhouse/ with every wheel a target needs, e.g.
#   pip download -c constraints.txt -d wheelhouse '.[server,tracing]' hatchling
# and build with --build-arg PIP_NO_INDEX=1: pip then installs from wheelhouse/ alone. By
# default the folder is empty and pip uses PyPI (and PyTorch's CPU index for export). The
# wheels are bind-mounted while pip runs, never copied into a layer.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 lstm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home lstm \
 && mkdir -p /models && chown 10001:10001 /models
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY export ./export

FROM base AS server
ARG PIP_NO_INDEX=0
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    PIP_FIND_LINKS=/wheelhouse pip install -c constraints.txt ".[server,tracing]" \
 && python -c "import lstm_serving.server.main"
USER 10001:10001
EXPOSE 50051 8002
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
  CMD ["lstm-client", "--target", "localhost:50051", "--timeout", "3", "health"]
ENTRYPOINT ["lstm-serve"]
CMD ["--repository", "/models", "--host", "0.0.0.0"]

FROM server AS server-gpu
ARG PIP_NO_INDEX=0
USER 0
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    pip uninstall -y onnxruntime \
 && PIP_FIND_LINKS=/wheelhouse pip install -c constraints.txt "onnxruntime-gpu[cuda,cudnn]==1.31.1"
USER 10001:10001
CMD ["--repository", "/models", "--host", "0.0.0.0", "--device", "cuda"]

FROM base AS export
ARG PIP_NO_INDEX=0
# The CPU wheel of torch: PyPI's default build would pull several GB of CUDA libraries.
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    export PIP_FIND_LINKS=/wheelhouse \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt ".[export]"
USER 10001:10001
ENTRYPOINT ["lstm-export"]
