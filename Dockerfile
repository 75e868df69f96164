# ctnode as an offline image: everything installed at build time, nothing fetched at run time.
#   docker build -t ctnode .
#   docker run -p 11112:11112 -v ctnode-data:/data ctnode
# Weights a site obtained go into weights/ before the build (`ctnode weights register` or
# `import`); the build fails if a registered file there does not match its sha256 in the
# manifest or cannot run as its analyzer (`ctnode weights check` loads each as the node
# would and caches CT-CLIP's prompt latents beside it). torch comes from PyPI: its wheel
# runs on the CPU and on NVIDIA GPUs (`docker run --gpus all ...`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CTNODE_STORAGE__DATA_DIR=/data \
    CTNODE_NEURAL__WEIGHTS_DIR=/opt/ctnode/weights

WORKDIR /opt/ctnode
COPY pyproject.toml README.md ./
COPY config ./config
COPY scp ./scp
COPY inference ./inference
COPY reporting ./reporting
COPY node ./node
COPY training ./training
COPY cli ./cli
COPY weights ./weights
RUN pip install '.[neural,postgres]' && ctnode config > /dev/null && ctnode weights list && ctnode weights check

RUN useradd --system --uid 10001 --home-dir /data ctnode \
    && mkdir -p /data && chown ctnode:ctnode /data
USER ctnode
VOLUME ["/data"]
# DICOM; HTTP too when started with CTNODE_API__HOST=0.0.0.0 and a CTNODE_API__TOKEN
EXPOSE 11112 8000

HEALTHCHECK --interval=30s --timeout=15s --start-period=20s --retries=3 \
    CMD ["ctnode", "echo", "--timeout", "10"]
ENTRYPOINT ["ctnode"]
CMD ["serve"]
