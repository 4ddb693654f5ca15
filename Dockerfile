# One image for every role; the command picks it: api | worker | beat | webhooks | migrate | merge | up.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FDA_CACHE_DIR=/cache \
    FDA_HEALTH_DIR=/tmp/fdamerge-health

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fda_core ./fda_core
COPY service ./service
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY fdamerge_client ./fdamerge_client
COPY migrations ./migrations
# Editable, so service/migrate.py finds /app/migrations beside the code.
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 fda \
    && mkdir -p /cache /app/var \
    && chown fda /cache /app/var

USER 10001
EXPOSE 8000
# Per role: each keeps its own health file fresh (workers from their event loop; the API's check also
# asks /healthz). One-shot roles (migrate, merge) write none: docker-compose.yml disables the check there.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["fdamerge", "healthcheck"]
ENTRYPOINT ["fdamerge"]
CMD ["api", "--host", "0.0.0.0"]
