# BioGPT workbench: the Gradio app on port 7860, with the torch version the tests use (torch==2.13.0).
#
#   CUDA image (default): torch 2.13.0 from PyPI, the CUDA 12 build that brings its CUDA runtime as nvidia-* wheels
#   (the host needs an NVIDIA driver recent enough for it and the NVIDIA container toolkit; check the build with
#   `docker run --rm biogpt-workbench python -c "import torch; print(torch.version.cuda)"`). Several GB.
#     docker build -t biogpt-workbench .
#     docker run --gpus all -p 7860:7860 -v biogpt-data:/data biogpt-workbench
#
#   CPU-only image: torch 2.13.0 from PyTorch's CPU wheel index, no CUDA libraries; several times smaller.
#     docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t biogpt-workbench:cpu .
#     docker run -p 7860:7860 -v biogpt-data:/data biogpt-workbench:cpu
#
#   Another CUDA build: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 (or cu128, ...).
#
# The app listens on 0.0.0.0 inside the container, so it starts with the exposure-aware defaults (no local paths,
# catalog models only; see the README's Deployment section). Add a login with -e BIOGPT_AUTH=/data/users (a file
# of user:scrypt$... lines, made with `python -m biogpt.access hash USER`). Behind `-p 127.0.0.1:7860:7860` on a
# single-user machine, -e BIOGPT_EXPOSED=0 restores the open defaults.
FROM python:3.11-slim

# Empty: pip's default index (PyPI's CUDA build of torch on Linux x86_64); a URL: that index for torch only.
ARG TORCH_INDEX=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf \
    GRADIO_ANALYTICS_ENABLED=False \
    BIOGPT_HOST=0.0.0.0 \
    BIOGPT_PORT=7860

# A C compiler for biogpt's own CPU kernels (biogpt/native.c, compiled at the first CPU load): without one they are
# skipped and PyTorch's kernels do the work.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*

# torch first, from the chosen index, so that requirements.txt (torch>=2.4) finds it satisfied and adds no other.
RUN pip install "torch==2.13.0" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

# Non-root user with uid 1000 (as Hugging Face Spaces expects); the Hub cache lives on the /data volume.
RUN useradd --create-home --uid 1000 app && mkdir -p /data/hf && chown -R app:app /data
WORKDIR /home/app/workbench
COPY --chown=app:app . .
RUN pip install --no-deps -e .
USER app

VOLUME /data
EXPOSE 7860
# A cheap route that needs no login and renders nothing: the server answers, the page is not built.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/gradio_api/app_id', timeout=4)" || exit 1

CMD ["python", "app.py"]
