# BioGPT workbench: the Gradio app on port 7860. CUDA-capable (runs on a GPU host with --gpus all) and starts
# on a CPU-only host too (torch falls back to the CPU).
#   docker build -t biogpt-workbench .
#   docker run --gpus all -p 7860:7860 -v biogpt-data:/data biogpt-workbench
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/hf \
    GRADIO_ANALYTICS_ENABLED=False \
    BIOGPT_HOST=0.0.0.0 \
    BIOGPT_PORT=7860

# The base image's torch is kept (requirements allow torch>=2.4); everything else from requirements.txt.
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
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:7860/', timeout=4)" || exit 1

CMD ["python", "app.py"]
