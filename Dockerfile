# The appliance image: slim, non-root, health-checked on /readyz.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    APPLIANCE_HOST=0.0.0.0 APPLIANCE_PORT=8000 APPLIANCE_DATA_DIR=/var/lib/appliance

RUN groupadd --system appliance && useradd --system --gid appliance --home-dir /var/lib/appliance appliance \
    && mkdir -p /var/lib/appliance /opt/appliance && chown appliance:appliance /var/lib/appliance

WORKDIR /opt/appliance
COPY pyproject.toml README.md ./
COPY appliance ./appliance
COPY web ./web
COPY plugins ./plugins
RUN pip install . && for plugin in plugins/*/; do pip install "$plugin"; done

USER appliance
VOLUME ["/var/lib/appliance"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
CMD ["appliance", "run"]
