# jepa-planner on a CUDA GPU host: the HTTP API (8000) and the ZeroMQ arm bridge (5555) in one process.
#   docker build -t jepa-planner .
#   docker run --gpus all -e JEPA_API_KEY=... -p 127.0.0.1:8000:8000 -v jepa-data:/data jepa-planner
# Real V-JEPA 2-AC weights: mount them read-only and name the file:
#   -v /path/to/weights:/weights:ro -e JEPA_MODEL=/weights/vitg-384-ac.pt
# docker/compose.yaml runs the service next to the simulated arm.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUJOCO_GL=egl

# MuJoCo (the simulated arm) renders headless through EGL, or OSMesa without a GPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libegl1 libgl1-mesa-dri libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/jepa-planner
COPY pyproject.toml README.md ./
COPY world_model ./world_model
COPY planner ./planner
COPY robot_bridge ./robot_bridge
COPY server ./server
# The base image's CUDA torch already satisfies `torch>=2.4`, so pip keeps it.
RUN pip install . && jepa-planner serve --help > /dev/null

RUN useradd --create-home --uid 10001 jepa \
    && mkdir -p /data /weights \
    && chown jepa /data
USER jepa

# Inside the container HTTP listens on all interfaces, so a key is required (the service refuses
# to start without JEPA_API_KEY). The bridge stays on loopback unless CURVE keys are given:
#   -e JEPA_BRIDGE=tcp://0.0.0.0:5555 -e JEPA_BRIDGE_SECRET_KEY=/keys/server.key_secret
#   -e JEPA_BRIDGE_AUTHORIZED_KEYS=/keys/arms -v ./keys:/keys:ro -p 5555:5555
ENV JEPA_HOST=0.0.0.0 \
    JEPA_PORT=8000 \
    JEPA_BRIDGE=tcp://127.0.0.1:5555 \
    JEPA_DATA_DIR=/data \
    JEPA_DEVICE=auto
EXPOSE 8000 5555
VOLUME ["/data", "/weights"]

# Liveness only (the process answers); /readyz says whether the model has loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('JEPA_PORT', '8000'), timeout=4); sys.exit(0)"]

ENTRYPOINT ["jepa-planner"]
CMD ["serve"]
