"""One backend interface: each engine implements `Backend`, and one factory picks the
engine from the ledger's name."""

from __future__ import annotations

import inspect

import pytest

from uet.state.backends import Backend, engine_of, open_backend, peek_version
from uet.state.backends.common import Backend as BackendProtocol

# what the Protocol declares: every engine must offer exactly these, callable the same way
_MEMBERS = sorted(name for name in dir(BackendProtocol)
                  if not name.startswith("_") and name not in dir(object))


@pytest.mark.parametrize("name, engine", [
    (":memory:", "sqlite"), ("ledger.db", "sqlite"), ("dir/x.sqlite", "sqlite"),
    ("postgresql://u@h/db", "postgresql"), ("postgres://h/db", "postgresql"),
])
def test_the_factory_picks_the_engine_from_the_name(name, engine):
    assert engine_of(name) == engine


def test_every_engine_implements_the_interface(db):
    backend = db.backend
    assert isinstance(backend, Backend)
    assert backend.engine == db.engine
    for name in _MEMBERS:
        assert hasattr(backend, name), f"{type(backend).__name__} lacks {name}"
        declared = getattr(BackendProtocol, name)
        if callable(declared) and not isinstance(declared, property):
            ours = inspect.signature(getattr(backend, name))
            theirs = inspect.signature(declared)
            assert list(ours.parameters)[:len(theirs.parameters) - 1] == \
                list(theirs.parameters)[1:], (name, ours, theirs)


def test_the_factory_opens_each_engine_unconnected_and_closes_it(ledger):
    backend = open_backend(ledger, read_only=True)
    try:
        assert isinstance(backend, Backend) and backend.engine == engine_of(ledger)
        assert backend.peek_version() is None  # nothing there yet, nothing created
    finally:
        backend.close()
    assert backend.closed
    assert peek_version(ledger) is None


def test_peek_version_reads_a_ledger_without_changing_it(shared_db):
    version = shared_db.schema_version()
    assert peek_version(shared_db.db_path) == version
    assert shared_db.backend.peek_version() == version


def test_in_transaction_is_true_only_inside_the_threads_block(db):
    assert not db.backend.in_transaction
    with db.backend.transaction():
        assert db.backend.in_transaction and db.in_atomic
        with db.backend.transaction():
            assert db.backend.in_transaction
        assert db.backend.in_transaction
    assert not db.backend.in_transaction
