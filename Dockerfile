FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY gateway ./gateway
COPY admin ./admin
COPY config ./config
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --create-home keygate

USER keygate
WORKDIR /data
# Listen on all interfaces inside the container; the store lives in /data.
ENV KEYGATE_SERVER_LISTEN=0.0.0.0:8080 \
    KEYGATE_STORE_URL=sqlite:////data/keygate-data/keygate.db
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["keygate"]
CMD ["serve"]
