# One image for every role; the command picks it: api | worker | beat | migrate | merge | up.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FDA_CACHE_DIR=/cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fda_core ./fda_core
COPY service ./service
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
# Editable, so service/migrate.py finds /app/migrations beside the code.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 fda \
    && mkdir -p /cache /app/var \
    && chown fda /cache /app/var

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"]
ENTRYPOINT ["fdamerge"]
CMD ["api", "--host", "0.0.0.0"]
