# halo-integrator in a container: `halo-integrator run` as a non-root user (uid 10001), with
# its configuration, secrets, token caches and SQLite store on the /data volume. README.md,
# "Running the daemon", shows how to build and run it. /data/halo-integrator.toml must set
# [server] address = "0.0.0.0": the default, 127.0.0.1, is not reachable from outside.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# What `pip install .` needs, and nothing else of the checkout (no tests, no cassettes).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY halo_integrator_core ./halo_integrator_core
COPY plugins ./plugins
COPY emulator ./emulator
RUN pip install . && rm -rf /src

RUN groupadd --system --gid 10001 halo \
    && useradd --system --uid 10001 --gid halo --home-dir /data --shell /usr/sbin/nologin halo \
    && mkdir -p /data \
    && chown halo:halo /data \
    && chmod 700 /data
USER halo
WORKDIR /data
VOLUME /data

EXPOSE 8080
# Answers 200 while the scheduler is alive and the store answers, 503 otherwise.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=5)"]

# SIGTERM (docker stop) lets a running sync finish its tenant: give it more than --grace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["halo-integrator"]
CMD ["run"]
