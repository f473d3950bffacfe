# The Distill Studio image: web studio, worker and `db upgrade` all run from it (see docker-compose.yml).
#   docker build -t distill-studio .
# On x86-64 Linux, torch from PyPI bundles its CUDA libraries, so the same image runs a GPU worker (with the
# NVIDIA Container Toolkit on the host) or everything on CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    STUDIO_DATA_DIR=/data

# Only what `pip install .` needs: the project file, its readme and the four packages (one COPY each: a COPY
# with several directories would merge their contents).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY app/ app/
COPY workers/ workers/
COPY storage/ storage/
RUN pip install --no-cache-dir . && rm -rf /src

# Run as a non-root user that owns the data dir; an empty named volume mounted at /data takes this ownership.
RUN useradd --create-home --uid 1000 studio && mkdir -p /data && chown studio:studio /data
USER studio
WORKDIR /home/studio

EXPOSE 7860
CMD ["distill-studio", "up", "--host", "0.0.0.0"]
