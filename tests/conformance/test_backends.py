"""Every result backend passes the conformance kit: one line per backend."""

from celeriac.testing.backend_kit import backend_suite

TestMemoryBackend = backend_suite("memory://conformance-{uid}")
TestSQLiteBackend = backend_suite("sqlite:///{tmp}/results.db")
