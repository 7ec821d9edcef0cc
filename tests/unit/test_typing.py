"""Task functions keep their signature for type checkers: ``add.delay`` is typed from ``add``."""

from __future__ import annotations

from pathlib import Path

import pytest

SNIPPET = '''
from celeriac import Celeriac

app = Celeriac("typed")

@app.task
def add(x: int, y: int) -> int:
    return x + y

@app.task(name="named")
def concat(a: str, b: str = "") -> str:
    return a + b

ok1 = add.delay(1, 2)
ok2 = concat.delay("a", b="b")
value: int = add(1, 2)
result: int = add.delay(1, 2).get()

bad1 = add.delay("x", 2)          # bad: wrong argument type
bad2 = concat.delay(1)            # bad: wrong argument type
bad3 = add.delay(1)               # bad: missing argument
text: str = add.delay(1, 2).get() # bad: wrong result type
'''


@pytest.mark.timeout(120)
def test_delay_and_results_are_typed_from_the_function(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    source = tmp_path / "typed_tasks.py"
    source.write_text(SNIPPET)
    out, err, _ = api.run([str(source), "--no-incremental", "--cache-dir", str(tmp_path / "c"),
                           "--ignore-missing-imports"])
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    expected = [n for n, text in enumerate(SNIPPET.splitlines(), 1) if "# bad" in text]
    assert lines == expected, out + err
