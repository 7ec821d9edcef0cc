# ruff: noqa: E501 - the settings table is data, one line per setting
"""Settings: one typed object with Celery 5's setting names.

``SETTINGS`` is the table of every setting celeriac knows: its name, the kinds of value it
takes, its default, a one-line doc and the old uppercase Celery names that mean the same.
``Config`` holds one value per setting. Reading is a plain attribute lookup
(``conf.task_serializer`` hits the instance ``__dict__``); every write goes through
``validate`` and fails with ``ConfigurationError`` for an unknown name ("did you mean ...?") or
a value of the wrong kind::

    conf = Config(broker_url="redis://localhost:6379/0")
    conf.task_always_eager = True
    conf["CELERY_ALWAYS_EAGER"]            # old names map to new ones: True
    conf.update(worker_concurrency=4)
    conf = Config.from_object("proj.settings", namespace="CELERY")   # Django style

Kinds (``Setting.kinds``, tried in order): ``none``, ``bool``, ``int``, ``uint`` (int >= 0),
``float`` / ``ufloat`` (an int is accepted and stored as float), ``seconds`` (number or
timedelta, stored as given), ``str``, ``bytes`` (str is encoded), ``strlist`` (list/tuple/set of
str, stored as a list; a bare str is refused), ``list``, ``dict`` (any mapping), ``tz`` (name or
tzinfo), ``ref`` (an import path or the object itself: a class, a callable, an instance) and
``any``. A bool is never taken for a number.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta, tzinfo
from types import MappingProxyType, ModuleType
from typing import Any, Concatenate, Final, Generic, ParamSpec, TypeVar

from celeriac.errors import ConfigurationError

__all__ = [
    "DEFAULTS",
    "OLD_NAMES",
    "SETTINGS",
    "Config",
    "Setting",
    "UnknownSettingError",
    "as_seconds",
    "find_setting",
    "load_object",
    "redact_url",
    "validate",
]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its name, accepted kinds, default, doc and old Celery names."""

    name: str
    kinds: tuple[str, ...]
    default: Any
    doc: str
    old: tuple[str, ...] = ()

    @property
    def nullable(self) -> bool:
        return "none" in self.kinds or "any" in self.kinds

    @property
    def expected(self) -> str:
        """The accepted kinds in words, e.g. ``"float or None"``."""
        return " or ".join(_KIND_WORDS[kind] for kind in self.kinds)

    def validate(self, value: Any) -> Any:
        return validate(self, value)

    def parse(self, text: str) -> Any:
        """Read a value from a string (command line, environment) and validate it."""
        return _parse(self, text)


def _s(name: str, kinds: str, default: Any, doc: str, *old: str) -> Setting:
    return Setting(name, tuple(kinds.split("|")), default, doc, old)


_LOG_FORMAT: Final = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
_TASK_LOG_FORMAT: Final = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)
_PUBLISH_RETRY_POLICY: Final = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_max": 1,
    "interval_step": 0.2,
}
_ACCEPTED: Final = "accepted for Celery compatibility; no celeriac part reads it yet"

# fmt: off
_TABLE: Final[tuple[Setting, ...]] = (
    # -- general ---------------------------------------------------------------------------------
    _s("accept_content", "strlist", ["json"], "Serializer names or content types a worker accepts; anything else is dead-lettered.", "CELERY_ACCEPT_CONTENT"),
    _s("result_accept_content", "strlist|none", None, "Content types accepted when reading results (None = accept_content).", "RESULT_ACCEPT_CONTENT"),
    _s("enable_utc", "bool", True, "Dates and times in messages are in UTC.", "ENABLE_UTC", "CELERY_ENABLE_UTC"),
    _s("timezone", "tz|none", None, "Time zone for schedules and local dates (None = UTC).", "CELERY_TIMEZONE"),
    _s("imports", "strlist", [], "Modules a worker imports at start (to register tasks).", "CELERY_IMPORTS"),
    _s("include", "strlist", [], "More modules imported after imports.", "CELERY_INCLUDE"),
    # -- broker ----------------------------------------------------------------------------------
    _s("broker_url", "str|strlist|none", None, "Broker URL, e.g. redis://localhost:6379/0; several (a list or ';'-joined) fail over.", "BROKER_URL"),
    _s("broker_read_url", "str|none", None, "Broker URL used for consuming (None = broker_url).", "BROKER_READ_URL"),
    _s("broker_write_url", "str|none", None, "Broker URL used for publishing (None = broker_url).", "BROKER_WRITE_URL"),
    _s("broker_transport", "str|none", None, "Broker transport name when the URL does not give one.", "BROKER_TRANSPORT"),
    _s("broker_transport_options", "dict", {}, "Options for the broker transport (e.g. visibility_timeout, priority_steps).", "BROKER_TRANSPORT_OPTIONS"),
    _s("broker_connection_timeout", "ufloat", 4.0, "Seconds to wait while connecting to the broker.", "BROKER_CONNECTION_TIMEOUT"),
    _s("broker_connection_retry", "bool", True, "Retry a lost broker connection.", "BROKER_CONNECTION_RETRY"),
    _s("broker_connection_retry_on_startup", "bool|none", None, "Retry the first broker connection at start (None = broker_connection_retry).", "BROKER_CONNECTION_RETRY_ON_STARTUP"),
    _s("broker_connection_max_retries", "uint|none", 100, "Connection attempts before giving up (0 or None = retry forever).", "BROKER_CONNECTION_MAX_RETRIES"),
    _s("broker_channel_error_retry", "bool", False, "Retry on channel errors too.", "BROKER_CHANNEL_ERROR_RETRY"),
    _s("broker_failover_strategy", "ref|none", None, "How to pick the next URL of broker_url ('round-robin', 'shuffle' or a callable).", "BROKER_FAILOVER_STRATEGY"),
    _s("broker_heartbeat", "ufloat|none", 120.0, "AMQP heartbeat interval in seconds (0 or None = off).", "BROKER_HEARTBEAT"),
    _s("broker_heartbeat_checkrate", "ufloat", 3.0, "Heartbeat checks per heartbeat interval.", "BROKER_HEARTBEAT_CHECKRATE"),
    _s("broker_login_method", "str|none", None, "AMQP login method, e.g. AMQPLAIN or EXTERNAL.", "BROKER_LOGIN_METHOD"),
    _s("broker_native_delayed_delivery_queue_type", "str", "quorum", "Queue type for RabbitMQ native delayed delivery.", "BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE"),
    _s("broker_pool_limit", "uint|none", 10, "Broker connections kept in the pool (0 or None = no pool).", "BROKER_POOL_LIMIT"),
    _s("broker_pool_acquire_timeout", "ufloat|none", None, "Seconds to wait for a pooled connection (None = forever).", "BROKER_POOL_ACQUIRE_TIMEOUT"),
    _s("broker_use_ssl", "bool|dict", False, "Use TLS to the broker: True, or a dict of ssl options.", "BROKER_USE_SSL"),
    _s("broker_host", "str|none", None, "Broker host when broker_url is not set (legacy).", "BROKER_HOST"),
    _s("broker_port", "uint|none", None, "Broker port when broker_url is not set (legacy).", "BROKER_PORT"),
    _s("broker_user", "str|none", None, "Broker user name when broker_url is not set (legacy).", "BROKER_USER"),
    _s("broker_password", "str|none", None, "Broker password when broker_url is not set (legacy).", "BROKER_PASSWORD"),
    _s("broker_vhost", "str|none", None, "Broker virtual host when broker_url is not set (legacy).", "BROKER_VHOST"),
    # -- results ---------------------------------------------------------------------------------
    _s("result_backend", "ref|none", None, "Result backend URL, e.g. redis://localhost:6379/1 (None = results are not stored).", "CELERY_RESULT_BACKEND"),
    _s("result_serializer", "str", "json", "Serializer for stored results.", "CELERY_RESULT_SERIALIZER"),
    _s("result_compression", "str|none", None, "Compression for stored results (e.g. gzip, zlib).", "CELERY_RESULT_COMPRESSION"),
    _s("result_expires", "seconds|none", timedelta(days=1), "Time after which stored results expire: seconds or a timedelta (None or 0 = never).", "CELERY_TASK_RESULT_EXPIRES", "CELERY_RESULT_EXPIRES"),
    _s("result_extended", "bool", False, "Store the task's name, args, kwargs, worker, retries and queue with its result.", "CELERY_RESULT_EXTENDED"),
    _s("result_persistent", "bool|none", None, "Result messages survive a broker restart (rpc backend).", "CELERY_RESULT_PERSISTENT"),
    _s("result_backend_transport_options", "dict", {}, "Options for the result backend's connection.", "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"),
    _s("result_cache_max", "int", -1, "Results kept in the client's cache (-1 = off, 0 = no limit).", "CELERY_MAX_CACHED_RESULTS"),
    _s("result_exchange", "str", "celeryresults", "Exchange for results (rpc/amqp backends).", "CELERY_RESULT_EXCHANGE"),
    _s("result_exchange_type", "str", "direct", "Type of the results exchange.", "CELERY_RESULT_EXCHANGE_TYPE"),
    _s("result_chord_join_timeout", "ufloat", 3.0, "Seconds to wait when joining a chord header's results.", "CELERY_RESULT_CHORD_JOIN_TIMEOUT"),
    _s("result_chord_retry_interval", "ufloat", 1.0, "Seconds between retries of a chord's unlock.", "CELERY_RESULT_CHORD_RETRY_INTERVAL"),
    _s("result_backend_always_retry", "bool", False, "Retry recoverable result backend errors.", "CELERY_RESULT_BACKEND_ALWAYS_RETRY"),
    _s("result_backend_max_retries", "ufloat", math.inf, "Retries of a result backend operation before giving up.", "CELERY_RESULT_BACKEND_MAX_RETRIES"),
    _s("result_backend_base_sleep_between_retries_ms", "uint", 10, "Base of the backoff between result backend retries, in ms.", "CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS"),
    _s("result_backend_max_sleep_between_retries_ms", "uint", 10000, "Cap of the backoff between result backend retries, in ms.", "CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS"),
    _s("result_backend_thread_safe", "bool", False, "Share one result backend between threads.",),
    _s("result_exception_allowlist", "strlist", [], "celeriac: exception types ('module.Name' or 'module') rebuilt from results besides builtins and task modules."),
    _s("override_backends", "dict|none", None, "Extra result backend names mapped to classes or import paths."),
    # -- tasks -----------------------------------------------------------------------------------
    _s("task_serializer", "str", "json", "Default serializer for task messages.", "CELERY_TASK_SERIALIZER"),
    _s("task_compression", "str|none", None, "Default compression for task messages (e.g. gzip).", "CELERY_MESSAGE_COMPRESSION", "CELERY_COMPRESSION"),
    _s("task_protocol", "uint", 2, "Task message protocol version sent.", "CELERY_TASK_PROTOCOL"),
    _s("task_acks_late", "bool", False, "Acknowledge a task's message after it ran, not before.", "CELERY_ACKS_LATE"),
    _s("task_acks_on_failure_or_timeout", "bool", True, "With acks_late, also acknowledge failed and timed-out tasks.", "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT"),
    _s("task_acks_on_failure", "bool|none", None, "With acks_late, acknowledge failed tasks (None = task_acks_on_failure_or_timeout).", "CELERY_ACKS_ON_FAILURE"),
    _s("task_acks_on_timeout", "bool|none", None, "With acks_late, acknowledge timed-out tasks (None = task_acks_on_failure_or_timeout).", "CELERY_ACKS_ON_TIMEOUT"),
    _s("task_reject_on_worker_lost", "bool|none", None, "Requeue a task's message when its process dies (with acks_late).", "CELERY_REJECT_ON_WORKER_LOST", "CELERY_TASK_REJECT_ON_WORKER_LOST"),
    _s("task_default_queue", "str", "celery", "Queue for tasks without a route.", "CELERY_DEFAULT_QUEUE"),
    _s("task_default_queue_type", "str", "classic", "RabbitMQ type of the default queue ('classic' or 'quorum').", "CELERY_DEFAULT_QUEUE_TYPE"),
    _s("task_default_exchange", "str|none", None, "Exchange for tasks without a route (None = the queue's name).", "CELERY_DEFAULT_EXCHANGE"),
    _s("task_default_exchange_type", "str", "direct", "Type of the default exchange.", "CELERY_DEFAULT_EXCHANGE_TYPE"),
    _s("task_default_routing_key", "str|none", None, "Routing key for tasks without a route (None = the queue's name).", "CELERY_DEFAULT_ROUTING_KEY"),
    _s("task_default_delivery_mode", "str|uint", 2, "Delivery mode: 2 or 'persistent', 1 or 'transient'.", "CELERY_DEFAULT_DELIVERY_MODE"),
    _s("task_default_priority", "uint|none", None, "Priority of tasks that give none (None = the broker's default).", "CELERY_DEFAULT_PRIORITY"),
    _s("task_default_rate_limit", "str|ufloat|none", None, "Rate limit of every task, e.g. '10/s' (None = no limit).", "CELERY_DEFAULT_RATE_LIMIT"),
    _s("task_inherit_parent_priority", "bool", False, "Child tasks take their parent's priority.", "CELERY_INHERIT_PARENT_PRIORITY"),
    _s("task_queue_max_priority", "uint|none", None, "x-max-priority of declared queues (RabbitMQ).", "CELERY_QUEUE_MAX_PRIORITY"),
    _s("task_queues", "list|dict|none", None, "Queues a worker consumes from (None = task_default_queue).", "CELERY_QUEUES"),
    _s("task_routes", "any", None, "Routers: a dict of name/glob -> route, a callable, or a list of them.", "CELERY_ROUTES"),
    _s("task_create_missing_queues", "bool", True, "Declare queues named in routes but not in task_queues.", "CELERY_CREATE_MISSING_QUEUES"),
    _s("task_create_missing_queue_type", "str", "classic", "RabbitMQ type of queues created because they were missing.", "CELERY_CREATE_MISSING_QUEUE_TYPE"),
    _s("task_create_missing_queue_exchange_type", "str|none", None, "Exchange type of queues created because they were missing.", "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE"),
    _s("task_track_started", "bool", False, "Record the STARTED state when a worker begins a task.", "CELERY_TRACK_STARTED", "CELERY_TASK_TRACK_STARTED"),
    _s("task_time_limit", "ufloat|none", None, "Hard time limit of a task in seconds; its process is killed.", "CELERYD_TASK_TIME_LIMIT", "CELERYD_TIME_LIMIT"),
    _s("task_soft_time_limit", "ufloat|none", None, "Soft time limit in seconds; SoftTimeLimitExceeded is raised in the task.", "CELERYD_TASK_SOFT_TIME_LIMIT", "CELERYD_SOFT_TIME_LIMIT"),
    _s("task_always_eager", "bool", False, "Run tasks in the caller at once instead of sending them.", "CELERY_ALWAYS_EAGER", "CELERY_TASK_ALWAYS_EAGER"),
    _s("task_eager_propagates", "bool", False, "Eager tasks re-raise their exceptions.", "CELERY_EAGER_PROPAGATES_EXCEPTIONS", "CELERY_EAGER_PROPAGATES"),
    _s("task_store_eager_result", "bool", False, "Eager tasks store their results in the backend.", "CELERY_STORE_EAGER_RESULT"),
    _s("task_ignore_result", "bool", False, "Tasks do not store their results unless they ask to.", "CELERY_IGNORE_RESULT"),
    _s("task_store_errors_even_if_ignored", "bool", False, "Store failures even of tasks that ignore results.", "CELERY_STORE_ERRORS_EVEN_IF_IGNORED"),
    _s("task_remote_tracebacks", "bool", False, "Show the worker's traceback when a result re-raises.", "CELERY_REMOTE_TRACEBACKS"),
    _s("task_publish_retry", "bool", True, "Retry publishing a task when the broker connection fails.", "CELERY_TASK_PUBLISH_RETRY", "CELERY_PUBLISH_RETRY"),
    _s("task_publish_retry_policy", "dict", _PUBLISH_RETRY_POLICY, "max_retries, interval_start, interval_step and interval_max of publish retries.", "CELERY_TASK_PUBLISH_RETRY_POLICY", "CELERY_PUBLISH_RETRY_POLICY"),
    _s("task_annotations", "any", None, "Task option overrides: a dict of name -> options, an object, or a list of them.", "CELERY_ANNOTATIONS"),
    _s("task_send_sent_event", "bool", False, "Send a task-sent event when a task is published.", "CELERY_SEND_TASK_SENT_EVENT", "CELERY_SEND_SENT_EVENT"),
    _s("task_allow_error_cb_on_chord_header", "bool", False, "Error callbacks on a chord also run for header task failures.", "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER"),
    # -- worker ----------------------------------------------------------------------------------
    _s("worker_concurrency", "uint|none", None, "Worker processes/threads (None or 0 = number of CPUs).", "CELERYD_CONCURRENCY"),
    _s("worker_prefetch_multiplier", "uint", 4, "Messages prefetched per unit of concurrency (0 = no limit).", "CELERYD_PREFETCH_MULTIPLIER"),
    _s("worker_event_loop", "str", "auto", "The worker's event loop: auto (uvloop when installed), uvloop or asyncio."),
    _s("worker_pool", "ref", "prefork", "Execution pool: prefork, threads, asyncio, solo, gevent, or a pool class.", "CELERYD_POOL"),
    _s("worker_max_tasks_per_child", "uint|none", None, "Tasks a pool process runs before it is replaced (None = no limit).", "CELERYD_MAX_TASKS_PER_CHILD"),
    _s("worker_max_memory_per_child", "uint|none", None, "Resident KiB after which a pool process is replaced (None = no limit).", "CELERYD_MAX_MEMORY_PER_CHILD"),
    _s("worker_send_task_events", "bool", False, "Send task events (for monitors such as Flower).", "CELERY_SEND_EVENTS"),
    _s("worker_hijack_root_logger", "bool", True, "The worker configures the root logger.", "CELERYD_HIJACK_ROOT_LOGGER"),
    _s("worker_log_format", "str", _LOG_FORMAT, "Log format of worker messages.", "CELERYD_LOG_FORMAT", "CELERY_WORKER_LOG_FORMAT"),
    _s("worker_task_log_format", "str", _TASK_LOG_FORMAT, "Log format of messages logged inside tasks.", "CELERYD_TASK_LOG_FORMAT", "CELERY_WORKER_TASK_LOG_FORMAT"),
    _s("worker_log_color", "bool|none", None, "Color log output (None = when writing to a terminal).", "CELERYD_LOG_COLOR"),
    _s("worker_redirect_stdouts", "bool", True, "Send task stdout/stderr to the log.", "CELERY_REDIRECT_STDOUTS", "CELERYD_REDIRECT_STDOUTS"),
    _s("worker_redirect_stdouts_level", "str", "WARNING", "Log level of redirected stdout/stderr.", "CELERY_REDIRECT_STDOUTS_LEVEL", "CELERYD_REDIRECT_STDOUTS_LEVEL"),
    _s("worker_disable_rate_limits", "bool", False, "Ignore task rate limits.", "CELERY_DISABLE_RATE_LIMITS"),
    _s("worker_lost_wait", "ufloat", 10.0, "Seconds to wait for a dead process's result before WorkerLostError.", "CELERYD_WORKER_LOST_WAIT"),
    _s("worker_cancel_long_running_tasks_on_connection_loss", "bool", False, "Cancel running late-ack tasks when the broker connection is lost.", "CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS"),
    _s("worker_enable_remote_control", "bool", True, "Answer remote control commands (inspect, revoke, ...).", "CELERY_ENABLE_REMOTE_CONTROL"),
    _s("worker_state_db", "str|none", None, "File keeping revoked task ids across restarts.", "CELERYD_STATE_DB"),
    _s("worker_timer_precision", "ufloat", 1.0, "Most seconds the worker's timer sleeps between checks.", "CELERYD_TIMER_PRECISION"),
    _s("worker_proc_alive_timeout", "ufloat", 4.0, "Seconds to wait for a new pool process to start.", "CELERYD_PROC_ALIVE_TIMEOUT"),
    _s("worker_shutdown_timeout", "ufloat", 30.0, "celeriac: seconds a warm shutdown waits for running tasks before cancelling them."),
    _s("worker_soft_shutdown_timeout", "ufloat", 0.0, "Seconds of soft shutdown before the cold one (0 = none).", "CELERYD_SOFT_SHUTDOWN_TIMEOUT"),
    _s("worker_enable_soft_shutdown_on_idle", "bool", False, "Do a soft shutdown even when no task is running.", "CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE"),
    _s("worker_dead_letter_queue", "str|none", "celeriac.dead_letter", "celeriac: queue for messages that cannot run, with the reason (None = drop them, logged)."),
    _s("worker_max_deliveries", "uint", 3, "celeriac: deliveries of one message before it is dead-lettered instead of redelivered."),
    _s("worker_direct", "bool", False, "Each worker also consumes its own <hostname>.dq queue.", "CELERY_WORKER_DIRECT"),
    _s("worker_deduplicate_successful_tasks", "bool", False, "Skip a redelivered late-ack task that already succeeded.", "CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS"),
    _s("worker_eta_task_limit", "uint|none", None, "Most ETA/countdown tasks one worker holds (None = no limit).", "CELERYD_ETA_TASK_LIMIT"),
    _s("worker_enable_prefetch_count_reduction", "bool", True, "Lower the prefetch count while reconnecting.", "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION"),
    _s("worker_disable_prefetch", "bool", False, "Fetch a message only when a pool slot is free.", "CELERYD_DISABLE_PREFETCH"),
    _s("worker_detect_quorum_queues", "bool", True, "Turn off global QoS when consuming from quorum queues.", "CELERYD_DETECT_QUORUM_QUEUES"),
    _s("worker_pool_putlocks", "bool", True, "Block while the pool has no free slot.", "CELERYD_POOL_PUTLOCKS"),
    _s("worker_pool_restarts", "bool", False, "Allow the pool_restart remote control command.", "CELERYD_POOL_RESTARTS"),
    _s("worker_agent", "ref|none", None, "Monitoring agent class (Celery; " + _ACCEPTED + ").", "CELERYD_AGENT"),
    _s("worker_autoscaler", "ref|none", None, "Autoscaler class (Celery's default is its own; None = celeriac's).", "CELERYD_AUTOSCALER"),
    _s("worker_consumer", "ref|none", None, "Consumer class (Celery's default is its own; None = celeriac's).", "CELERYD_CONSUMER"),
    _s("worker_timer", "ref|none", None, "Timer class (Celery; " + _ACCEPTED + ").", "CELERYD_TIMER"),
    # -- beat ------------------------------------------------------------------------------------
    _s("beat_schedule", "dict", {}, "Periodic tasks: name -> {'task', 'schedule', 'args', 'kwargs', 'options'}.", "CELERYBEAT_SCHEDULE"),
    _s("beat_scheduler", "ref|none", None, "Scheduler class or import path (None = celeriac's persistent scheduler).", "CELERYBEAT_SCHEDULER"),
    _s("beat_schedule_filename", "str", "celerybeat-schedule", "File where the default scheduler keeps last run times.", "CELERYBEAT_SCHEDULE_FILENAME"),
    _s("beat_sync_every", "uint", 0, "Tasks sent between schedule file syncs (0 = by time).", "CELERYBEAT_SYNC_EVERY"),
    _s("beat_max_loop_interval", "ufloat", 0.0, "Most seconds beat sleeps between checks (0 = the scheduler's default, 300).", "CELERYBEAT_MAX_LOOP_INTERVAL"),
    _s("beat_cron_starting_deadline", "uint|none", None, "Seconds after a missed cron time within which it still runs.", "CELERYBEAT_CRON_STARTING_DEADLINE"),
    # -- events and remote control ---------------------------------------------------------------
    _s("event_queue_expires", "ufloat", 60.0, "Seconds an unused monitor event queue lives.", "CELERY_EVENT_QUEUE_EXPIRES"),
    _s("event_queue_ttl", "ufloat", 5.0, "Seconds an event message waits in a monitor's queue.", "CELERY_EVENT_QUEUE_TTL"),
    _s("event_queue_prefix", "str", "celeryev", "Prefix of event receiver queue names.", "CELERY_EVENT_QUEUE_PREFIX"),
    _s("event_queue_exclusive", "bool", True, "Event receiver queues are exclusive.", "CELERY_EVENT_QUEUE_EXCLUSIVE"),
    _s("event_queue_durable", "bool", False, "Event receiver queues are durable.", "CELERY_EVENT_QUEUE_DURABLE"),
    _s("event_exchange", "str", "celeryev", "Exchange for events.", "CELERY_EVENT_EXCHANGE"),
    _s("event_serializer", "str", "json", "Serializer for event messages.", "CELERY_EVENT_SERIALIZER"),
    _s("control_queue_ttl", "ufloat", 300.0, "Seconds a remote control message waits in a worker's queue.", "CONTROL_QUEUE_TTL"),
    _s("control_queue_expires", "ufloat", 10.0, "Seconds an unused remote control queue lives.", "CONTROL_QUEUE_EXPIRES"),
    _s("control_queue_exclusive", "bool", False, "Remote control reply queues are exclusive.", "CONTROL_QUEUE_EXCLUSIVE"),
    _s("control_queue_durable", "bool", False, "Remote control queues are durable.", "CONTROL_QUEUE_DURABLE"),
    _s("control_exchange", "str", "celery", "Name stem of the remote control exchanges (<name>.pidbox, <name>.reply.pidbox).", "CONTROL_EXCHANGE"),
    # -- message signing -------------------------------------------------------------------------
    _s("security_key", "str|none", None, "Path of the private key that signs messages (auth serializer).", "CELERY_SECURITY_KEY"),
    _s("security_key_password", "bytes|none", None, "Password of security_key.", "CELERY_SECURITY_KEY_PASSWORD"),
    _s("security_certificate", "str|none", None, "Path of the X.509 certificate matching security_key.", "CELERY_SECURITY_CERTIFICATE"),
    _s("security_cert_store", "str|none", None, "Glob of the certificates trusted to sign messages.", "CELERY_SECURITY_CERT_STORE"),
    _s("security_digest", "str", "sha256", "Digest used to sign messages.", "CELERY_SECURITY_DIGEST"),
    # -- backend specific ------------------------------------------------------------------------
    _s("redis_backend_use_ssl", "dict|none", None, "TLS options of the Redis result backend.", "CELERY_REDIS_BACKEND_USE_SSL"),
    _s("redis_backend_health_check_interval", "uint|none", None, "Seconds between health checks of the Redis backend connection."),
    _s("redis_backend_credential_provider", "ref|none", None, "Credential provider of the Redis backend (class or import path).", "CELERY_REDIS_BACKEND_CREDENTIAL_PROVIDER"),
    _s("redis_db", "uint|none", None, "Redis database of the result backend (legacy).", "CELERY_REDIS_DB"),
    _s("redis_host", "str|none", None, "Redis host of the result backend (legacy).", "CELERY_REDIS_HOST"),
    _s("redis_port", "uint|none", None, "Redis port of the result backend (legacy).", "CELERY_REDIS_PORT"),
    _s("redis_username", "str|none", None, "Redis user of the result backend (legacy).", "CELERY_REDIS_USERNAME"),
    _s("redis_password", "str|none", None, "Redis password of the result backend (legacy).", "CELERY_REDIS_PASSWORD"),
    _s("redis_max_connections", "uint|none", None, "Most connections in the Redis backend's pool.", "CELERY_REDIS_MAX_CONNECTIONS"),
    _s("redis_socket_timeout", "ufloat|none", 120.0, "Seconds a Redis backend read/write may take.", "CELERY_REDIS_SOCKET_TIMEOUT"),
    _s("redis_socket_connect_timeout", "ufloat|none", None, "Seconds a Redis backend connect may take.", "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT"),
    _s("redis_retry_on_timeout", "bool", False, "Retry Redis backend operations that time out.", "CELERY_REDIS_RETRY_ON_TIMEOUT"),
    _s("redis_socket_keepalive", "bool", False, "TCP keepalive on Redis backend connections.", "CELERY_REDIS_SOCKET_KEEPALIVE"),
    _s("redis_client_name", "str|none", None, "CLIENT SETNAME of Redis backend connections."),
    _s("database_url", "str|none", None, "SQLAlchemy URL of the database backend (legacy; use result_backend='db+...').", "CELERY_RESULT_DBURI"),
    _s("database_engine_options", "dict", {"pool_pre_ping": True, "pool_recycle": 3600}, "Options of the database backend's engine.", "CELERY_RESULT_ENGINE_OPTIONS"),
    _s("database_engine_callback", "any", None, "Callable applied to the database backend's engine.", "DATABASE_ENGINE_CALLBACK"),
    _s("database_short_lived_sessions", "bool", False, "Open a new database session per operation.", "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS"),
    _s("database_table_schemas", "dict|none", None, "Schemas of the database backend's tables.", "DATABASE_TABLE_SCHEMAS"),
    _s("database_table_names", "dict|none", None, "Names of the database backend's tables.", "CELERY_RESULT_DB_TABLENAMES"),
    _s("database_create_tables_at_setup", "bool", True, "Create the database backend's tables at start.", "DATABASE_CREATE_TABLES_AT_SETUP"),
    _s("cache_backend", "str|none", None, "Cache (memcached) backend location (legacy).", "CELERY_CACHE_BACKEND"),
    _s("cache_backend_options", "dict", {}, "Options of the cache (memcached) backend.", "CELERY_CACHE_BACKEND_OPTIONS"),
    # -- Celery backends celeriac does not have (accepted so Celery configurations load) ---------
    _s("mongodb_backend_settings", "dict|none", None, "MongoDB backend settings (" + _ACCEPTED + ").", "CELERY_MONGODB_BACKEND_SETTINGS"),
    _s("couchbase_backend_settings", "dict|none", None, "Couchbase backend settings (" + _ACCEPTED + ").", "CELERY_COUCHBASE_BACKEND_SETTINGS"),
    _s("arangodb_backend_settings", "dict|none", None, "ArangoDB backend settings (" + _ACCEPTED + ").", "CELERY_ARANGODB_BACKEND_SETTINGS"),
    _s("cassandra_servers", "strlist|none", None, "Cassandra hosts (" + _ACCEPTED + ").", "CASSANDRA_SERVERS"),
    _s("cassandra_port", "uint|str|none", None, "Cassandra port (" + _ACCEPTED + ").", "CASSANDRA_PORT"),
    _s("cassandra_keyspace", "str|none", None, "Cassandra keyspace (" + _ACCEPTED + ").", "CASSANDRA_KEYSPACE"),
    _s("cassandra_table", "str|none", None, "Cassandra table (" + _ACCEPTED + ").", "CASSANDRA_TABLE", "CASSANDRA_COLUMN_FAMILY"),
    _s("cassandra_read_consistency", "str|none", None, "Cassandra read consistency (" + _ACCEPTED + ").", "CASSANDRA_READ_CONSISTENCY"),
    _s("cassandra_write_consistency", "str|none", None, "Cassandra write consistency (" + _ACCEPTED + ").", "CASSANDRA_WRITE_CONSISTENCY"),
    _s("cassandra_entry_ttl", "ufloat|none", None, "Cassandra entry TTL in seconds (" + _ACCEPTED + ").", "CASSANDRA_ENTRY_TTL"),
    _s("cassandra_bundle_path", "str|none", None, "Cassandra secure connect bundle (" + _ACCEPTED + ").", "CASSANDRA_BUNDLE_PATH"),
    _s("cassandra_secure_bundle_path", "str|none", None, "Cassandra secure connect bundle, documented name (" + _ACCEPTED + ")."),
    _s("cassandra_auth_provider", "str|none", None, "Cassandra auth provider class name (" + _ACCEPTED + ").", "CASSANDRA_AUTH_PROVIDER"),
    _s("cassandra_auth_kwargs", "dict|none", None, "Cassandra auth provider arguments (" + _ACCEPTED + ").", "CASSANDRA_AUTH_KWARGS"),
    _s("cassandra_options", "dict", {}, "Cassandra cluster options (" + _ACCEPTED + ").", "CASSANDRA_OPTIONS"),
    _s("s3_access_key_id", "str|none", None, "S3 access key id (" + _ACCEPTED + ").", "S3_ACCESS_KEY_ID"),
    _s("s3_secret_access_key", "str|none", None, "S3 secret access key (" + _ACCEPTED + ").", "S3_SECRET_ACCESS_KEY"),
    _s("s3_bucket", "str|none", None, "S3 bucket (" + _ACCEPTED + ").", "S3_BUCKET"),
    _s("s3_base_path", "str|none", None, "S3 key prefix (" + _ACCEPTED + ").", "S3_BASE_PATH"),
    _s("s3_endpoint_url", "str|none", None, "S3 endpoint URL (" + _ACCEPTED + ").", "S3_ENDPOINT_URL"),
    _s("s3_region", "str|none", None, "S3 region (" + _ACCEPTED + ").", "S3_REGION"),
    _s("azureblockblob_container_name", "str", "celery", "Azure Block Blob container (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_CONTAINER_NAME"),
    _s("azureblockblob_base_path", "str", "", "Azure Block Blob key prefix (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_BASE_PATH"),
    _s("azureblockblob_retry_initial_backoff_sec", "uint", 2, "Azure Block Blob first retry backoff (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_RETRY_INITIAL_BACKOFF_SEC"),
    _s("azureblockblob_retry_increment_base", "uint", 2, "Azure Block Blob retry backoff base (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_RETRY_INCREMENT_BASE"),
    _s("azureblockblob_retry_max_attempts", "uint", 3, "Azure Block Blob retry attempts (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_RETRY_MAX_ATTEMPTS"),
    _s("azureblockblob_connection_timeout", "uint", 20, "Azure Block Blob connect timeout (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_CONNECTION_TIMEOUT"),
    _s("azureblockblob_read_timeout", "uint", 120, "Azure Block Blob read timeout (" + _ACCEPTED + ").", "AZUREBLOCKBLOB_READ_TIMEOUT"),
    _s("gcs_bucket", "str|none", None, "Google Cloud Storage bucket (" + _ACCEPTED + ").", "GCS_BUCKET"),
    _s("gcs_project", "str|none", None, "Google Cloud Storage project (" + _ACCEPTED + ").", "GCS_PROJECT"),
    _s("gcs_base_path", "str", "", "Google Cloud Storage key prefix (" + _ACCEPTED + ").", "GCS_BASE_PATH"),
    _s("gcs_ttl", "ufloat", 0.0, "Google Cloud Storage object TTL in seconds (" + _ACCEPTED + ").", "GCS_TTL"),
    _s("cosmosdbsql_database_name", "str", "celerydb", "Cosmos DB database (" + _ACCEPTED + ").", "COSMOSDBSQL_DATABASE_NAME"),
    _s("cosmosdbsql_collection_name", "str", "celerycol", "Cosmos DB collection (" + _ACCEPTED + ").", "COSMOSDBSQL_COLLECTION_NAME"),
    _s("cosmosdbsql_consistency_level", "str", "Session", "Cosmos DB consistency level (" + _ACCEPTED + ").", "COSMOSDBSQL_CONSISTENCY_LEVEL"),
    _s("cosmosdbsql_max_retry_attempts", "uint", 9, "Cosmos DB retry attempts (" + _ACCEPTED + ").", "COSMOSDBSQL_MAX_RETRY_ATTEMPTS"),
    _s("cosmosdbsql_max_retry_wait_time", "uint", 30, "Cosmos DB most seconds of retrying (" + _ACCEPTED + ").", "COSMOSDBSQL_MAX_RETRY_WAIT_TIME"),
    _s("elasticsearch_retry_on_timeout", "bool|none", None, "Elasticsearch retry on timeout (" + _ACCEPTED + ").", "CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT"),
    _s("elasticsearch_max_retries", "uint|none", None, "Elasticsearch retries (" + _ACCEPTED + ").", "CELERY_ELASTICSEARCH_MAX_RETRIES"),
    _s("elasticsearch_timeout", "ufloat|none", None, "Elasticsearch timeout in seconds (" + _ACCEPTED + ").", "CELERY_ELASTICSEARCH_TIMEOUT"),
    _s("elasticsearch_save_meta_as_text", "bool", True, "Elasticsearch stores meta as text (" + _ACCEPTED + ").", "CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT"),
)
# fmt: on

SETTINGS: Final[Mapping[str, Setting]] = MappingProxyType({s.name: s for s in _TABLE})
"""Every setting, by its (new, lowercase) name."""

OLD_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {old: s.name for s in _TABLE for old in s.old}
)
"""Old uppercase Celery names -> new names, e.g. ``CELERY_ALWAYS_EAGER`` -> ``task_always_eager``."""

DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType({s.name: s.default for s in _TABLE})
"""Every setting's default. Mutable defaults are copied into each ``Config``."""

_MUTABLE_DEFAULTS: Final = frozenset(
    s.name for s in _TABLE if isinstance(s.default, dict | list | set)
)

_KIND_WORDS: Final[Mapping[str, str]] = {
    "none": "None",
    "bool": "bool",
    "int": "int",
    "uint": "int >= 0",
    "float": "float",
    "ufloat": "float >= 0",
    "seconds": "seconds (number >= 0) or timedelta",
    "str": "str",
    "bytes": "bytes",
    "strlist": "list of str",
    "list": "list",
    "dict": "dict",
    "tz": "time zone name or tzinfo",
    "ref": "import path (str) or object",
    "any": "anything",
}

# A value of one of these types is data, never an object reference.
_DATA_TYPES: Final = (bool, int, float, bytes, list, tuple, set, frozenset, dict)


class UnknownSettingError(ConfigurationError, KeyError):
    """A setting name celeriac does not know (a ``ConfigurationError`` and a ``KeyError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown setting"


# ---- validation -------------------------------------------------------------------------------


def validate(setting: Setting, value: Any, *, given_as: str | None = None) -> Any:
    """Return ``value`` (coerced where allowed) if ``setting`` accepts it, else raise.

    The one place where values are checked. ``given_as`` is the name the caller wrote (an old
    name, a namespaced key) and appears in the error message.
    """
    hint = ""
    for kind in setting.kinds:
        if kind == "any":
            return value
        if value is None:
            if kind == "none":
                return None
            continue
        if isinstance(value, bool):  # never a number
            if kind == "bool":
                return value
            continue
        if kind in ("int", "uint") and isinstance(value, int):
            if kind == "uint" and value < 0:
                hint = "; it must not be negative"
                continue
            return value
        if kind in ("float", "ufloat", "seconds") and isinstance(value, timedelta):
            if kind != "seconds":
                continue
            if value < timedelta(0):
                hint = "; it must not be negative"
                continue
            return value
        if kind in ("float", "ufloat", "seconds") and isinstance(value, int | float):
            if value < 0 and kind != "float":
                hint = "; it must not be negative"
                continue
            return value if kind == "seconds" else float(value)
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "bytes" and isinstance(value, bytes | str):
            return value.encode() if isinstance(value, str) else value
        if kind in ("strlist", "list") and isinstance(value, list | tuple | set | frozenset):
            if kind == "strlist" and not all(isinstance(item, str) for item in value):
                bad = next(item for item in value if not isinstance(item, str))
                hint = f"; every item must be a str, not {type(bad).__name__} ({bad!r})"
                continue
            if isinstance(value, set | frozenset) and kind == "list":
                continue
            return value if isinstance(value, list) else list(value)
        if kind == "strlist" and isinstance(value, str):
            hint = f"; give a list such as [{value!r}], not a bare string"
            continue
        if kind == "dict" and isinstance(value, Mapping):
            return value if isinstance(value, dict) else dict(value)
        if kind == "tz" and isinstance(value, str | tzinfo):
            return value
        if kind == "ref" and (isinstance(value, str) or not isinstance(value, _DATA_TYPES)):
            return value
        if kind == "bool" and isinstance(value, str | int):
            hint = "; use True or False"
    where = f"setting {setting.name!r}"
    if given_as and given_as != setting.name:
        where += f" (given as {given_as!r})"
    shown = _censor(setting.name, value)
    text = repr(shown) if len(repr(shown)) <= 80 else repr(shown)[:77] + "..."
    raise ConfigurationError(
        f"{where} expects {setting.expected}, got {type(value).__name__} {text}{hint}"
    )


_TRUE: Final = frozenset({"1", "true", "yes", "on", "y"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n"})


def _parse(setting: Setting, text: str) -> Any:
    """Read ``text`` as a value of ``setting`` (for the command line and environment)."""
    raw = text.strip()
    for kind in setting.kinds:
        value: Any
        if kind == "none":
            if raw.lower() in ("", "none", "null"):
                return None
            continue
        if kind == "bool":
            if raw.lower() not in _TRUE | _FALSE:
                continue
            value = raw.lower() in _TRUE
        elif kind in ("int", "uint", "float", "ufloat", "seconds"):
            try:
                value = int(raw) if kind in ("int", "uint") else float(raw)
            except ValueError:
                continue
        elif kind in ("str", "tz", "ref", "bytes"):
            value = raw
        elif kind == "strlist" and not raw.startswith("["):
            value = [part.strip() for part in raw.split(",") if part.strip()]
        else:  # strlist (as JSON), list, dict, any
            try:
                value = json.loads(raw)
            except ValueError:
                if kind != "any":
                    continue
                value = raw
        try:
            return validate(setting, value)
        except ConfigurationError:
            continue
    raise ConfigurationError(
        f"setting {setting.name!r} expects {setting.expected}, cannot read {text!r}"
    )


def as_seconds(value: float | timedelta | None) -> float | None:
    """A duration setting (``result_expires``) as float seconds, or None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


# ---- names ------------------------------------------------------------------------------------

_SUGGESTABLE: Final[Mapping[str, str]] = {
    **{name: name for name in SETTINGS},
    **{old.lower(): new for old, new in OLD_NAMES.items()},
}


def _suggest(name: str) -> str | None:
    """The setting the user most likely meant by ``name``, if any looks close."""
    low = name.lower()
    for candidate in (low, low.removeprefix("celery_")):
        if candidate in _SUGGESTABLE:
            return _SUGGESTABLE[candidate]
    match = difflib.get_close_matches(low, list(_SUGGESTABLE), n=1, cutoff=0.75)
    return _SUGGESTABLE[match[0]] if match else None


def _unknown_message(name: str, *, prefix: str = "") -> str:
    suggestion = _suggest(name[len(prefix) :] if prefix else name)
    text = f"unknown setting {name!r}"
    if suggestion is not None:
        shown = prefix + suggestion.upper() if prefix else suggestion
        return f"{text}; did you mean {shown!r}?"
    return f"{text} (celeriac.config.SETTINGS lists every setting)"


def _resolve(name: str) -> Setting:
    """The setting called ``name`` (new or old-style), or raise with a suggestion."""
    setting = SETTINGS.get(name)
    if setting is None:
        new = OLD_NAMES.get(name)
        if new is None:
            raise UnknownSettingError(_unknown_message(name))
        setting = SETTINGS[new]
    return setting


def find_setting(name: str) -> Setting:
    """Look a setting up by its new or old name, in any letter case (for the CLI).

    Raises ``UnknownSettingError`` (a ``ConfigurationError``) with a suggestion.
    """
    for candidate in (name, name.lower(), name.upper()):
        if candidate in SETTINGS:
            return SETTINGS[candidate]
        if candidate in OLD_NAMES:
            return SETTINGS[OLD_NAMES[candidate]]
    raise UnknownSettingError(_unknown_message(name))


# ---- credentials in output ---------------------------------------------------------------------

# Up to the last "@" of one URL, so that a raw "/" or "@" in a password is still masked.
_URL: Final = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)(?P<userinfo>[^\s;,]*)@")
_QUERY_SECRET: Final = re.compile(r"(?i)\b(password|passwd|secret|token|access_key)=([^&;\s]*)")
_SENSITIVE_NAME: Final = re.compile(
    r"(?i)pass|secret|token|credential|api_?key|access_key|auth_kwargs"
)
_MASK: Final = "****"


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}{colon and ':' + _MASK}@"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``****``: ``redis://:****@host:6379/0``.

    Works on text holding several URLs (``"amqp://a:b@h1;amqp://a:b@h2"``) and masks
    ``password=`` / ``token=`` style query parameters too.
    """
    return _QUERY_SECRET.sub(rf"\1={_MASK}", _URL.sub(_mask_userinfo, url))


def _censor(name: str, value: Any) -> Any:
    """A copy of ``value`` fit for logs and reprs: URLs redacted, secret-named values masked."""
    if value is None:
        return None
    if _SENSITIVE_NAME.search(name):
        return _MASK
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: _censor(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_censor(name, item) for item in value)
    return value


# ---- loading from objects ----------------------------------------------------------------------


class _NotFound(ConfigurationError):
    """The configuration module or attribute does not exist (``silent`` ignores this)."""


def _import(modname: str) -> ModuleType:
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and (modname == exc.name or modname.startswith(exc.name + ".")):
            raise _NotFound(f"no module named {exc.name!r}") from exc
        raise ConfigurationError(f"importing {modname!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"importing {modname!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _getattr_path(obj: Any, dotted: str, modname: str) -> Any:
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _NotFound(f"{modname!r} has no attribute {dotted!r}") from None
    return obj


def load_object(path: str, *, silent: bool = False) -> Any:
    """Import ``"module"``, ``"module:attr"`` or ``"module.attr"`` and return it.

    A missing module or attribute raises ``ConfigurationError`` with the reason, or returns
    None when ``silent``. A module that exists but fails while importing always raises.
    """
    modname, colon, attr = path.partition(":")
    try:
        if colon:
            return _getattr_path(_import(modname), attr, modname)
        try:
            return _import(path)
        except _NotFound:
            if "." not in path:
                raise
            modname, _, attr = path.rpartition(".")
            return _getattr_path(_import(modname), attr, modname)
    except _NotFound as exc:
        if silent:
            return None
        raise ConfigurationError(f"cannot load configuration {path!r}: {exc}") from None


def _is_code(value: Any) -> bool:
    """Modules, classes, functions and ``__future__`` features: names a config file imports."""
    return (
        inspect.ismodule(value)
        or inspect.isclass(value)
        or inspect.isroutine(value)
        or type(value).__module__ == "__future__"
    )


def _public_items(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, ModuleType):
        items = vars(obj).items()
    else:
        items = ((name, getattr(obj, name, None)) for name in dir(obj))
    for name, value in items:
        if isinstance(name, str) and not name.startswith("_"):
            yield name, value


def _settings_from_object(obj: Any, namespace: str | None) -> list[tuple[str, Any]]:
    """``(name as written, value)`` pairs of ``obj`` that are settings; raise on unknown ones."""
    found: list[tuple[str, Any]] = []
    if namespace:
        prefix = namespace.rstrip("_").upper() + "_"
        for name, value in _public_items(obj):
            if not name.upper().startswith(prefix):
                continue
            short = name[len(prefix) :].lower()
            if short in SETTINGS or name in OLD_NAMES:  # CELERY_BROKER_URL, CELERY_ALWAYS_EAGER
                found.append((short if short in SETTINGS else name, value))
            elif not _is_code(value):
                raise UnknownSettingError(_unknown_message(name, prefix=name[: len(prefix)]))
        return found
    for name, value in _public_items(obj):
        if name in SETTINGS or name in OLD_NAMES:
            found.append((name, value))
        elif name == name.lower() and not _is_code(value):
            raise UnknownSettingError(_unknown_message(name))
    return found


# ---- the settings object -----------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _loads_into(Generic[_P, _R]):
    """A method that loads into the instance it is called on, or into a new one on the class.

    ``Config.from_object(x)`` returns a new ``Config``; ``app.conf.from_object(x)`` loads ``x``
    into ``app.conf`` and returns it.
    """

    def __init__(self, func: Callable[Concatenate[Config, _P], _R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, obj: Config | None, cls: type[Config]) -> Callable[_P, _R]:
        target = obj if obj is not None else cls()
        func = self.func

        def bound(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            return func(target, *args, **kwargs)

        return bound


class Config(Mapping[str, Any]):
    """Every setting with its current value; writes are validated, reads are plain lookups.

    Values live in the instance ``__dict__`` (only settings do), so ``conf.broker_url`` is an
    ordinary attribute read. Writing through an attribute, an item, ``update`` or
    ``setdefault`` validates the name and the value. Old-style names (``BROKER_URL``,
    ``CELERY_ALWAYS_EAGER``) are accepted everywhere and mapped to the new ones; iteration
    yields only new names. ``del conf.name`` puts a setting back to its default.
    """

    __slots__ = ("__dict__", "_changes")
    _changes: dict[str, Any]

    def __init__(self, mapping: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        object.__setattr__(self, "_changes", {})
        values = self.__dict__
        values.update(DEFAULTS)
        for name in _MUTABLE_DEFAULTS:
            values[name] = copy.deepcopy(values[name])
        if mapping or kwargs:
            self.update(mapping, **kwargs)

    # -- reading (no validation) --
    def __getattr__(self, name: str) -> Any:  # only called when name is not a setting
        new = OLD_NAMES.get(name)
        if new is not None:
            return self.__dict__[new]
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(_unknown_message(name))

    def __getitem__(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            new = OLD_NAMES.get(name) if isinstance(name, str) else None
            if new is None:
                raise UnknownSettingError(_unknown_message(str(name))) from None
            return self.__dict__[new]

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__ or name in OLD_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    @property
    def changes(self) -> dict[str, Any]:
        """The settings set explicitly (by new name), with their values."""
        return dict(self._changes)

    # -- writing (always validated) --
    def __setattr__(self, name: str, value: Any) -> None:
        self._store([(name, value)])

    def __setitem__(self, name: str, value: Any) -> None:
        self._store([(name, value)])

    def __delattr__(self, name: str) -> None:
        self.reset(name)

    def __delitem__(self, name: str) -> None:
        self.reset(name)

    def update(
        self,
        mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        """Set several settings at once; if any is wrong, none is set."""
        items: list[tuple[str, Any]] = []
        if mapping is not None:
            items.extend(mapping.items() if isinstance(mapping, Mapping) else mapping)
        items.extend(kwargs.items())
        self._store(items)

    def setdefault(self, name: str, default: Any = None) -> Any:
        """Set ``name`` to ``default`` unless it was set explicitly; return its value."""
        setting = _resolve(name)
        if setting.name not in self._changes:
            self._store([(name, default)])
        return self.__dict__[setting.name]

    def reset(self, name: str) -> None:
        """Put ``name`` back to its default."""
        setting = _resolve(name)
        value = setting.default
        self.__dict__[setting.name] = (
            copy.deepcopy(value) if setting.name in _MUTABLE_DEFAULTS else value
        )
        self._changes.pop(setting.name, None)

    def _store(self, items: Iterable[tuple[str, Any]]) -> None:
        staged: dict[str, Any] = {}
        given: dict[str, str] = {}
        for name, value in items:
            setting = _resolve(name)
            checked = validate(setting, value, given_as=name)
            key = setting.name
            if key in staged and given[key] != name and staged[key] != checked:
                raise ConfigurationError(
                    f"setting {key!r} given twice with different values, "
                    f"as {given[key]!r} and as {name!r}"
                )
            staged[key] = checked
            given[key] = name
        self.__dict__.update(staged)
        self._changes.update(staged)

    # -- loading --
    @_loads_into
    def from_object(
        self, obj: Any, namespace: str | None = None, *, silent: bool = False
    ) -> Config:
        """Load settings from an object, a class, a module, a dict or an import path.

        ``obj`` may be ``"module"``, ``"module:attr"`` or ``"module.attr"`` (imported here; a
        missing one raises ``ConfigurationError`` unless ``silent``). Without ``namespace``,
        public lowercase names must be settings (modules, classes and functions are skipped),
        old uppercase Celery names are mapped, other uppercase names are ignored. With
        ``namespace="CELERY"`` only ``CELERY_*`` names are read, as ``CELERY_BROKER_URL`` ->
        ``broker_url``; an unknown one is an error.

        Called on the class it returns a new ``Config``; on an instance it loads into it.
        """
        if isinstance(obj, str):
            obj = load_object(obj, silent=silent)
            if obj is None:
                return self
        self._store(_settings_from_object(obj, namespace))
        return self

    @_loads_into
    def from_envvar(
        self, variable: str, namespace: str | None = None, *, silent: bool = False
    ) -> Config:
        """``from_object`` of the import path held by the environment variable ``variable``."""
        path = os.environ.get(variable)
        if not path:
            if silent:
                return self
            raise ConfigurationError(
                f"environment variable {variable!r} is not set; "
                "set it to the import path of a configuration module"
            )
        return self.from_object(path, namespace, silent=silent)

    # -- copies and output --
    def copy(self) -> Config:
        """A copy whose dict and list values can change without touching this one."""
        new = Config()
        for name, value in self.__dict__.items():
            new.__dict__[name] = copy.copy(value) if isinstance(value, dict | list) else value
        new._changes.update({name: new.__dict__[name] for name in self._changes})
        return new

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], Config], tuple[dict[str, Any]]]:
        return (_rebuild, (dict(self._changes),))

    def humanize(self, *, with_defaults: bool = False) -> str:
        """One ``name = value`` line per setting (changed ones only unless ``with_defaults``).

        Credentials are hidden.
        """
        names = self.__dict__ if with_defaults else self._changes
        return "\n".join(
            f"{name} = {_censor(name, self.__dict__[name])!r}" for name in sorted(names)
        )

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{name}={_censor(name, value)!r}" for name, value in self._changes.items()
        )
        return f"{type(self).__name__}({inner})"


def _rebuild(changes: dict[str, Any]) -> Config:
    return Config(changes)


_CLASHES = set(SETTINGS) & set(dir(Config))
assert not _CLASHES, f"settings shadow Config attributes: {_CLASHES}"
assert len(OLD_NAMES) == sum(len(s.old) for s in _TABLE), "an old name maps to two settings"
