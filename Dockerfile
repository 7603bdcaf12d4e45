# One image for every process of the gateway: web (uvicorn), Celery worker and beat, the bridge (Node),
# the bridge event consumer and the escrow role. docker-compose.yml runs each as its own service;
# deploy/README.md is the guide. tests/deploy/ checks this file without a container engine.

# --- Node 20 and the bridge's dependencies --------------------------------------------------------
# The bridge declares node >= 20 (bridge/package.json "engines"); Debian bookworm's nodejs is 18, so Node
# comes from the official image. Both install trees (bridge/ and its nested blind/, installed by the
# postinstall script) are installed from their lockfiles. interop/ is test-only and not installed.
FROM node:20-bookworm-slim AS node-deps
WORKDIR /app/bridge
COPY bridge/package.json bridge/package-lock.json ./
COPY bridge/blind/package.json bridge/blind/package-lock.json ./blind/
RUN npm ci --omit=dev --no-audit --no-fund \
 && test -d node_modules && test -d blind/node_modules

# --- The gateway image ----------------------------------------------------------------------------
# Same Debian release as the Node stage, so the node binary and the native addons (sodium, udx,
# RocksDB) find the glibc and libstdc++ they were built against.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node-deps /usr/local/bin/node /usr/local/bin/node
RUN node --version
WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY . .
COPY --from=node-deps /app/bridge/node_modules bridge/node_modules
COPY --from=node-deps /app/bridge/blind/node_modules bridge/blind/node_modules
RUN SECRET_KEY=build HYPERTUNA_VAR_DIR=/tmp/build-var python manage.py collectstatic --noinput -v 0 \
 && rm -rf /tmp/build-var
# Non-root user. The code stays root-owned (read-only to the gateway); only the state directories are
# writable. Named volumes mounted on them start with this ownership and mode: /run/hypertuna holds the
# bridge RPC socket (0700 directory, 0600 socket: only this uid can connect), /app/var the state.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home --shell /usr/sbin/nologin gateway \
 && mkdir -p /app/var/bridge /app/var/escrow /run/hypertuna \
 && chown -R gateway:gateway /app/var /run/hypertuna \
 && chmod 0700 /app/var /app/var/bridge /app/var/escrow /run/hypertuna
USER gateway
EXPOSE 8000 8443
CMD ["python", "-m", "uvicorn", "--host", "0.0.0.0", "--port", "8000", "--loop", "uvloop", "--ws", "hypertuna.webserver:CoalescingWebSocketProtocol", "--ws-per-message-deflate", "false", "--ws-max-size", "1048576", "--ws-ping-interval", "50", "--ws-ping-timeout", "20", "--timeout-graceful-shutdown", "8", "--timeout-keep-alive", "130", "--lifespan", "off", "--no-access-log", "--proxy-headers", "--forwarded-allow-ips", "*", "--no-server-header", "hypertuna.asgi:application"]
