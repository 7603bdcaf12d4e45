"""The one settings module, driven by environment variables (see ``.env.example`` for every variable).

Without any variable set the gateway runs on its embedded default: SQLite, an in-memory channel layer,
a local-memory cache and a file-system Celery broker, so ``make run`` needs no server. Production sets
``DATABASE_URL`` (Postgres) and ``REDIS_URL`` (cache, channel layer, Celery broker, rate limits).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from hypertuna.env import EnvError, env

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    ROLE = env.str("HYPERTUNA_ROLE", "gateway", choices=("gateway", "escrow"))
    DEBUG = env.bool("DEBUG", False)
    VAR_DIR = Path(env.str("HYPERTUNA_VAR_DIR", str(BASE_DIR / "var"))).resolve()

    _secret_key = env.optional_str("SECRET_KEY")
    SECRET_KEY_IS_GENERATED = _secret_key is None
    # A random key per process start is safe for the embedded default (sessions do not survive a
    # restart); the system check hypertuna.W002 warns when a non-debug deployment relies on it.
    SECRET_KEY = _secret_key or secrets.token_urlsafe(50)

    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ("localhost", "127.0.0.1", "[::1]"))
    CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS")

    DATABASE_URL = env.url(
        "DATABASE_URL",
        f"sqlite:///{VAR_DIR / 'gateway.sqlite3'}",
        schemes=("sqlite", "postgres", "postgresql", "pgsql"),
    )
    # --- Escrow (database) --- the escrow role keeps its state in its own database when one is given.
    if ROLE == "escrow":
        DATABASE_URL = env.url(
            "ESCROW_DATABASE_URL", DATABASE_URL, schemes=("sqlite", "postgres", "postgresql", "pgsql")
        )
    REDIS_URL = env.url("REDIS_URL", None, schemes=("redis", "rediss", "unix"))

    HYPERTUNA_PUBLIC_URL = env.url("HYPERTUNA_PUBLIC_URL", "http://127.0.0.1:8000", schemes=("http", "https"))
    HYPERTUNA_REGISTRATION_SECRET = env.optional_str("HYPERTUNA_REGISTRATION_SECRET")
    HYPERTUNA_REGISTRATION_TTL = env.int("HYPERTUNA_REGISTRATION_TTL", 300, min_value=10, max_value=86400)
    HYPERTUNA_REGISTRATION_WINDOW = env.int("HYPERTUNA_REGISTRATION_WINDOW", 300, min_value=5, max_value=3600)
    HYPERTUNA_REGISTRATION_MAX_PEERS = env.int("HYPERTUNA_REGISTRATION_MAX_PEERS", 64, min_value=1)
    # A process keeps a relay's routing snapshot (its healthy peers) this many seconds at most before reading it
    # from the database again; 0: until the relay's registration expires. The processes that change a relay's
    # peers (bridge events, registrations) refresh a shared cache (Redis) at once, but a process-local cache
    # (the embedded default) sees another process's change only by reading again.
    HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE = env.int("HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE", 0 if REDIS_URL else 5, min_value=0)
    # New sockets of a replicated relay skip a worker whose connection this node's bridge saw close, for this
    # many seconds or until the bridge sees it again; after that the relay's snapshot decides.
    HYPERTUNA_PEER_DOWN_MARK_SECONDS = env.int("HYPERTUNA_PEER_DOWN_MARK_SECONDS", 60, min_value=1, max_value=3600)
    HYPERTUNA_REGISTRATION_HISTORY_DAYS = env.int("HYPERTUNA_REGISTRATION_HISTORY_DAYS", 7, min_value=1)
    HYPERTUNA_TOKEN_TTL = env.int("HYPERTUNA_TOKEN_TTL", 3600, min_value=30, max_value=30 * 86400)
    HYPERTUNA_TOKEN_MAX_TTL = env.int("HYPERTUNA_TOKEN_MAX_TTL", 7 * 86400, min_value=60)
    # The shortest ttlSeconds the token API accepts; it can only be lowered (test stacks).
    HYPERTUNA_TOKEN_MIN_TTL = env.int("HYPERTUNA_TOKEN_MIN_TTL", 30, min_value=1, max_value=30)
    HYPERTUNA_TOKEN_REFRESH_WINDOW = env.int("HYPERTUNA_TOKEN_REFRESH_WINDOW", 300, min_value=0)
    HYPERTUNA_RATELIMIT_IP_PER_MINUTE = env.int("HYPERTUNA_RATELIMIT_IP_PER_MINUTE", 600, min_value=0)
    HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE = env.int("HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE", 1200, min_value=0)
    HYPERTUNA_TRUSTED_PROXY_HEADER = env.optional_str("HYPERTUNA_TRUSTED_PROXY_HEADER")
    HYPERTUNA_METRICS_TOKEN = env.optional_str("HYPERTUNA_METRICS_TOKEN")
    HYPERTUNA_OPERATOR_KEYS = env.list("HYPERTUNA_OPERATOR_KEYS")
    HYPERTUNA_SIGNATURE_WINDOW = env.int("HYPERTUNA_SIGNATURE_WINDOW", 300, min_value=10, max_value=3600)
    HYPERTUNA_LOG_FORMAT = env.str("HYPERTUNA_LOG_FORMAT", "json", choices=("json", "text"))
    HYPERTUNA_LOG_LEVEL = env.str("HYPERTUNA_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    TLS_ENABLED = env.bool("HYPERTUNA_TLS", False)

    # --- Bridge and routing ---
    HYPERTUNA_BRIDGE_SOCKET = env.str("HYPERTUNA_BRIDGE_SOCKET", str(VAR_DIR / "bridge.sock"))
    HYPERTUNA_BRIDGE_SECRET = env.optional_str("HYPERTUNA_BRIDGE_SECRET")
    HYPERTUNA_BRIDGE_REQUIRED = env.bool("HYPERTUNA_BRIDGE_REQUIRED", True)
    HYPERTUNA_PEER_REQUEST_TIMEOUT = env.int("HYPERTUNA_PEER_REQUEST_TIMEOUT", 10, min_value=1, max_value=120)
    HYPERTUNA_POLL_INTERVAL_MS = env.int("HYPERTUNA_POLL_INTERVAL_MS", 1000, min_value=50, max_value=60000)
    # At most the web server's own message limit (hypertuna.webserver.WEBSOCKET_MAX_SIZE, 1 MiB): above it the
    # server closes the socket 1009 before the relay could answer.
    HYPERTUNA_MAX_FRAME_BYTES = env.int("HYPERTUNA_MAX_FRAME_BYTES", 131072, min_value=1024, max_value=1024 * 1024)
    HYPERTUNA_MAX_QUEUED_FRAMES = env.int("HYPERTUNA_MAX_QUEUED_FRAMES", 64, min_value=1, max_value=10000)
    # Open subscriptions per socket (NIP-11 max_subscriptions); one more REQ is answered CLOSED.
    HYPERTUNA_MAX_SUBSCRIPTIONS = env.int("HYPERTUNA_MAX_SUBSCRIPTIONS", 64, min_value=1, max_value=10000)
    HYPERTUNA_RELAY_ALIASES = env.list("HYPERTUNA_RELAY_ALIASES")
    # Lifetime of a socket's channel-group membership: every open socket re-adds itself four times per
    # lifetime (relays.runtime), so a membership whose disconnect was lost lapses within it.
    HYPERTUNA_CHANNEL_GROUP_EXPIRY = env.int("HYPERTUNA_CHANNEL_GROUP_EXPIRY", 300, min_value=4, max_value=86400)
    # Largest file PUT /drive/… stores in a relay's gateway drive while its workers are offline (streamed).
    HYPERTUNA_DRIVE_MAX_BYTES = env.int("HYPERTUNA_DRIVE_MAX_BYTES", 64 * 1024 * 1024, min_value=1, max_value=2**40)
    # Pending-write pushes to a returning worker: first retry after BASE s, doubling up to MAX s (±20 % jitter).
    HYPERTUNA_PENDING_PUSH_BASE_S = env.int("HYPERTUNA_PENDING_PUSH_BASE_S", 15, min_value=1, max_value=3600)
    HYPERTUNA_PENDING_PUSH_MAX_S = env.int("HYPERTUNA_PENDING_PUSH_MAX_S", 300, min_value=1, max_value=86400)
except EnvError as exc:
    raise ImproperlyConfigured(str(exc)) from None

VAR_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "channels",
    "hypertuna",
    "replicas",
    "escrow",
    "relays",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "hypertuna.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so its process_exception sees a view's Redis failure first: JSON 503 + Retry-After.
    "hypertuna.outage.RedisOutageMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "hypertuna.urls"
ASGI_APPLICATION = "hypertuna.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
assert DATABASE_URL is not None  # env.url returns the default when unset
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
if _db["ENGINE"] == "django.db.backends.postgresql":
    _db["ENGINE"] = "django_prometheus.db.backends.postgresql"
    # Lets psycopg keep server-side prepared statements. Django's cursors bind client-side and never prepare;
    # only replica REQ statements ask to (replicas.queries._fetch). A transaction-mode pooler in front of
    # Postgres must support protocol-level prepared statements (PgBouncer >= 1.21).
    _db["OPTIONS"] = {**_db.get("OPTIONS", {}), "prepare_threshold": 5}
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["ENGINE"] = "django_prometheus.db.backends.sqlite3"
    # SQLite is the single-node embedded default: WAL lets the web process read while Celery writes.
    _db["OPTIONS"] = {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 20}
    _db["CONN_MAX_AGE"] = 0
DATABASES = {"default": _db}
DATABASE_IS_SQLITE = "sqlite3" in _db["ENGINE"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, channel layer, Celery -----------------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("HYPERTUNA_CACHE_PREFIX", "hypertuna"),
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis with a pool that waits for a free connection instead of failing a burst of
            # handshakes (hypertuna/channel_layer.py).
            "BACKEND": "hypertuna.channel_layer.GatewayChannelLayer",
            # The layer blocks on BZPOPMIN for seconds at a time; redis-py 8 sets a default socket timeout
            # that is shorter, which would fail every idle receive. No socket timeout, as redis-py 7 had;
            # a dead connection is still detected by TCP keepalive and health checks.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": None,
                        "socket_keepalive": True,
                        "health_check_interval": 30,
                        "max_connections": env.int("HYPERTUNA_CHANNEL_POOL_SIZE", 100, min_value=4, max_value=10000),
                    }
                ],
                "prefix": env.str("HYPERTUNA_CHANNEL_PREFIX", "hypertuna"),
                "group_expiry": HYPERTUNA_CHANNEL_GROUP_EXPIRY,
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "hypertuna"}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"group_expiry": HYPERTUNA_CHANNEL_GROUP_EXPIRY},
        }
    }
    _broker_dir = VAR_DIR / "celery-broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # The file-system transport needs no server; web, worker and beat share the folder (hypertuna/broker.py
    # makes its files appear whole, and claims messages inside it). The host is never used; without one kombu
    # warns "No hostname was supplied" on every connection.
    CELERY_BROKER_URL = "filesystem://localhost/"
    CELERY_BROKER_TRANSPORT = "hypertuna.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
    }

CELERY_TASK_IGNORE_RESULT = True
# Task modules outside the apps' tasks.py (relays.pending_push needs both relays and replicas).
CELERY_IMPORTS = ("relays.pending_push",)
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TASK_ALWAYS_EAGER = env.bool("HYPERTUNA_CELERY_EAGER", False)
CELERY_BEAT_SCHEDULE = {
    "expire-registrations": {"task": "relays.tasks.expire_registrations", "schedule": 30.0},
    "prune-registration-history": {"task": "relays.tasks.prune_registration_history", "schedule": 3600.0},
    # Gateway writes a returning worker has not acknowledged yet (relays.pending_push; backoff per write).
    "push-pending-writes": {"task": "relays.pending_push.push_due_pending_writes", "schedule": 5.0},
    # The operator dashboard's activity samples (relays.stats): minute rows kept a day, hourly rollups 30 days.
    "collect-stats": {"task": "relays.tasks.collect_stats", "schedule": 60.0},
    "prune-stats": {"task": "relays.tasks.prune_stats", "schedule": 3600.0},
}

# --- Auth, DRF, OpenAPI ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Bounded: nesting depth, finite numbers, no NUL (see hypertuna/parsers.py).
    "DEFAULT_PARSER_CLASSES": ["hypertuna.parsers.BoundedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "hypertuna.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
# Worker bodies are small JSON documents; the limit bounds memory per request.
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024

SPECTACULAR_SETTINGS = {
    "TITLE": "Hypertuna Gateway API",
    "DESCRIPTION": "Worker registration, relay access tokens, operator APIs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
}

# --- Security -------------------------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TLS_ENABLED else None
SESSION_COOKIE_SECURE = TLS_ENABLED
CSRF_COOKIE_SECURE = TLS_ENABLED
SECURE_SSL_REDIRECT = env.bool("HYPERTUNA_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env.int("HYPERTUNA_HSTS_SECONDS", 0, min_value=0)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Static files, i18n ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Metrics --------------------------------------------------------------------------------------
PROMETHEUS_METRIC_NAMESPACE = ""
PROMETHEUS_EXPORT_MIGRATIONS = False

# --- Logging --------------------------------------------------------------------------------------
TESTING = "pytest" in sys.modules
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "hypertuna.logs.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": HYPERTUNA_LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": HYPERTUNA_LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # uvicorn logs every WebSocket open and close at INFO: quiet unless something is wrong.
        "uvicorn": {"level": "WARNING"},
    },
}

# --- Escrow ---------------------------------------------------------------------------------------
# Autobase key escrow (see deploy/runbooks/escrow.md and .env.example for every variable).
try:
    _escrow_dir = VAR_DIR / "escrow"
    # Escrow service (HYPERTUNA_ROLE=escrow): keys at rest, global policy, audit checkpoints, mTLS listener.
    HYPERTUNA_ESCROW_KEY_FILE = Path(env.str("HYPERTUNA_ESCROW_KEY_FILE", str(_escrow_dir / "escrow-keys.bin")))
    HYPERTUNA_ESCROW_KEK = env.optional_str("HYPERTUNA_ESCROW_KEK")
    HYPERTUNA_ESCROW_KEK_FILE = env.optional_str("HYPERTUNA_ESCROW_KEK_FILE")
    HYPERTUNA_ESCROW_POLICY_VERSION = env.int("HYPERTUNA_ESCROW_POLICY_VERSION", 1, min_value=1)
    HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = env.int("HYPERTUNA_ESCROW_HEARTBEAT_SILENCE", 90, min_value=5)
    HYPERTUNA_ESCROW_MIRROR_MAX_AGE = env.int("HYPERTUNA_ESCROW_MIRROR_MAX_AGE", 120, min_value=1)
    HYPERTUNA_ESCROW_LEASE_TTL = env.int("HYPERTUNA_ESCROW_LEASE_TTL", 300, min_value=10, max_value=3600)
    HYPERTUNA_ESCROW_LEASE_MAX_TTL = env.int("HYPERTUNA_ESCROW_LEASE_MAX_TTL", 3600, min_value=10, max_value=86400)
    HYPERTUNA_ESCROW_DEPOSIT_MAX_TTL = env.int("HYPERTUNA_ESCROW_DEPOSIT_MAX_TTL", 7 * 86400, min_value=60)
    HYPERTUNA_ESCROW_SIGNATURE_WINDOW = env.int("HYPERTUNA_ESCROW_SIGNATURE_WINDOW", 300, min_value=10, max_value=3600)
    HYPERTUNA_ESCROW_RATELIMIT_PER_MINUTE = env.int("HYPERTUNA_ESCROW_RATELIMIT_PER_MINUTE", 120, min_value=0)
    HYPERTUNA_ESCROW_CHECKPOINT_DIR = Path(env.str("HYPERTUNA_ESCROW_CHECKPOINT_DIR", str(_escrow_dir / "checkpoints")))
    HYPERTUNA_ESCROW_PKI_DIR = Path(env.str("HYPERTUNA_ESCROW_PKI_DIR", str(_escrow_dir / "pki")))
    HYPERTUNA_ESCROW_LISTEN_HOST = env.str("HYPERTUNA_ESCROW_LISTEN_HOST", "127.0.0.1")
    HYPERTUNA_ESCROW_LISTEN_PORT = env.int("HYPERTUNA_ESCROW_LISTEN_PORT", 8443, min_value=1, max_value=65535)
    HYPERTUNA_ESCROW_TLS_CERT = env.optional_str("HYPERTUNA_ESCROW_TLS_CERT")
    HYPERTUNA_ESCROW_TLS_KEY = env.optional_str("HYPERTUNA_ESCROW_TLS_KEY")
    HYPERTUNA_ESCROW_TLS_CA = env.optional_str("HYPERTUNA_ESCROW_TLS_CA")
    HYPERTUNA_ESCROW_REVOKED_CERTS = [f.lower().replace(":", "") for f in env.list("HYPERTUNA_ESCROW_REVOKED_CERTS")]
    # Gateway side (HYPERTUNA_ROLE=gateway): how the coordinator reaches the escrow. No URL: no leases.
    HYPERTUNA_ESCROW_URL = env.url("HYPERTUNA_ESCROW_URL", None, schemes=("https",))
    HYPERTUNA_ESCROW_CA = env.optional_str("HYPERTUNA_ESCROW_CA")
    HYPERTUNA_ESCROW_CLIENT_CERT = env.optional_str("HYPERTUNA_ESCROW_CLIENT_CERT")
    HYPERTUNA_ESCROW_CLIENT_KEY = env.optional_str("HYPERTUNA_ESCROW_CLIENT_KEY")
    HYPERTUNA_ESCROW_TIMEOUT = env.int("HYPERTUNA_ESCROW_TIMEOUT", 10, min_value=1, max_value=120)
    HYPERTUNA_ESCROW_REQUEST_TTL = env.int("HYPERTUNA_ESCROW_REQUEST_TTL", 300, min_value=10, max_value=86400)
    # A write waits at most this long for a new lease; then it is answered "retry" while the request goes on.
    HYPERTUNA_ESCROW_ANSWER_WITHIN = (
        env.int("HYPERTUNA_ESCROW_ANSWER_WITHIN_MS", 1500, min_value=100, max_value=60_000) / 1000
    )
except EnvError as exc:
    raise ImproperlyConfigured(str(exc)) from None
if HYPERTUNA_ESCROW_LEASE_TTL > HYPERTUNA_ESCROW_LEASE_MAX_TTL:
    raise ImproperlyConfigured("HYPERTUNA_ESCROW_LEASE_TTL must not exceed HYPERTUNA_ESCROW_LEASE_MAX_TTL")
if ROLE == "escrow":
    # The escrow role serves the escrow API only (no admin, no gateway routes), behind mutual TLS.
    ROOT_URLCONF = "escrow.service_urls"
    # Django runs each ASGI request's sync code in a fresh thread; persistent connections would leak.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
ESCROW_BEAT_SCHEDULE = {
    "escrow-expire-leases": {"task": "escrow.tasks.expire_leases", "schedule": 15.0},
    "escrow-audit-checkpoint": {"task": "escrow.tasks.audit_checkpoint", "schedule": 60.0},
    "escrow-audit-verify": {"task": "escrow.tasks.verify_audit", "schedule": 3600.0},
    "escrow-prune-idempotency": {"task": "escrow.tasks.prune_idempotency", "schedule": 3600.0},
}

# --- Replicas -------------------------------------------------------------------------------------
# Blind-peer mirrors and materialized replicas (replicas app; every variable in .env.example).
try:
    HYPERTUNA_REPLICA_BATCH_SIZE = env.int("HYPERTUNA_REPLICA_BATCH_SIZE", 500, min_value=1, max_value=10_000)
    HYPERTUNA_REPLICA_MAX_BATCHES = env.int("HYPERTUNA_REPLICA_MAX_BATCHES", 200, min_value=1)
    HYPERTUNA_REPLICA_MAX_LIMIT = env.int("HYPERTUNA_REPLICA_MAX_LIMIT", 500, min_value=1, max_value=5000)
    HYPERTUNA_REPLICA_READ_CONNECTIONS = env.int("HYPERTUNA_REPLICA_READ_CONNECTIONS", 4, min_value=1, max_value=64)
    HYPERTUNA_REPLICA_STALE_AFTER = env.int("HYPERTUNA_REPLICA_STALE_AFTER", 600, min_value=1)
    HYPERTUNA_REPLICA_FAIL_AFTER = env.int("HYPERTUNA_REPLICA_FAIL_AFTER", 5, min_value=1)
    HYPERTUNA_REPLICA_VERIFY_SIGNATURES = env.bool("HYPERTUNA_REPLICA_VERIFY_SIGNATURES", True)
    HYPERTUNA_REPLICA_SYNC_INTERVAL = env.int("HYPERTUNA_REPLICA_SYNC_INTERVAL", 15, min_value=1)
    HYPERTUNA_REPLICA_REMOVED_RETENTION_DAYS = env.int("HYPERTUNA_REPLICA_REMOVED_RETENTION_DAYS", 7, min_value=0)
except EnvError as exc:
    raise ImproperlyConfigured(str(exc)) from None
CELERY_BEAT_SCHEDULE["replicas-sync-all"] = {
    "task": "replicas.tasks.sync_all_replicas",
    "schedule": float(HYPERTUNA_REPLICA_SYNC_INTERVAL),
}
CELERY_BEAT_SCHEDULE["replicas-refresh-states"] = {"task": "replicas.tasks.refresh_replica_states", "schedule": 60.0}
# --- end Replicas ---------------------------------------------------------------------------------

# Each role's beat runs only its own periodic work, against its own database.
if ROLE == "escrow":
    CELERY_BEAT_SCHEDULE = ESCROW_BEAT_SCHEDULE
