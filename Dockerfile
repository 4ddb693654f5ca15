# One image for every role; the command picks it (today `merge`; the service roles come with #4).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fda_core ./fda_core
COPY service ./service
COPY api ./api
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 fda

USER fda
ENTRYPOINT ["fdamerge"]
CMD ["--help"]
