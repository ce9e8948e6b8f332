"""The idempotency package's public surface and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import resilience
import resilience.idempotency as idem
from resilience import RejectedError, ResilienceError


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert idem.__all__ == sorted(idem.__all__)
    for name in idem.__all__:
        assert getattr(idem, name) is not None, name


def test_top_level_exports_the_guard_and_its_errors() -> None:
    for name in (
        "Idempotency",
        "IdempotencyError",
        "IdempotencyKeyError",
        "IdempotencyConflictError",
        "IdempotencyKeyMismatchError",
        "IdempotencyStoreError",
    ):
        assert name in resilience.__all__
        assert getattr(resilience, name) is getattr(idem, name)


def test_error_tree() -> None:
    assert issubclass(idem.IdempotencyError, ResilienceError)
    assert issubclass(idem.IdempotencyConflictError, RejectedError)
    assert issubclass(idem.IdempotencyKeyError, ValueError)
    statuses = {
        idem.IdempotencyKeyError: 400,
        idem.IdempotencyConflictError: 409,
        idem.IdempotencyKeyMismatchError: 422,
        idem.IdempotencyStoreError: 503,
    }
    for cls, status in statuses.items():
        assert cls.status_code == status
    exc = idem.IdempotencyConflictError("busy", policy="p", key="k", retry_after=2.5)
    assert (exc.policy, exc.key, exc.retry_after) == ("p", "k", 2.5)


def test_importing_imports_no_optional_dependency() -> None:
    code = (
        "import sys, resilience, resilience.idempotency;"
        "print(sorted(m for m in ('redis', 'psycopg', 'starlette', 'httpx', 'uvicorn',"
        " 'orjson', 'msgspec') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_server_stores_load_on_first_use() -> None:
    assert idem.RedisStore.__name__ == "RedisStore"
    assert idem.PostgresStore.__name__ == "PostgresStore"
