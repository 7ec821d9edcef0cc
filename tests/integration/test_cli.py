"""The ``celeriac`` command line, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, url: str, input: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELERIAC_TEST_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "celeriac.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=input,
    )


def test_version(db_url: str) -> None:
    out = run("--version", url=db_url)
    assert out.returncode == 0 and "celeriac" in out.stdout


def test_call_result_and_purge(db_url: str, start_worker: Any) -> None:
    sent = run("-A", "tests.apps.basic", "call", "tests.apps.basic.add", "--args", "[2, 3]", url=db_url)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert len(task_id) == 36
    start_worker("-P", "solo")
    got = run("-A", "tests.apps.basic", "result", task_id, "--wait", "--timeout", "10", url=db_url)
    assert got.returncode == 0 and got.stdout.strip() == "5", got.stderr

    queued = run(
        "-A",
        "tests.apps.basic",
        "call",
        "tests.apps.basic.add",
        "--args",
        "[1, 1]",
        "--queue",
        "nobody-listens",
        url=db_url,
    )
    assert queued.returncode == 0
    purged = run("-A", "tests.apps.basic", "purge", "-Q", "nobody-listens", "-f", url=db_url)
    assert "Purged 1 message" in purged.stdout
    asked = run("-A", "tests.apps.basic", "purge", "-Q", "nobody-listens", url=db_url, input="n\n")
    assert asked.returncode != 0 and "Purged" not in asked.stdout


def test_failure_result_is_shown(db_url: str, start_worker: Any) -> None:
    start_worker("-P", "solo")
    task_id = run(
        "-A", "tests.apps.basic", "call", "tests.apps.basic.fail", "--args", '["bad"]', url=db_url
    ).stdout.strip()
    got = run("-A", "tests.apps.basic", "result", task_id, "--wait", url=db_url)
    assert "FAILURE: ValueError: bad" in got.stdout


@pytest.mark.parametrize(("choice", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio."),
                                                ("auto", "uvloop")])
def test_the_worker_runs_on_the_event_loop_it_is_given(
    db_url: str, start_worker: Any, choice: str, module: str,
) -> None:
    worker = start_worker("-P", "solo", "--loop", choice)
    task_id = run("-A", "tests.apps.basic", "call", "tests.apps.basic.loop_kind",
                  url=db_url).stdout.strip()
    got = run("-A", "tests.apps.basic", "result", task_id, "--wait", "--timeout", "20",
              url=db_url)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().strip("'").startswith(module)  # printed as its repr
    assert f"loop {module.rstrip('.')}" in worker.log_path.read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-A", "no_such_module", "call", "x"), "cannot import module 'no_such_module'"),
        (("-A", "tests.apps.basic:nope", "call", "x"), "has no attribute 'nope'"),
        (("-A", "tests.apps.basic", "call", "tests.apps.basic.add", "--args", "[1,"), "not valid JSON"),
        (("-A", "tests.apps.basic", "call", "tests.apps.basic.add", "--args", "{}"), "must be a JSON list"),
        (("-A", "tests.apps.basic", "worker", "-P", "eventlet"), "eventlet pool is not supported"),
        (("-A", "tests.apps.basic", "worker", "-P", "gevent", "--loop", "uvloop"),
         "the gevent pool runs on asyncio's own loop"),
        (("-A", "tests.apps.basic", "--broker", "nosuch://x", "call", "tests.apps.basic.add"), "nosuch"),
    ],
)
def test_errors_are_one_clear_line(db_url: str, args: tuple[str, ...], expected: str) -> None:
    out = run(*args, url=db_url)
    assert out.returncode != 0
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_app_discovery_by_package_name(tmp_path: Path, db_url: str) -> None:
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "celery.py").write_text(
        "from celeriac import Celeriac\nmyapp = Celeriac('proj', broker='memory://', backend='memory://')\n"
        "@myapp.task(name='proj.hello')\ndef hello():\n    return 'hi'\n"
    )
    out = run("-A", "proj", "call", "proj.hello", url=db_url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run("--workdir", str(tmp_path), "-A", "proj.celery:myapp", "call", "proj.hello", url=db_url)
    assert out.returncode == 0, out.stderr
