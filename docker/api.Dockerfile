# The API image: Flask + gunicorn + the `genq` command line. No torch, no worker code (the API sends
# tasks by name), so it stays small.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 genq

# Dependencies first (cached until pyproject.toml changes), against empty packages.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p api shared && touch api/__init__.py shared/__init__.py \
    && pip install -c constraints.txt -e ".[api]"

COPY alembic.ini ./
COPY migrations ./migrations
COPY shared ./shared
COPY api ./api
COPY genq ./genq

USER genq
EXPOSE 8000
CMD ["gunicorn", "--bind=0.0.0.0:8000", "--workers=4", "--threads=4", "--worker-class=gthread", "api.wsgi:app"]
