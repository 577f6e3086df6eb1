# The nbenv bot for Cloud Run: `nbenv serve` (gunicorn + Bolt) on $PORT.
#   gcloud run deploy nbenv --source=. …   (see docs/deploy.md)
FROM python:3.11-slim

# git: `diff` reads the image folders at two SHAs from the config's source repository.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NBENV_HOME=/tmp/nbenv \
    NBENV_CONFIG=config/nbenv.yaml \
    PORT=8080

WORKDIR /app
# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --requirement requirements.txt

COPY pyproject.toml README.md ./
COPY bot ./bot
COPY config ./config
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /tmp/nbenv nbenv

USER nbenv
EXPOSE 8080
CMD ["nbenv", "serve"]
