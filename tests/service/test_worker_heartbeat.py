"""The retrain worker's heartbeat settings: the TTL RQ gives a running job's registry entry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.settings import Settings
from service.worker import RetrainWorker


def _ttl(interval: int, grace: int, timeout: int | None, working: float = 0.0) -> int:
    worker = RetrainWorker.__new__(RetrainWorker)  # no Redis: only the TTL arithmetic is under test
    worker.job_monitoring_interval = interval
    worker.heartbeat_grace_s = grace
    return worker.get_heartbeat_ttl(SimpleNamespace(timeout=timeout), working_time=working)  # type: ignore[arg-type]


def test_heartbeat_ttl_is_interval_plus_grace() -> None:
    assert _ttl(10, 60, timeout=3600) == 70  # RQ's own numbers
    assert _ttl(1, 8, timeout=3600) == 9  # the topology test's
    assert _ttl(10, 60, timeout=None) == 70
    assert _ttl(10, 60, timeout=-1) == 70


def test_heartbeat_ttl_never_outlives_the_job_timeout_by_more_than_the_grace() -> None:
    assert _ttl(10, 60, timeout=100, working=96.5) == 3 + 60


def test_settings_read_the_heartbeat_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_HEARTBEAT_S", "2")
    monkeypatch.setenv("WORKER_HEARTBEAT_GRACE_S", "5")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.worker_heartbeat_s, s.worker_heartbeat_grace_s) == (2, 5)
    defaults = Settings.model_fields
    assert (defaults["worker_heartbeat_s"].default, defaults["worker_heartbeat_grace_s"].default) == (10, 60)
