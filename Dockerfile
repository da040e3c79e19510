# xdretrieve's HTTP service (`xdretrieve serve`) on the CPU, against a Qdrant server.
#   docker compose up -d              # qdrant + xdretrieve, see compose.yaml
#   docker compose run --rm -v "$PWD/data:/data:ro" xdretrieve finetune --data /data --out /models/shop.model
#   docker compose run --rm -v "$PWD/data:/data:ro" xdretrieve index --data /data --model /models/shop.model \
#       --url http://qdrant:6333
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CPU build of torch first: a bare `torch` (pulled by sentence-transformers) is the
# multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY xdretrieve ./xdretrieve
RUN pip install ".[serve]"

# Mount points of compose.yaml's named volumes, made here so that a new volume takes their owner:
# trained models (`finetune --out /models/NAME`, which `index --model` records and `serve` loads)
# and the embedding cache (finetune and index each embed a catalog; the cache keeps it once).
RUN useradd --create-home --uid 10001 xdr \
    && mkdir -p /models /home/xdr/.cache/xdretrieve \
    && chown -R xdr:xdr /models /home/xdr/.cache
USER xdr
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `docker run IMAGE index --data ... --url ...` runs any other xdretrieve command
ENTRYPOINT ["xdretrieve"]
CMD ["serve", "--host", "0.0.0.0", "--url", "http://qdrant:6333"]
