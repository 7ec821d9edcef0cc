"""Peer rows: other task queues, measured by a driver script run in ``.venv-bench``.

A driver is ``python -m bench.peers.<name>_driver --n N --batch B --k K --repeat R
--warmup W --workdir DIR``. It measures the figures of ``bench.common.FIGURES`` it can, the
same way the celeriac rows do (see ``bench/celeriac_rows.py``), writes progress lines to
stderr, and prints its ``Samples`` as one JSON line on stdout (``bench.common.emit``).
Standard library and its own queue's packages only: celeriac is not installed there.
"""
