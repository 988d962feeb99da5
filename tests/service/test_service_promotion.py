"""The promotion gate: champion and challenger scored on the same validation data in the same job,
the decision on those two numbers (and the reference), a tolerance that cannot compound."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import svc_artifacts

from artifact import contract
from training import jobs
from training.data import Interactions

TOL = 0.01


# ------------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("candidate", "champion", "reference", "force", "promoted", "needle"),
    [
        (0.30, None, None, False, True, "no model was serving"),
        (0.10, 0.30, None, True, True, "forced"),
        (0.30, 0.30, None, False, True, "vs serving 0.3000"),
        (0.29, 0.30, None, False, True, "tolerance 0.01"),  # exactly at the bar minus the tolerance
        (0.2899, 0.30, None, False, False, "worse than serving"),  # a flipped sign would promote
        (0.31, 0.30, 0.35, False, False, "worse than reference 0.3500"),  # the reference sets the bar
        (0.34, 0.30, 0.35, False, True, "vs reference 0.3500"),
        (0.31, 0.30, 0.20, False, True, "vs serving 0.3000"),  # a lower reference does not lower the bar
        (None, 0.30, None, False, False, "cannot compare"),
        (0.30, float("nan"), None, False, False, "cannot compare"),
    ],
)
def test_promotion_decision(
    candidate: float | None,
    champion: float | None,
    reference: float | None,
    force: bool,
    promoted: bool,
    needle: str,
) -> None:
    ok, reason = contract.promotion_decision(candidate, champion, TOL, force, reference=reference)
    assert (ok, needle in reason) == (promoted, True), reason


# ------------------------------------------------------------------------------- served_recall


def test_served_recall_equals_a_brute_force_ranking(tmp_path: Path) -> None:
    path = svc_artifacts.write(tmp_path, seed=3)
    art = contract.load_artifact(path)
    a = art.arrays
    rng = np.random.default_rng(0)
    train = {a.user_ids[u]: [a.item_ids[i] for i in art.user_items(u)] for u in range(len(a.user_ids))}
    target: dict[str, list[str]] = {}
    for u, user in enumerate(a.user_ids):
        unseen = sorted(set(range(len(a.item_ids))) - set(art.user_items(u).tolist()))
        target[user] = [a.item_ids[i] for i in rng.choice(unseen, size=5, replace=False)]
    target["u0"] = target["u0"][:2] + ["not-in-catalogue"]  # a miss by construction
    expected = []
    for u, user in enumerate(a.user_ids):
        scores = a.user_embeddings[u].astype(np.float64) @ a.item_embeddings.T.astype(np.float64)
        scores[art.user_items(u)] = -np.inf
        top = {a.item_ids[i] for i in np.argsort(-scores, kind="stable")[:20]}
        expected.append(len(top & set(target[user])) / len(target[user]))
    got, n = contract.served_recall(art, train, target)
    assert n == len(a.user_ids)
    assert got == pytest.approx(float(np.mean(expected)), abs=1e-12)
    assert 0.05 < got < 0.95  # neither trivial end: the comparison above means something
    # a user the artifact does not know is folded in from the items, as the service does
    new_user = {"stranger": train["u1"]}
    vector = contract.user_vector(art, art.user_items(1))
    scores = vector.astype(np.float64) @ a.item_embeddings.T.astype(np.float64)
    scores[art.user_items(1)] = -np.inf
    top = [a.item_ids[i] for i in np.argsort(-scores, kind="stable")[:20]]
    assert contract.served_recall(art, new_user, {"stranger": top[:4]}) == (1.0, 1)


# ------------------------------------------------------------------------------- the gate


def _dataset() -> Any:
    val = Interactions.from_lists([[0], [1]])
    return SimpleNamespace(
        val=val, train=Interactions.from_lists([[2], [3]]), user_ids=["u0", "u1"], item_ids=["0", "1", "2", "3"],
        fingerprint="fp-test",
    )  # fmt: skip


def _publish(root: Path, seed: int, manifest_recall: float) -> str:
    manifest, arrays = svc_artifacts.build(seed=seed)
    manifest.metrics = {"val": {"recall@20": manifest_recall}}
    contract.write_artifact(root, manifest, arrays)
    return manifest.model_version


def _chain(
    root: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, float], claimed: dict[str, float]
) -> list[dict[str, Any]]:
    """Publish each model in order as the candidate of one job; returns the gate of each job."""
    versions: dict[str, str] = {}
    for i, name in enumerate(served):
        versions[name] = _publish(root, seed=i, manifest_recall=claimed[name])
    by_version = {v: served[name] for name, v in versions.items()}
    monkeypatch.setattr(
        contract, "served_recall", lambda art, train, target, k=20: (by_version[art.version], 2)
    )
    gates = []
    for name in served:
        candidate = versions[name]
        gate = jobs.promotion_gate(root, contract.read_current(root), candidate, _dataset(), TOL, force=False)
        gates.append(gate | {"name": name})
        if gate["promoted"]:
            contract.set_current(root, candidate)
            jobs.write_promotion_record(root, candidate, gate)
    return gates


def test_the_gate_compares_on_this_jobs_data_not_the_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the serving model's manifest claims 0.90 (measured on other validation data); on this job's
    # data it scores 0.10 and the candidate 0.15: the candidate is better and is promoted
    gates = _chain(tmp_path, monkeypatch, served={"A": 0.10, "B": 0.15}, claimed={"A": 0.90, "B": 0.15})
    assert [g["promoted"] for g in gates] == [True, True]
    b = gates[1]
    assert b["scores"] == {"candidate": 0.15, "serving": 0.10, "reference": None}
    assert b["dataset_fingerprint"] == "fp-test" and b["n_val_users"] == 2
    record = (tmp_path / jobs.PROMOTIONS_DIR / f"{b['versions']['candidate']}.json").read_text()
    assert '"serving": 0.1' in record


def test_the_tolerance_does_not_compound_across_promotions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each candidate is within the tolerance of the one before, but C is 1.6 tolerances below A
    served = {"A": 0.300, "B": 0.292, "C": 0.284, "D": 0.305}
    gates = _chain(tmp_path, monkeypatch, served=served, claimed=served)
    assert [(g["name"], g["promoted"]) for g in gates] == [
        ("A", True),
        ("B", True),
        ("C", False),
        ("D", True),
    ]
    a_version = gates[0]["versions"]["candidate"]
    assert gates[1]["reference"] == a_version  # B got in within the tolerance: A stays the reference
    assert gates[2]["versions"]["reference"] == a_version and "reference 0.3000" in gates[2]["reason"]
    assert gates[3]["reference"] == gates[3]["versions"]["candidate"]  # D beat the bar: its own reference
