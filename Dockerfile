FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY . .
RUN if [ -f bridge/package-lock.json ]; then cd bridge && npm ci --omit=dev --no-audit --no-fund; fi \
 && SECRET_KEY=build python manage.py collectstatic --noinput -v 0
RUN useradd --system --home /app gateway && mkdir -p /app/var && chown gateway /app/var
USER gateway
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", "hypertuna.asgi:application"]
