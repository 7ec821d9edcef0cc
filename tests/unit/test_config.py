"""celeriac.config: the settings table, Config reads/writes, loading from objects."""

from __future__ import annotations

import pickle
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest

from celeriac.config import (
    DEFAULTS,
    OLD_NAMES,
    SETTINGS,
    Config,
    UnknownSettingError,
    as_seconds,
    find_setting,
    load_object,
    redact_url,
    validate,
)
from celeriac.errors import ConfigurationError

_REQUIRED_TEXT = """
broker_url broker_transport_options broker_connection_retry broker_connection_retry_on_startup
broker_connection_max_retries broker_connection_timeout broker_heartbeat broker_pool_limit
result_backend result_serializer result_expires result_extended result_compression
result_backend_transport_options result_accept_content result_persistent task_serializer
task_compression accept_content task_acks_late task_acks_on_failure_or_timeout
task_reject_on_worker_lost task_default_queue task_default_exchange task_default_exchange_type
task_default_routing_key task_default_priority task_default_rate_limit task_queues task_routes
task_create_missing_queues task_track_started task_time_limit task_soft_time_limit
task_always_eager task_eager_propagates task_store_eager_result task_ignore_result
task_store_errors_even_if_ignored task_publish_retry task_publish_retry_policy task_annotations
task_send_sent_event task_protocol task_inherit_parent_priority task_queue_max_priority
worker_concurrency worker_prefetch_multiplier worker_pool worker_max_tasks_per_child
worker_max_memory_per_child worker_send_task_events worker_hijack_root_logger worker_log_format
worker_task_log_format worker_disable_rate_limits worker_lost_wait
worker_cancel_long_running_tasks_on_connection_loss worker_enable_remote_control worker_state_db
worker_timer_precision worker_proc_alive_timeout worker_shutdown_timeout beat_schedule
beat_scheduler beat_schedule_filename beat_max_loop_interval timezone enable_utc imports include
result_chord_join_timeout security_key security_certificate security_cert_store security_digest
event_queue_expires event_queue_ttl event_serializer control_queue_ttl control_queue_expires
worker_dead_letter_queue worker_max_deliveries
"""
REQUIRED = _REQUIRED_TEXT.split()


# ---- the table ---------------------------------------------------------------------------------


def test_table_has_every_required_setting() -> None:
    missing = [name for name in REQUIRED if name not in SETTINGS]
    assert missing == []


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_default_passes_its_own_validation(name: str) -> None:
    setting = SETTINGS[name]
    assert validate(setting, setting.default) == setting.default
    assert setting.doc and "\n" not in setting.doc


def test_names_are_lowercase_and_old_names_uppercase() -> None:
    assert all(name == name.lower() for name in SETTINGS)
    assert all(old == old.upper() for old in OLD_NAMES)
    assert all(new in SETTINGS for new in OLD_NAMES.values())


def test_defaults_match_celery() -> None:
    conf = Config()
    assert conf.accept_content == ["json"]
    assert conf.task_default_queue == "celery"
    assert conf.task_protocol == 2
    assert conf.worker_concurrency is None
    assert conf.worker_prefetch_multiplier == 4
    assert conf.worker_pool == "prefork"
    assert conf.result_expires == timedelta(days=1)
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_max_retries == 100
    assert conf.task_publish_retry_policy["max_retries"] == 3
    assert conf.enable_utc is True
    assert conf.security_digest == "sha256"
    assert conf.worker_shutdown_timeout == 30.0
    assert conf.worker_dead_letter_queue == "celeriac.dead_letter"
    assert conf.worker_max_deliveries == 3
    assert conf.changes == {}
    assert dict(conf) == dict(DEFAULTS)


def test_mutable_defaults_are_not_shared() -> None:
    one, two = Config(), Config()
    one.accept_content.append("msgpack")
    one.beat_schedule["tick"] = {"task": "t", "schedule": 1.0}
    assert two.accept_content == ["json"]
    assert two.beat_schedule == {}
    assert DEFAULTS["accept_content"] == ["json"]


# ---- access ------------------------------------------------------------------------------------


def test_attribute_and_item_access_see_the_same_value() -> None:
    conf = Config()
    conf.broker_url = "memory://"
    assert conf["broker_url"] == "memory://"
    conf["task_default_queue"] = "high"
    assert conf.task_default_queue == "high"
    assert "broker_url" in conf
    assert "no_such_setting" not in conf
    assert conf.get("broker_url") == "memory://"
    assert conf.get("no_such_setting", "fallback") == "fallback"
    assert set(conf.keys()) == set(SETTINGS)
    assert ("task_default_queue", "high") in conf.items()
    assert len(conf) == len(SETTINGS)


def test_update_and_changes() -> None:
    conf = Config()
    conf.update({"task_acks_late": True}, worker_concurrency=8)
    conf.update([("task_track_started", True)])
    assert conf.task_acks_late is True
    assert conf.worker_concurrency == 8
    assert conf.changes == {
        "task_acks_late": True,
        "worker_concurrency": 8,
        "task_track_started": True,
    }


def test_update_is_all_or_nothing() -> None:
    conf = Config()
    with pytest.raises(ConfigurationError):
        conf.update(task_acks_late=True, worker_concurrency="many")
    assert conf.task_acks_late is False
    assert conf.changes == {}


def test_setdefault_only_fills_settings_not_set_explicitly() -> None:
    conf = Config(broker_url="redis://one")
    assert conf.setdefault("broker_url", "redis://two") == "redis://one"
    assert conf.setdefault("result_backend", "redis://three") == "redis://three"
    assert conf.result_backend == "redis://three"
    with pytest.raises(ConfigurationError):
        conf.setdefault("task_serializer", 5)  # validated too (not set explicitly yet)


def test_delete_puts_the_default_back() -> None:
    conf = Config(task_default_queue="high", accept_content=["json", "msgpack"])
    del conf.task_default_queue
    del conf["accept_content"]
    assert conf.task_default_queue == "celery"
    assert conf.accept_content == ["json"]
    assert conf.changes == {}


def test_config_from_constructor_and_pickle_roundtrip() -> None:
    conf = Config({"broker_url": "memory://"}, task_always_eager=True)
    clone = pickle.loads(pickle.dumps(conf))
    assert clone.changes == conf.changes
    assert clone.task_always_eager is True
    copied = conf.copy()
    copied.task_routes = {"a.*": {"queue": "a"}}
    assert conf.task_routes is None
    assert copied.broker_url == "memory://"


# ---- unknown names -----------------------------------------------------------------------------


def test_unknown_name_suggests_the_close_one() -> None:
    conf = Config()
    with pytest.raises(
        ConfigurationError, match=r"unknown setting 'borker_url'; did you mean 'broker_url'\?"
    ):
        conf.borker_url = "redis://"
    with pytest.raises(ConfigurationError, match=r"did you mean 'task_always_eager'\?"):
        conf["task_always_eagr"] = True
    with pytest.raises(ConfigurationError, match=r"did you mean 'worker_concurrency'\?"):
        conf.update(CELERYD_CONCURENCY=4)  # close to an old name: the new name is suggested
    with pytest.raises(ConfigurationError, match=r"did you mean 'task_always_eager'\?"):
        conf.update(TASK_ALWAYS_EAGER=True)  # wrong case
    assert conf.changes == {}


def test_unknown_name_without_close_match_says_so() -> None:
    with pytest.raises(UnknownSettingError, match=r"unknown setting 'xyzzy' .*SETTINGS"):
        Config(xyzzy=1)


def test_reading_unknown_names() -> None:
    conf = Config()
    with pytest.raises(AttributeError, match="did you mean 'broker_url'"):
        conf.borker_url  # noqa: B018
    with pytest.raises(KeyError):
        conf["borker_url"]
    with pytest.raises(ConfigurationError):
        conf["borker_url"]
    assert getattr(conf, "borker_url", "absent") == "absent"


def test_find_setting() -> None:
    assert find_setting("broker_url").name == "broker_url"
    assert find_setting("CELERYD_PREFETCH_MULTIPLIER").name == "worker_prefetch_multiplier"
    assert find_setting("TASK_ALWAYS_EAGER").name == "task_always_eager"
    with pytest.raises(ConfigurationError, match="did you mean 'result_backend'"):
        find_setting("result_backnd")


# ---- types -------------------------------------------------------------------------------------


def test_wrong_type_message_names_setting_expected_and_given_type() -> None:
    conf = Config()
    with pytest.raises(ConfigurationError) as info:
        conf.task_time_limit = "300"
    message = str(info.value)
    assert "'task_time_limit'" in message
    assert "float >= 0 or None" in message
    assert "got str '300'" in message


def test_bool_is_not_a_number_and_number_is_not_a_bool() -> None:
    conf = Config()
    with pytest.raises(ConfigurationError, match="expects int >= 0, got bool True"):
        conf.worker_prefetch_multiplier = True
    with pytest.raises(ConfigurationError, match="use True or False"):
        conf.task_acks_late = 1
    with pytest.raises(ConfigurationError, match="use True or False"):
        conf.task_acks_late = "yes"


def test_accepted_coercions() -> None:
    conf = Config()
    conf.task_time_limit = 300
    assert conf.task_time_limit == 300.0 and isinstance(conf.task_time_limit, float)
    conf.result_expires = 3600
    assert conf.result_expires == 3600
    conf.result_expires = timedelta(hours=2)
    assert as_seconds(conf.result_expires) == 7200.0
    conf.accept_content = ("json", "msgpack")
    assert conf.accept_content == ["json", "msgpack"]
    conf.imports = {"proj.tasks"}
    assert conf.imports == ["proj.tasks"]
    conf.security_key_password = "pw"
    assert conf.security_key_password == b"pw"
    conf.broker_url = ["redis://a", "redis://b"]
    assert conf.broker_url == ["redis://a", "redis://b"]


def test_strict_refusals() -> None:
    conf = Config()
    with pytest.raises(ConfigurationError, match=r"give a list such as \['json'\]"):
        conf.accept_content = "json"
    with pytest.raises(ConfigurationError, match="every item must be a str"):
        conf.accept_content = ["json", 1]
    with pytest.raises(ConfigurationError, match="must not be negative"):
        conf.worker_concurrency = -2
    with pytest.raises(ConfigurationError, match="timedelta"):
        conf.result_expires = "1d"
    with pytest.raises(ConfigurationError):
        conf.task_time_limit = timedelta(seconds=5)  # Celery takes seconds here, not timedelta
    with pytest.raises(ConfigurationError, match="expects dict"):
        conf.broker_transport_options = [("visibility_timeout", 10)]
    with pytest.raises(ConfigurationError, match=r"expects int >= 0 or None, got float 2\.0"):
        conf.worker_concurrency = 2.0


def test_none_where_celery_allows_it_and_not_elsewhere() -> None:
    conf = Config(worker_concurrency=4, task_time_limit=10, result_expires=60)
    conf.update(
        worker_concurrency=None, task_time_limit=None, result_expires=None, result_backend=None
    )
    assert conf.worker_concurrency is None
    assert conf.task_time_limit is None
    assert conf.result_expires is None
    with pytest.raises(
        ConfigurationError, match="'task_serializer' expects str, got NoneType None"
    ):
        conf.task_serializer = None
    with pytest.raises(ConfigurationError, match="'task_acks_late' expects bool"):
        conf.task_acks_late = None


def test_objects_allowed_where_celery_takes_a_class_or_callable() -> None:
    class MyPool:
        pass

    def router(name: str, args: object, kwargs: object, options: object) -> dict[str, str]:
        return {"queue": "x"}

    conf = Config(worker_pool=MyPool, task_routes=router, beat_scheduler="proj.beat:Sched")
    assert conf.worker_pool is MyPool
    assert conf.task_routes is router
    with pytest.raises(ConfigurationError, match="'worker_pool' expects import path"):
        conf.worker_pool = 4


def test_parse_strings_for_the_command_line() -> None:
    assert find_setting("task_always_eager").parse("true") is True
    assert find_setting("worker_concurrency").parse("8") == 8
    assert find_setting("worker_concurrency").parse("none") is None
    assert find_setting("accept_content").parse("json, msgpack") == ["json", "msgpack"]
    assert find_setting("broker_transport_options").parse('{"visibility_timeout": 60}') == {
        "visibility_timeout": 60
    }
    with pytest.raises(ConfigurationError, match="cannot read 'lots'"):
        find_setting("worker_concurrency").parse("lots")


# ---- old-style names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("CELERY_ALWAYS_EAGER", "task_always_eager"),
        ("BROKER_URL", "broker_url"),
        ("CELERY_RESULT_BACKEND", "result_backend"),
        ("CELERYD_CONCURRENCY", "worker_concurrency"),
        ("CELERYD_PREFETCH_MULTIPLIER", "worker_prefetch_multiplier"),
        ("CELERY_TASK_RESULT_EXPIRES", "result_expires"),
        ("CELERYD_TASK_TIME_LIMIT", "task_time_limit"),
        ("CELERY_SEND_EVENTS", "worker_send_task_events"),
        ("CELERYBEAT_SCHEDULE", "beat_schedule"),
        ("CELERY_ACCEPT_CONTENT", "accept_content"),
    ],
)
def test_old_names_map_to_new_ones(old: str, new: str) -> None:
    assert OLD_NAMES[old] == new


def test_old_names_write_and_read_under_the_new_name() -> None:
    conf = Config()
    conf.CELERY_ALWAYS_EAGER = True
    conf["CELERYD_CONCURRENCY"] = 3
    conf.update(BROKER_URL="memory://")
    assert conf.task_always_eager is True
    assert conf.worker_concurrency == 3
    assert conf.broker_url == "memory://"
    assert conf.CELERYD_CONCURRENCY == 3
    assert conf["CELERY_ALWAYS_EAGER"] is True
    assert "BROKER_URL" in conf
    assert set(conf.changes) == {"task_always_eager", "worker_concurrency", "broker_url"}
    assert "CELERY_ALWAYS_EAGER" not in list(conf)


def test_old_name_errors_say_what_was_written() -> None:
    with pytest.raises(
        ConfigurationError, match="'worker_concurrency' \\(given as 'CELERYD_CONCURRENCY'\\)"
    ):
        Config(CELERYD_CONCURRENCY="4")


def test_old_and_new_name_with_different_values_conflict() -> None:
    with pytest.raises(ConfigurationError, match="given twice"):
        Config({"BROKER_URL": "redis://a", "broker_url": "redis://b"})
    assert Config({"BROKER_URL": "redis://a", "broker_url": "redis://a"}).broker_url == "redis://a"


# ---- loading from objects ----------------------------------------------------------------------


@pytest.fixture
def module_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], str]]:
    """Write a module into tmp_path, put tmp_path on sys.path, return its unique name."""
    created: list[str] = []

    def write(source: str) -> str:
        name = f"celeriac_test_conf_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in created:
        sys.modules.pop(name, None)


def test_from_object_class() -> None:
    class Settings:
        broker_url = "memory://"
        task_acks_late = True
        CELERYD_PREFETCH_MULTIPLIER = 1
        DEBUG = True  # foreign uppercase: ignored
        _private = "ignored"

        def helper(self) -> None:  # methods are not settings
            pass

    conf = Config.from_object(Settings)
    assert conf.changes == {
        "broker_url": "memory://",
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
    }


def test_from_object_unknown_lowercase_is_an_error() -> None:
    class Settings:
        broker_url = "memory://"
        task_acks_lat = True

    with pytest.raises(UnknownSettingError, match="did you mean 'task_acks_late'"):
        Config.from_object(Settings)


def test_from_object_dict_and_instance_load_in_place() -> None:
    conf = Config(task_default_queue="high")
    returned = conf.from_object({"worker_concurrency": 2})
    assert returned is conf
    assert conf.changes == {"task_default_queue": "high", "worker_concurrency": 2}


def test_from_object_module(module_on_path: Callable[[str], str]) -> None:
    name = module_on_path(
        """
        from __future__ import annotations
        import os
        from datetime import timedelta

        broker_url = "redis://:secret@localhost:6379/0"
        result_expires = timedelta(hours=1)
        CELERY_ALWAYS_EAGER = True
        SOMETHING_ELSE = 1

        def helper():
            return os.getcwd()
        """
    )
    module = __import__(name)
    assert isinstance(module, ModuleType)
    for source in (module, name):
        conf = Config.from_object(source)
        assert conf.broker_url == "redis://:secret@localhost:6379/0"
        assert conf.result_expires == timedelta(hours=1)
        assert conf.task_always_eager is True
        assert set(conf.changes) == {"broker_url", "result_expires", "task_always_eager"}


def test_from_object_module_attr_strings(module_on_path: Callable[[str], str]) -> None:
    name = module_on_path(
        """
        class Production:
            broker_url = "amqp://guest:guest@rabbit//"
            worker_concurrency = 16

        settings = {"task_serializer": "msgpack", "accept_content": ["msgpack"]}
        """
    )
    conf = Config.from_object(f"{name}:Production")
    assert conf.worker_concurrency == 16
    conf = Config.from_object(f"{name}.settings")
    assert conf.task_serializer == "msgpack"
    assert conf.accept_content == ["msgpack"]


def test_from_object_import_failures(module_on_path: Callable[[str], str]) -> None:
    with pytest.raises(ConfigurationError, match="no module named 'no_such_module_celeriac'"):
        Config.from_object("no_such_module_celeriac")
    assert Config.from_object("no_such_module_celeriac", silent=True).changes == {}
    name = module_on_path("x = 1\n")
    with pytest.raises(ConfigurationError, match="has no attribute 'Missing'"):
        Config.from_object(f"{name}:Missing")
    broken = module_on_path("import no_such_dependency_celeriac\n")
    with pytest.raises(ConfigurationError, match="no_such_dependency_celeriac"):
        Config.from_object(broken, silent=True)  # the module exists: silent does not hide this
    bad_syntax = module_on_path("broker_url = (\n")
    with pytest.raises(ConfigurationError, match="SyntaxError"):
        Config.from_object(bad_syntax)
    assert load_object("no_such_module_celeriac.attr", silent=True) is None


def test_from_object_namespace_celery_reads_only_prefixed_keys() -> None:
    django_settings = {
        "DEBUG": True,
        "DATABASES": {"default": {}},
        "BROKER_URL": "redis://not-ours",  # no prefix: ignored in namespace mode
        "CELERY_BROKER_URL": "redis://localhost:6379/0",
        "CELERY_TASK_ALWAYS_EAGER": True,
        "CELERY_RESULT_BACKEND": "redis://localhost:6379/1",
        "CELERY_WORKER_CONCURRENCY": 4,
        "CELERY_ACKS_LATE": True,  # an old name under the prefix: mapped
    }
    conf = Config.from_object(django_settings, namespace="CELERY")
    assert conf.changes == {
        "broker_url": "redis://localhost:6379/0",
        "task_always_eager": True,
        "result_backend": "redis://localhost:6379/1",
        "worker_concurrency": 4,
        "task_acks_late": True,
    }


def test_from_object_namespace_unknown_key_under_prefix_is_an_error() -> None:
    with pytest.raises(
        UnknownSettingError, match=r"'CELERY_BROKER_ULR'; did you mean 'CELERY_BROKER_URL'\?"
    ):
        Config.from_object({"CELERY_BROKER_ULR": "redis://"}, namespace="CELERY")


def test_from_envvar(module_on_path: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    name = module_on_path("worker_pool = 'threads'\n")
    monkeypatch.setenv("CELERIAC_TEST_CONFIG", name)
    assert Config.from_envvar("CELERIAC_TEST_CONFIG").worker_pool == "threads"
    monkeypatch.delenv("CELERIAC_TEST_CONFIG")
    with pytest.raises(ConfigurationError, match="CELERIAC_TEST_CONFIG"):
        Config.from_envvar("CELERIAC_TEST_CONFIG")
    assert Config.from_envvar("CELERIAC_TEST_CONFIG", silent=True).changes == {}


# ---- credentials -------------------------------------------------------------------------------


def test_repr_hides_credentials() -> None:
    conf = Config(
        broker_url="redis://:s3cret@redis.example:6379/0",
        result_backend="db+postgresql://scott:tiger@db/results",
        broker_transport_options={"password": "hunter2", "region": "eu"},
        s3_secret_access_key="AKIASECRET",
        task_default_queue="high",
    )
    text = repr(conf)
    for secret in ("s3cret", "tiger", "hunter2", "AKIASECRET"):
        assert secret not in text
        assert secret not in conf.humanize(with_defaults=True)
    assert "redis://:****@redis.example:6379/0" in text
    assert "db+postgresql://scott:****@db/results" in text
    assert "task_default_queue='high'" in text
    assert conf.broker_url == "redis://:s3cret@redis.example:6379/0"  # only the display hides it


def test_type_error_message_hides_credentials() -> None:
    with pytest.raises(ConfigurationError) as info:
        Config(broker_read_url=["amqp://u:pa55@host//"])
    assert "pa55" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:****@localhost:5672//"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqs://KEY:SE/CRET@", "sqs://KEY:****@"),
        ("redis://:a@h1:6379;redis://:b@h2:6379", "redis://:****@h1:6379;redis://:****@h2:6379"),
        (
            "rediss://h:6380/0?password=pw&ssl_cert_reqs=none",
            "rediss://h:6380/0?password=****&ssl_cert_reqs=none",
        ),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_broker_heartbeat_reaches_the_amqp_broker_unless_its_option_is_given() -> None:
    from celeriac import Celeriac
    from celeriac.brokers.amqp import AMQPBroker

    app = Celeriac("hb", broker="amqp://guest:guest@localhost:5672//", backend="memory://hb")

    def heartbeat() -> float | None:
        broker = app._new_resources().broker  # made, not connected
        assert isinstance(broker, AMQPBroker)
        return broker.heartbeat

    assert heartbeat() == 60.0  # the broker's own default
    app.conf.broker_heartbeat = 10
    assert heartbeat() == 10.0
    app.conf.broker_heartbeat = 0
    assert heartbeat() is None
    app.conf.broker_transport_options = {"heartbeat": 30}
    assert heartbeat() == 30.0
