"""Hostile input: schemathesis over the OpenAPI schema, body size limit, constant-time token check,
no secrets in logs."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.serve import hostile
from benchmarks.serve.faults import ADMIN_TOKEN, deploy


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with deploy(tmp_path_factory.mktemp("hostile"), workers=1) as dep:
        yield dep


def test_schemathesis_finds_no_5xx_and_no_schema_violation(api: Any, tmp_path: Path) -> None:
    import schemathesis  # noqa: F401 - in the dev extra: a missing install must fail, not skip

    r = hostile.schemathesis(api.api.url, ADMIN_TOKEN, max_examples=25, report_dir=tmp_path, seed=1)
    assert r["operations"]["tested"] == r["operations"]["total"] == 11, r  # 8 + the 3 item routes
    assert r["generated"] >= 300, r
    assert r["failures"] == [] and r["errors"] == [], r["output_tail"]
    assert r["exit_code"] == 0
    assert httpx.get(api.api.url + "/readyz").status_code == 200


def test_job_ids_rq_cannot_hold_are_404_not_500(api: Any) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for job_id in ("%C2%BF%1B%C3%84", "abc:def", "a%20b", "x" * 200):
        r = httpx.get(f"{api.api.url}/retrain/{job_id}", headers=auth)
        assert r.status_code == 404, (job_id, r.text)


def test_bodies_over_the_limit_get_413(api: Any) -> None:
    r = hostile.body_limit(api.api.url, limit=1_048_576)
    over = {k: v for k, v in r.items() if k != "limit" and "under" not in k}
    assert len(over) == 6 and set(over.values()) == {413}, r
    assert r["/recommend content-length 1048435 (under)"] == 422  # parsed, rejected for its content


def test_admin_token_is_compared_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch, make_app_client: Any
) -> None:
    import service.app

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.app.hmac, "compare_digest", spy)
    client = make_app_client(admin_token="s3cret-token")
    assert client.get("/retrain/abc", headers={"Authorization": "Bearer s3cret-tokex"}).status_code == 401
    assert client.get("/retrain/abc", headers={"Authorization": "Bearer s3cret-token"}).status_code == 404
    assert client.get("/retrain/abc").status_code == 401  # no header: compared too (with b"")
    assert calls == [
        (b"s3cret-tokex", b"s3cret-token"),
        (b"s3cret-token", b"s3cret-token"),
        (b"", b"s3cret-token"),
    ]


def test_no_secret_in_logs(tmp_path: Path) -> None:
    r = hostile.secrets_in_logs(tmp_path)
    assert r["status_codes"][:4] == [200, 200, 401, 401] and r["status_codes"][4] == 202, r
    assert r["log_lines"]["api"] > 3 and r["log_lines"]["worker"] > 3  # something was logged
    assert r["settings_line_redacted"] and r["redis_url_redacted"], r
    assert all(n == 0 for d in r["secret_occurrences"].values() for n in d.values()), r
