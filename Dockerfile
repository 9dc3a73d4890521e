# The fedser image: one image for the SuperLink (which runs the ServerApp), the SuperNodes (which
# run the ClientApps beside their data), the registration step and the MLflow server.
#
#   docker compose build                                   # CPU (default base)
#   docker compose build --build-arg BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
#
# The pinned torch 2.11.0 wheel is PyPI's CUDA build and also runs on CPU: a CUDA base image only
# adds the CUDA userland; GPUs reach a container through the NVIDIA container toolkit (compose:
# `gpus: all`). Versions are the pyproject's pins (flwr 1.41.0, torch 2.11.0, mlflow 3.17.2, ...).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_HOME=/app/.flwr FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    GIT_PYTHON_REFRESH=quiet

# Flower's images run as uid 49999 with HOME=/app; the services here do too (deploy/entrypoint.sh).
# GIT_PYTHON_REFRESH: the image has no git, and MLflow would print GitPython's warning on every run.
RUN useradd --uid 49999 --create-home --home-dir /app --shell /bin/bash app
WORKDIR /app

# Dependencies first, in a layer that only a pyproject.toml edit invalidates (placeholder package
# folders and README, which the build backend wants to see), then the source.
COPY pyproject.toml ./
RUN mkdir -p common client server simulations \
    && touch README.md common/__init__.py client/__init__.py server/__init__.py simulations/__init__.py \
    && pip install ".[deploy]" && pip uninstall -y fedser
COPY README.md ./
COPY common common
COPY client client
COPY server server
COPY simulations simulations
COPY deploy deploy
# The folders that compose mounts named volumes on exist here, owned by the app user: a new named
# volume takes the ownership of the folder it is mounted on (else root, and the app cannot write).
RUN pip install --no-deps . \
    && mkdir -p /app/outputs /app/.flwr /app/state /app/mlartifacts && chown -R app:app /app

# Starts as root only to hand mounted private keys (0600, owned by whoever made them) to the app
# user, then runs the command as uid 49999 (deploy/entrypoint.sh).
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["fedser", "--help"]
