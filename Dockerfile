# The image server in a container: pip-only dependencies (libvips comes as a wheel), a non-root user,
# the store on a volume.  Environment variables as the Go image's (see bin/docker-entrypoint).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 999 --create-home --home-dir /var/lib/image-server image-server

WORKDIR /opt/image-server
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY imageserver ./imageserver
COPY twisted ./twisted
COPY bin ./bin
RUN pip install -c constraints.txt . && install -m 0755 bin/docker-entrypoint /usr/local/bin/docker-entrypoint

# The Go image's default store is ./public: here /var/lib/image-server/public, on the volume.
WORKDIR /var/lib/image-server
VOLUME /var/lib/image-server
USER image-server
EXPOSE 7000 7002
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7002/probe/live', timeout=2)"
ENTRYPOINT ["docker-entrypoint"]
