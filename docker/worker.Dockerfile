# The worker image: CUDA runtime + torch==2.13.0 from PyPI (its CUDA wheel brings the CUDA libraries it
# needs; the host provides only the driver, through the NVIDIA container toolkit).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 genq

WORKDIR /app

# torch first: the largest layer, cached across code changes.
RUN pip install torch==2.13.0

COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p api shared worker && touch api/__init__.py shared/__init__.py worker/__init__.py \
    && pip install -c constraints.txt -e ".[worker]"

COPY shared ./shared
COPY worker ./worker
COPY docker/worker-entrypoint.sh /usr/local/bin/genq-worker-entrypoint

RUN mkdir -p /var/lock/genq-gpus && chown genq /var/lock/genq-gpus
USER genq
ENTRYPOINT ["genq-worker-entrypoint"]
CMD ["celery", "-A", "worker.celery_app", "worker", "--queues=genq.train,genq.sample", "--concurrency=1", \
     "--prefetch-multiplier=1", "--pool=prefork", "--pool-start-method=spawn", "--loglevel=INFO"]
