"""The artifact contract's own checks, one test each: checksums of every file, the manifest's file
list, the CSR validation, the version-name guard, the manifest fields, and the promotion decision.

numpy only (no torch): artifacts are written with the real contract from tests/service/svc_artifacts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from artifact import contract
from artifact.contract import ArtifactError, load_artifact, promotion_decision
from tests.service import svc_artifacts


def _writable_copy(path: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / ("copy-" + path.name)
    shutil.copytree(path, copy)
    for p in copy.iterdir():
        os.chmod(p, 0o644)
    return copy


def _rewrite_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / contract.MANIFEST).read_text())
    edit(manifest)
    (path / contract.MANIFEST).write_text(json.dumps(manifest))


def _replace_array(path: Path, name: str, arr: np.ndarray) -> None:
    """Swap one array and update its manifest entry, so only the contract's own checks can object."""
    np.save(path / name, arr, allow_pickle=False)

    def edit(m):
        m["files"][name] = {
            "sha256": contract.sha256_file(path / name),
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
        }

    _rewrite_manifest(path, edit)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return svc_artifacts.write(tmp_path_factory.mktemp("store"), seed=1, n_users=12, n_items=30, dim=4)


def test_a_valid_artifact_loads_with_every_array_as_written(artifact: Path) -> None:
    manifest, arrays = svc_artifacts.build(seed=1, n_users=12, n_items=30, dim=4)
    art = load_artifact(artifact)
    assert art.version == artifact.name
    assert art.arrays.user_ids == arrays.user_ids and art.arrays.item_ids == arrays.item_ids
    np.testing.assert_array_equal(art.arrays.user_embeddings, arrays.user_embeddings)
    np.testing.assert_array_equal(art.arrays.item_layer_embeddings, arrays.item_layer_embeddings)
    np.testing.assert_array_equal(art.arrays.modality_features["audio"], arrays.modality_features["audio"])
    assert art.arrays.train_indices.dtype == np.int32 and art.arrays.train_indptr.dtype == np.int64
    np.testing.assert_array_equal(
        art.user_items(3), arrays.train_indices[arrays.train_indptr[3] : arrays.train_indptr[4]]
    )
    assert art.manifest.omega == manifest.omega and art.manifest.val_recall20() == pytest.approx(0.10)


def _file_names() -> list[str]:
    names = [
        contract.USER_IDS,
        contract.ITEM_IDS,
        contract.USER_EMB,
        contract.ITEM_EMB,
        contract.USER_ID_EMB,
        contract.ITEM_LAYER_EMB,
        contract.TRAIN_INDPTR,
        contract.TRAIN_INDICES,
        contract.ITEM_POPULARITY,
    ]
    return names + [contract.modality_file(m) for m in svc_artifacts.MODALITIES]


def test_the_manifest_lists_exactly_the_contract_files(artifact: Path) -> None:
    assert sorted(contract.read_manifest(artifact).files) == sorted(_file_names())
    assert sorted(p.name for p in artifact.iterdir()) == sorted([*_file_names(), contract.MANIFEST])


@pytest.mark.parametrize("name", _file_names())
def test_every_file_is_checksum_verified(artifact: Path, tmp_path: Path, name: str) -> None:
    copy = _writable_copy(artifact, tmp_path)
    svc_artifacts.tamper(copy, name)
    with pytest.raises(ArtifactError, match=f"{name}: sha256 mismatch"):
        load_artifact(copy)


@pytest.mark.parametrize("name", _file_names())
def test_every_contract_file_must_be_listed_in_the_manifest(
    artifact: Path, tmp_path: Path, name: str
) -> None:
    copy = _writable_copy(artifact, tmp_path)
    _rewrite_manifest(copy, lambda m: m["files"].pop(name))
    with pytest.raises(ArtifactError, match=f"files missing from manifest: \\['{name}'\\]"):
        load_artifact(copy)


@pytest.mark.parametrize("name", [contract.USER_EMB, contract.ITEM_IDS, contract.modality_file("audio")])
def test_a_listed_file_that_is_missing_is_named(artifact: Path, tmp_path: Path, name: str) -> None:
    copy = _writable_copy(artifact, tmp_path)
    (copy / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name}: listed in the manifest but missing"):
        load_artifact(copy)


def test_shape_dtype_and_id_count_are_checked_against_the_manifest(artifact: Path, tmp_path: Path) -> None:
    copy = _writable_copy(artifact, tmp_path)
    _rewrite_manifest(copy, lambda m: m["files"][contract.ITEM_EMB].update(shape=[30, 5]))
    with pytest.raises(ArtifactError, match=r"item_embeddings.npy: shape \(30, 4\) != manifest \(30, 5\)"):
        load_artifact(copy)
    copy = _writable_copy(artifact, tmp_path / "b")
    _rewrite_manifest(copy, lambda m: m["files"][contract.ITEM_EMB].update(dtype="float64"))
    with pytest.raises(ArtifactError, match="item_embeddings.npy: dtype float32 != manifest float64"):
        load_artifact(copy)
    copy = _writable_copy(artifact, tmp_path / "c")
    _rewrite_manifest(copy, lambda m: m["files"][contract.USER_IDS].update(shape=[13]))
    with pytest.raises(ArtifactError, match="user_ids.json: expected a list of 13 ids"):
        load_artifact(copy)


def test_arrays_that_disagree_with_the_manifest_sizes_are_refused(artifact: Path, tmp_path: Path) -> None:
    # consistent checksums, but 11 users' embeddings for a manifest of 12 users
    copy = _writable_copy(artifact, tmp_path)
    _replace_array(copy, contract.USER_EMB, np.zeros((11, 4), dtype=np.float32))
    with pytest.raises(ArtifactError, match=r"inconsistent artifact: .*user_embeddings shape \(11, 4\)"):
        load_artifact(copy)


def _csr_case(artifact: Path, tmp_path: Path, indptr=None, indices=None) -> Path:
    copy = _writable_copy(artifact, tmp_path)
    if indptr is not None:
        _replace_array(copy, contract.TRAIN_INDPTR, np.asarray(indptr, dtype=np.int64))
    if indices is not None:
        _replace_array(copy, contract.TRAIN_INDICES, np.asarray(indices, dtype=np.int32))
    return copy


def test_csr_row_pointer_is_validated(artifact: Path, tmp_path: Path) -> None:
    art = load_artifact(artifact)
    indptr, nnz = art.arrays.train_indptr, len(art.arrays.train_indices)
    cases = {
        "starts at 1": np.concatenate([[1], indptr[1:]]),
        "ends short": np.concatenate([indptr[:-1], [nnz - 1]]),
        "decreases": np.concatenate([indptr[:3], [indptr[2] - 1], indptr[4:]]),
    }
    assert cases["decreases"][-1] == nnz and cases["decreases"][0] == 0 and indptr[2] >= 1
    for label, bad in cases.items():
        copy = _csr_case(artifact, tmp_path / label.replace(" ", "-"), indptr=bad)
        with pytest.raises(ArtifactError, match="train_indptr.npy: not a valid CSR row pointer"):
            load_artifact(copy)


@pytest.mark.parametrize("bad_item", [-1, 30, 1000])
def test_csr_item_indices_must_be_in_range(artifact: Path, tmp_path: Path, bad_item: int) -> None:
    indices = load_artifact(artifact).arrays.train_indices.copy()
    indices[4] = bad_item
    copy = _csr_case(artifact, tmp_path, indices=indices)
    with pytest.raises(ArtifactError, match="train_indices.npy: item index out of range"):
        load_artifact(copy)


def test_the_last_valid_item_index_is_accepted(artifact: Path, tmp_path: Path) -> None:
    indices = load_artifact(artifact).arrays.train_indices.copy()
    indices[-1] = 29  # n_items - 1
    assert load_artifact(_csr_case(artifact, tmp_path, indices=indices)).arrays.train_indices[-1] == 29


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("n_items"), r"missing keys \['n_items'\]"),
        (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
        (lambda m: m.update(graph_norm="rw"), "graph_norm 'rw' not in"),
        (lambda m: m["files"][contract.USER_EMB].pop("sha256"), "malformed 'files' entry"),
    ],
)
def test_manifest_fields_are_checked(artifact: Path, tmp_path: Path, edit, message: str) -> None:
    copy = _writable_copy(artifact, tmp_path)
    _rewrite_manifest(copy, edit)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(copy)


def test_unreadable_or_absent_manifest(artifact: Path, tmp_path: Path) -> None:
    copy = _writable_copy(artifact, tmp_path)
    (copy / contract.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        load_artifact(copy)
    (copy / contract.MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="manifest is not a JSON object"):
        load_artifact(copy)
    (copy / contract.MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest not found"):
        load_artifact(copy)


# ------------------------------------------------------------------------------------ version names


@pytest.mark.parametrize("bad", ["../escape", "", ".hidden", "a/b", "-dash", "x" * 129, "sp ace", "v\n"])
def test_write_refuses_version_names_that_are_not_plain_directory_names(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "store" / "inner"
    manifest, arrays = svc_artifacts.build(version="placeholder", n_users=5, n_items=12, dim=2)
    manifest.model_version = bad
    with pytest.raises(ArtifactError, match="invalid model version name"):
        contract.write_artifact(root, manifest, arrays)
    assert not (tmp_path / "store").exists()  # nothing written, not even the root
    with pytest.raises(ArtifactError, match="invalid model version name"):
        contract.set_current(tmp_path, bad)


def test_good_version_names_pass_the_guard() -> None:
    for good in ["a", "x" * 128, "20261202T050000Z-0a1b2c3d", "v1.2_rc-3", contract.new_model_version()]:
        assert contract.check_version_name(good) == good


def test_new_model_versions_sort_by_time_and_are_unique() -> None:
    from datetime import UTC, datetime

    early = contract.new_model_version(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = contract.new_model_version(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert early.startswith("20260102T030405Z-") and len(early) == len("20260102T030405Z-") + 8
    assert early < late
    assert len({contract.new_model_version() for _ in range(50)}) == 50


# ------------------------------------------------------------------------------------ write + store


def test_write_refuses_an_existing_version_and_leaves_no_temporary_directory(tmp_path: Path) -> None:
    root = tmp_path / "store"
    path = svc_artifacts.write(root, set_current=False, version="v1", n_users=5, n_items=12, dim=2)
    before = contract.sha256_file(path / contract.USER_EMB)
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2, seed=5)
    with pytest.raises(ArtifactError, match="v1 already exists: artifacts are immutable"):
        contract.write_artifact(root, manifest, arrays)
    assert contract.sha256_file(path / contract.USER_EMB) == before
    assert sorted(p.name for p in root.iterdir()) == ["v1"]
    assert all(oct(p.stat().st_mode & 0o777) == "0o444" for p in path.iterdir())
    assert oct(path.stat().st_mode & 0o777) == "0o755"


def test_write_refuses_non_finite_embeddings(tmp_path: Path) -> None:
    for field in ("user_embeddings", "item_embeddings", "user_id_side"):
        manifest, arrays = svc_artifacts.build(version=f"v-{field}", n_users=5, n_items=12, dim=2)
        getattr(arrays, field)[1, 0] = np.nan
        with pytest.raises(ArtifactError, match=f"{field} holds NaN or inf"):
            contract.write_artifact(tmp_path, manifest, arrays)
    assert contract.list_versions(tmp_path) == []


def test_set_current_verifies_the_version_and_read_current_reads_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert contract.read_current(root) is None and contract.list_versions(root) == []
    svc_artifacts.write(root, set_current=False, version="v1", n_users=5, n_items=12, dim=2)
    bad = svc_artifacts.write(root, set_current=False, version="v2", n_users=5, n_items=12, dim=2)
    contract.set_current(root, "v1")
    assert contract.read_current(root) == "v1"
    assert oct((root / contract.CURRENT).stat().st_mode & 0o777) == "0o644"
    svc_artifacts.tamper(bad)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        contract.set_current(root, "v2")
    assert contract.read_current(root) == "v1"
    assert contract.list_versions(root) == ["v1", "v2"]
    (root / contract.CURRENT).write_text("\n")
    assert contract.read_current(root) is None


# ------------------------------------------------------------------------------------ promotion


# Binary-exact values (0.5, 0.25, 0.125 ...), so that a boundary compares exactly.
@pytest.mark.parametrize(
    ("serving", "candidate", "tolerance", "promoted"),
    [
        (0.5, 0.625, 0.0, True),  # better
        (0.5, 0.5, 0.0, True),  # equal counts as not worse
        (0.5, 0.375, 0.0, False),  # worse, no tolerance
        (0.5, 0.375, 0.125, True),  # worse by exactly the tolerance
        (0.5, 0.25, 0.125, False),  # worse by more than the tolerance
        (0.5, 0.5, -0.125, False),  # a negative tolerance demands an improvement of 0.125
        (0.5, 0.625, -0.125, True),
        (0.5, 0.5625, -0.125, False),
    ],
)
def test_promotion_compares_val_recall_against_serving_minus_tolerance(
    tmp_path: Path, serving: float, candidate: float, tolerance: float, promoted: bool
) -> None:
    ok, reason = promotion_decision(candidate, serving, tolerance)
    assert ok is promoted, reason
    assert f"{candidate:.4f}" in reason and f"{serving:.4f}" in reason
    assert ("worse" in reason) is (not promoted)
    # a reference (the last model promoted on merit) above the champion raises the bar
    assert promotion_decision(candidate, serving, tolerance, reference=serving + 1.0)[0] is False
    assert promotion_decision(candidate, serving, tolerance, reference=serving - 1.0) == (ok, reason)


def test_promotion_with_nothing_serving_and_when_forced() -> None:
    assert promotion_decision(0.125, None, 0.0) == (True, "no model was serving")
    assert promotion_decision(0.125, 0.5, 0.0)[0] is False
    assert promotion_decision(0.125, 0.5, 0.0, force=True) == (True, "forced")


@pytest.mark.parametrize(("serving", "candidate"), [(0.5, None), (0.5, float("nan")), (float("nan"), 0.5)])
def test_a_missing_validation_metric_is_never_promoted_unforced(
    serving: float, candidate: float | None
) -> None:
    ok, reason = promotion_decision(candidate, serving, 1.0)
    assert ok is False
    assert reason == f"cannot compare: val recall@20 missing (serving {serving}, candidate {candidate})"
    assert promotion_decision(candidate, serving, 1.0, force=True) == (True, "forced")


def test_val_recall20_reads_the_val_section_only() -> None:
    manifest, _ = svc_artifacts.build(recall=None, n_users=3, n_items=12, dim=2)
    assert manifest.val_recall20() is None
    manifest.metrics = {"test": {"recall@20": 0.9}, "val": {"recall@10": 0.3}}
    assert manifest.val_recall20() is None
    manifest.metrics = {"val": {"recall@20": "0.25"}}
    assert manifest.val_recall20() == 0.25


# ------------------------------------------------------------------------------------ write details


def test_write_stores_the_contract_dtypes_whatever_the_input_dtypes(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    arrays.user_embeddings = arrays.user_embeddings.astype(np.float64)
    arrays.item_embeddings = arrays.item_embeddings.astype(np.float64)
    arrays.user_id_side = arrays.user_id_side.astype(np.float64)
    arrays.item_layer_embeddings = arrays.item_layer_embeddings.astype(np.float64)
    arrays.modality_features = {k: v.astype(np.float64) for k, v in arrays.modality_features.items()}
    arrays.item_popularity = arrays.item_popularity.astype(np.int32)
    arrays.train_indices = arrays.train_indices.astype(np.int64)
    arrays.train_indptr = arrays.train_indptr.astype(np.int32)
    art = load_artifact(contract.write_artifact(tmp_path / "a" / "b", manifest, arrays))  # parents made
    a = art.arrays
    for arr in (a.user_embeddings, a.item_embeddings, a.user_id_side, a.item_layer_embeddings):
        assert arr.dtype == np.float32
    assert {v.dtype for v in a.modality_features.values()} == {np.dtype(np.float32)}
    assert a.item_popularity.dtype == np.int64 and a.train_indptr.dtype == np.int64
    assert a.train_indices.dtype == np.int32
    assert art.manifest.files[contract.USER_EMB].dtype == "float32"


def test_ids_are_written_as_utf8_json_lists(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(
        version="v1", n_users=3, n_items=12, dim=2, user_ids=["émile", "zoë", "u2"]
    )
    path = contract.write_artifact(tmp_path, manifest, arrays)
    assert '"émile"' in (path / contract.USER_IDS).read_text(encoding="utf-8")
    assert load_artifact(path).arrays.user_ids == ["émile", "zoë", "u2"]
    assert contract.read_manifest(path).files[contract.USER_IDS].shape == (3,)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: setattr(a, "user_ids", ["u0", "u0", *a.user_ids[2:]]), "user_ids are not unique"),
        (lambda a: setattr(a, "item_ids", ["i0", "i0", *a.item_ids[2:]]), "item_ids are not unique"),
        (lambda a: a.modality_features.pop("audio"), "modality names differ"),
        (
            lambda a: a.modality_features.update(audio=np.zeros((12, 3), dtype=np.float32)),
            r"modality 'audio' shape \(12, 3\)",
        ),
        (
            lambda a: setattr(a, "item_popularity", np.zeros(11, dtype=np.int64)),
            r"item_popularity shape \(11,\)",
        ),
    ],
)
def test_write_refuses_inconsistent_arrays_with_a_message(tmp_path: Path, edit, message: str) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    edit(arrays)
    with pytest.raises(ArtifactError, match=f"cannot write artifact: {message}"):
        contract.write_artifact(tmp_path, manifest, arrays)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    arrays.item_popularity = np.array(["x"] * 12)  # passes the shape check, fails astype(int64)
    with pytest.raises(ValueError):
        contract.write_artifact(tmp_path, manifest, arrays)
    assert list(tmp_path.iterdir()) == []  # the temporary directory is removed


def test_list_versions_skips_directories_without_a_manifest(tmp_path: Path) -> None:
    svc_artifacts.write(tmp_path, set_current=False, version="v1", n_users=5, n_items=12, dim=2)
    (tmp_path / ".tmp-half-written").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert contract.list_versions(tmp_path) == ["v1"]
    assert contract.list_versions(tmp_path / "absent") == []


def test_timestamps_are_utc() -> None:
    assert contract.utc_now().endswith("+00:00")


# ------------------------------------------------------------------------------------ user-vector maths


def _tiny_artifact(tmp_path: Path, graph_norm: str) -> contract.Artifact:
    manifest, arrays = svc_artifacts.build(
        version=f"v-{graph_norm}", n_users=4, n_items=12, dim=2, n_layers=2
    )
    manifest.graph_norm = graph_norm
    arrays.item_popularity = np.arange(12, dtype=np.int64)  # item 0 has degree 0 (counted as 1)
    return load_artifact(contract.write_artifact(tmp_path, manifest, arrays))


def test_modality_user_features_is_eq2_on_a_hand_example() -> None:
    feats = np.array([[1.0, 2.0], [10.0, 10.0], [3.0, -2.0]], dtype=np.float32)
    out = contract.modality_user_features(feats, [0, 2])
    assert out.dtype == np.float32 and out.shape == (2,)
    np.testing.assert_allclose(out, np.array([4.0, 0.0]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(contract.modality_user_features(feats, [1]), [10.0, 10.0])
    empty = contract.modality_user_features(feats, [])
    assert empty.dtype == np.float32 and empty.tolist() == [0.0, 0.0]


def test_l2_normalize_rows_and_leaves_zero_vectors_at_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(contract.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(contract.l2_normalize(x, axis=0)[:, 0], [1.0, 0.0, 0.0])
    tiny = np.array([1e-13, 0.0])
    np.testing.assert_allclose(contract.l2_normalize(tiny), tiny / 1e-12)  # eps bounds the norm below


@pytest.mark.parametrize("graph_norm", ["paper", "symmetric"])
def test_fold_in_id_side_on_a_hand_computed_example(tmp_path: Path, graph_norm: str) -> None:
    art = _tiny_artifact(tmp_path, graph_norm)
    layers = art.arrays.item_layer_embeddings.astype(np.float64)  # (L=2, 12, 2)
    items = [0, 3, 7]
    # paper: 1/sqrt(|N_u|); symmetric: 1/sqrt(|N_u| |N_i|), a degree of 0 counting as 1
    degrees = np.ones(3) if graph_norm == "paper" else np.array([1.0, 3.0, 7.0])
    w = 1 / np.sqrt(3 * degrees)
    expected = sum(w[j] * layers[l, i] for l in range(2) for j, i in enumerate(items)) / 3
    got = contract.fold_in_id_side(art, items)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    one = contract.fold_in_id_side(art, [5])
    w5 = 1.0 if graph_norm == "paper" else 1 / np.sqrt(5)
    np.testing.assert_allclose(one, w5 * (layers[0, 5] + layers[1, 5]) / 3, rtol=1e-5)
    empty = contract.fold_in_id_side(art, [])
    assert empty.dtype == np.float32 and empty.tolist() == [0.0, 0.0]


def test_user_vector_is_float32_eq12_for_known_and_unknown_users(tmp_path: Path) -> None:
    art = _tiny_artifact(tmp_path, "symmetric")
    items = np.array([1, 4])
    side = sum(
        contract.l2_normalize(contract.modality_user_features(f, items).astype(np.float64))
        for f in art.arrays.modality_features.values()
    )
    known = contract.user_vector(art, items, user_index=2)
    assert known.dtype == np.float32
    np.testing.assert_allclose(known, art.arrays.user_id_side[2] + art.manifest.omega * side, rtol=1e-5)
    unknown = contract.user_vector(art, items)
    assert unknown.dtype == np.float32
    np.testing.assert_allclose(
        unknown, contract.fold_in_id_side(art, items) + art.manifest.omega * side, rtol=1e-5
    )
    assert contract.modality_side(art, items).dtype == np.float32


def test_manifest_json_keeps_parent_notes_and_content() -> None:
    """to_json writes parent_version, notes and content under their own keys; from_json reads them back."""
    m = contract.Manifest(
        model_version="v2",
        created_at="2026-12-02T13:00:00Z",
        dataset_fingerprint="abc",
        n_users=3,
        n_items=4,
        dim=2,
        n_layers=1,
        omega=0.5,
        graph_norm="symmetric",
        modalities=[{"name": "image", "raw_dim": 5, "dim": 2}],
        model_config={},
        train_config={},
        metrics={},
        parent_version="v1",
        notes={"why": "test"},
        content={"kind": "linear"},
    )
    out = m.to_json()
    assert (out["parent_version"], out["notes"], out["content"]) == (
        "v1",
        {"why": "test"},
        {"kind": "linear"},
    )
    back = contract.Manifest.from_json(out)
    assert (back.parent_version, back.notes, back.content) == ("v1", {"why": "test"}, {"kind": "linear"})
    m.content = None
    assert "content" not in m.to_json()


# ------------------------------------------------------------------------------------ served_recall
#
# A hand example: 6 items whose embeddings are the unit vectors, so a user's score of item j is
# component j of the user's vector and each top-k below can be read off the vectors.
#   exported h_u        a: [5,0,4,3,0,0]  b: [5,0,0,0,0,4]  f: [0,0,0,0,6,7]
#   trained ID side     a: [0,9,0,1,0,0]  b: [0,8,1,3,8,2]  f: [2,3,0,0,0,0]
#   item layer E^(0)    i0: [3,0,2,0,0,0]  i1: [4,0,0,0,0,0]  i2: [0,1,0,0,0,0]
#                       i3: [0,0,0,0,1,0]  i4: [0,0,1,0,0,0]  i5: [0,0,0,1,0,3]
# omega = 0, so Eq. 12's modality side vanishes and a recomputed vector is the ID side itself.
# Trained histories: a {i0}, b {i1}, f {i3}.


def _recall_artifact(tmp_path: Path) -> contract.Artifact:
    eye = np.eye(6, dtype=np.float32)
    f32 = lambda rows: np.array(rows, dtype=np.float32)  # noqa: E731
    manifest = contract.Manifest(
        model_version="v-recall",
        created_at="2026-12-02T14:00:00+00:00",
        dataset_fingerprint="hand",
        n_users=3,
        n_items=6,
        dim=6,
        n_layers=1,
        omega=0.0,
        graph_norm="paper",
        modalities=[{"name": "image", "raw_dim": 6, "dim": 6}],
        model_config={},
        train_config={},
        metrics={},
    )
    arrays = contract.ArtifactArrays(
        user_ids=["a", "b", "f"],
        item_ids=[f"i{j}" for j in range(6)],
        user_embeddings=f32([[5, 0, 4, 3, 0, 0], [5, 0, 0, 0, 0, 4], [0, 0, 0, 0, 6, 7]]),
        item_embeddings=eye,
        user_id_side=f32([[0, 9, 0, 1, 0, 0], [0, 8, 1, 3, 8, 2], [2, 3, 0, 0, 0, 0]]),
        item_layer_embeddings=f32(
            [
                [
                    [3, 0, 2, 0, 0, 0],
                    [4, 0, 0, 0, 0, 0],
                    [0, 1, 0, 0, 0, 0],
                    [0, 0, 0, 0, 1, 0],
                    [0, 0, 1, 0, 0, 0],
                    [0, 0, 0, 1, 0, 3],
                ]
            ]
        ),
        modality_features={"image": eye},
        train_indptr=np.array([0, 1, 2, 3], dtype=np.int64),
        train_indices=np.array([0, 1, 3], dtype=np.int32),
        item_popularity=np.array([1, 1, 0, 1, 0, 0], dtype=np.int64),
    )
    return load_artifact(contract.write_artifact(tmp_path, manifest, arrays))


# a: known, same history as trained -> exported h_u, i0 excluded        -> top-2 {i2, i3}
# b: known, other history {i1, i4}   -> its ID side, i1 and i4 excluded  -> top-2 {i3, i5}
# c: unknown, history {i0, i5} ("ghost" is not in the catalogue, skipped) -> folded in:
#    (E_i0 + E_i5) / sqrt(2) / (L + 1) ~ [3,0,2,1,0,3], i0 and i5 excluded -> top-2 {i2, i3}
# f: known, no entry in train (empty history) -> its ID side             -> top-2 {i0, i1}
# d: no targets -> not counted
_RECALL_TRAIN = {"a": ["i0"], "b": ["i1", "i4"], "c": ["i0", "i5", "ghost"], "d": ["i2"]}
_RECALL_TARGET = {"a": ["i2", "not-in-catalogue"], "b": ["i3", "i5", "i2"], "c": ["i2"], "f": ["i1"], "d": []}


def test_served_recall_on_a_hand_example(tmp_path: Path) -> None:
    art = _recall_artifact(tmp_path)
    # each user alone: a 1 of 2 (the unknown item is a miss), b 2 of 3, c 1 of 1, f 1 of 1
    per_user = {"a": 0.5, "b": 2 / 3, "c": 1.0, "f": 1.0}
    for user, expected in per_user.items():
        got = contract.served_recall(art, _RECALL_TRAIN, {user: _RECALL_TARGET[user]}, k=2)
        assert got == (pytest.approx(expected, abs=1e-12), 1), user
    recall, n = contract.served_recall(art, _RECALL_TRAIN, _RECALL_TARGET, k=2)
    assert n == 4 and recall == pytest.approx((0.5 + 2 / 3 + 1.0 + 1.0) / 4, abs=1e-12)
    # k = 1: a's top item is i2 (1 of 2), b's i3 (1 of 3), c's i2, f's i1
    assert contract.served_recall(art, _RECALL_TRAIN, _RECALL_TARGET, k=1) == (
        pytest.approx((0.5 + 1 / 3 + 1.0 + 1.0) / 4, abs=1e-12),
        4,
    )
    # the default k = 20 is more than the 6 items: every catalogue item counts as recommended
    assert contract.served_recall(art, _RECALL_TRAIN, _RECALL_TARGET) == (
        pytest.approx(3.5 / 4, abs=1e-12),
        4,
    )
    assert contract.served_recall(art, _RECALL_TRAIN, {"d": [], "a": []}) == (0.0, 0)
    # a target the user already has is excluded, so it is never shown, even when k exceeds the items
    # left after the history (the top k then also holds excluded ones: they are not recommendations)
    assert contract.served_recall(art, _RECALL_TRAIN, {"d": ["i2"]}) == (0.0, 1)
    assert contract.served_recall(art, _RECALL_TRAIN, {"d": ["i2", "i3"]}, k=6) == (0.5, 1)


def test_served_recall_counts_every_user_once_across_blocks(tmp_path: Path) -> None:
    # more users than one scoring block of 1024: 1030 unknown users, each folded in from {i0, i5}
    # (top-2 {i2, i3}) with the target i2, so each has recall 1 and the mean is exactly 1; a user
    # skipped at the block boundary gives 1029/1030, one counted twice 1031/1030
    art = _recall_artifact(tmp_path)
    users = [f"x{n}" for n in range(1030)]
    train = {u: ["i0", "i5"] for u in users}
    target = {u: ["i2"] for u in users}
    assert contract.served_recall(art, train, target, k=2) == (1.0, 1030)


@pytest.mark.parametrize("k", [1, 7])
def test_served_recall_equals_a_brute_force_ranking_over_300_items(tmp_path: Path, k: int) -> None:
    # known users with their trained histories score with the exported h_u: the reference ranks
    # every item by a float64 inner product in a plain loop. 300 items, because numpy's
    # argpartition happens to return the right top item for kth = -1 on small arrays
    art = load_artifact(svc_artifacts.write(tmp_path, seed=4, n_users=20, n_items=300, dim=4))
    a = art.arrays
    rng = np.random.default_rng(1)
    train = {a.user_ids[u]: [a.item_ids[i] for i in art.user_items(u)] for u in range(20)}
    target, expected = {}, []
    for u, user in enumerate(a.user_ids):
        seen = set(art.user_items(u).tolist())
        scores = [
            (-float(a.user_embeddings[u].astype(np.float64) @ a.item_embeddings[i]), i) for i in range(300)
        ]
        top = [i for _, i in sorted(s for s in scores if s[1] not in seen)][:k]
        # targets: half of the top k (at least one) and three items outside it
        hits = top[: max(1, k // 2)]
        misses = [int(i) for i in rng.choice(sorted(set(range(300)) - seen - set(top)), 3, replace=False)]
        target[user] = [a.item_ids[i] for i in hits + misses]
        expected.append(len(hits) / len(target[user]))
    got, n = contract.served_recall(art, train, target, k=k)
    assert n == 20 and got == pytest.approx(sum(expected) / 20, abs=1e-12)


# ------------------------------------------------------------------------------------ mutation survivors


def test_new_model_version_uses_utc_whatever_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from datetime import UTC, datetime

    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no daylight saving time
    time.tzset()
    try:
        stamp = contract.new_model_version()[: len("20260102T030405Z")]
        now = datetime.now(UTC)
    finally:
        monkeypatch.undo()
        time.tzset()
    written = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((now - written).total_seconds()) < 60  # local (Tokyo) time would be 9 hours ahead


def test_write_refuses_object_arrays_so_every_file_loads_without_pickle(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    arrays.extra = {"objects.npy": np.array([{"a": 1}, None], dtype=object)}
    with pytest.raises(ValueError, match="allow_pickle=False"):
        contract.write_artifact(tmp_path, manifest, arrays)
    assert list(tmp_path.iterdir()) == []


def _record_replaces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Spy on os.replace (the atomic renames of write_artifact and set_current)."""
    calls: list[tuple[Path, Path]] = []
    real = os.replace

    def spy(src, dst):
        calls.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    return calls


def test_write_builds_the_version_in_a_hidden_temporary_directory_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in the root: the final rename stays on one file system (atomic); hidden ".tmp-": never
    # mistaken for a version (version names cannot start with ".")
    root = tmp_path / "store"
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    calls = _record_replaces(monkeypatch)
    path = contract.write_artifact(root, manifest, arrays)
    assert path == root / "v1"
    [(src, dst)] = calls
    assert dst == root / "v1" and src.parent == root and src.name.startswith(".tmp-")


def test_set_current_writes_a_hidden_temporary_file_in_the_root_then_renames_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc_artifacts.write(tmp_path, set_current=False, version="v1", n_users=5, n_items=12, dim=2)
    calls = _record_replaces(monkeypatch)
    contract.set_current(tmp_path, "v1")
    [(src, dst)] = calls
    assert dst == tmp_path / contract.CURRENT
    assert src.parent == tmp_path and src.name.startswith(".current-")
    assert (tmp_path / contract.CURRENT).read_text() == "v1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [contract.CURRENT, "v1"]


def test_set_current_refuses_a_folder_whose_manifest_names_another_version(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    contract.write_artifact(tmp_path / "elsewhere", manifest, arrays)
    os.rename(tmp_path / "elsewhere" / "v1", tmp_path / "v2")
    with pytest.raises(ArtifactError) as info:
        contract.set_current(tmp_path, "v2")
    assert str(info.value) == (
        f"{tmp_path / 'v2'}: folder name 'v2' and the manifest's model_version 'v1' disagree"
    )
    assert contract.read_current(tmp_path) is None


@pytest.mark.parametrize(
    ("candidate", "champion", "reference", "reason"),
    [
        (0.5, 0.5, None, "val recall@20 0.5000 vs serving 0.5000 (tolerance 0.0)"),
        (0.25, 0.5, None, "val recall@20 0.2500 is worse than serving 0.5000 by more than 0.0"),
        # a reference equal to the champion is the same bar: it is named as the serving model's
        (0.5, 0.5, 0.5, "val recall@20 0.5000 vs serving 0.5000 (tolerance 0.0)"),
        (0.75, 0.5, 0.75, "val recall@20 0.7500 vs reference 0.7500 (tolerance 0.0)"),
        (0.5, 0.25, 0.75, "val recall@20 0.5000 is worse than reference 0.7500 by more than 0.0"),
        (0.5, 0.25, float("nan"), "val recall@20 0.5000 vs serving 0.2500 (tolerance 0.0)"),
    ],
)
def test_promotion_reasons_name_the_bar_exactly(
    candidate: float, champion: float, reference: float | None, reason: str
) -> None:
    assert promotion_decision(candidate, champion, 0.0, reference=reference)[1] == reason


def test_extra_arrays_are_written_verified_and_loaded_back_as_given(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    mapper = np.arange(6, dtype=np.float64).reshape(3, 2) / 4
    filled = np.array([3, 7], dtype=np.int64)
    arrays.extra = {"content_mapper.npy": mapper, "content_filled_items.npy": filled}
    path = contract.write_artifact(tmp_path, manifest, arrays)
    art = load_artifact(path)
    assert sorted(art.arrays.extra) == ["content_filled_items.npy", "content_mapper.npy"]
    # extras keep their own dtype (only the contract's arrays are cast)
    assert art.arrays.extra["content_mapper.npy"].dtype == np.float64
    np.testing.assert_array_equal(art.arrays.extra["content_mapper.npy"], mapper)
    np.testing.assert_array_equal(art.arrays.extra["content_filled_items.npy"], filled)
    entry = art.manifest.files["content_mapper.npy"]
    assert (entry.shape, entry.dtype) == ((3, 2), "float64")
    assert entry.sha256 == contract.sha256_file(path / "content_mapper.npy")
    # and they are checksum-verified like the contract's own files
    copy = _writable_copy(path, tmp_path / "copy")
    svc_artifacts.tamper(copy, "content_mapper.npy")
    with pytest.raises(ArtifactError, match="content_mapper.npy: sha256 mismatch"):
        load_artifact(copy)


@pytest.mark.parametrize(
    "name",
    [
        contract.USER_EMB,
        contract.modality_file("audio"),
        contract.MANIFEST,
        "bad name.npy",
        "notes.txt",
        ".x.npy",
    ],
)
def test_extra_array_names_that_are_reserved_or_not_npy_are_refused(tmp_path: Path, name: str) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    arrays.extra = {"fine.npy": np.zeros(2), name: np.zeros(2)}
    with pytest.raises(ArtifactError) as info:
        contract.write_artifact(tmp_path, manifest, arrays)
    assert str(info.value) == f"cannot write artifact: extra array name {name!r} is reserved or not *.npy"
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_file_is_indented_in_field_order(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    text = (contract.write_artifact(tmp_path, manifest, arrays) / contract.MANIFEST).read_text()
    # to_json's order (not sorted), two-space indent: readable, and diffs between versions line up
    assert text.startswith('{\n  "format_version": 1,\n  "model_version": "v1",\n  "parent_version": null,\n')


def test_a_failed_write_raises_its_own_error_even_when_the_cleanup_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the temporary directory is gone (removed by someone else) when the final rename fails
    def replace(src, dst):
        import shutil

        shutil.rmtree(src)
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", replace)
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    with pytest.raises(OSError, match="rename failed"):
        contract.write_artifact(tmp_path, manifest, arrays)
    assert list(tmp_path.iterdir()) == []


def _replace_file(path: Path, name: str, data: bytes, shape: list[int], dtype: str) -> None:
    """Swap one file's bytes and record their true checksum, so only the later checks can object."""
    (path / name).write_bytes(data)

    def edit(m):
        m["files"][name] = {"sha256": contract.sha256_file(path / name), "shape": shape, "dtype": dtype}

    _rewrite_manifest(path, edit)


def test_the_checksum_message_shows_both_digests(artifact: Path, tmp_path: Path) -> None:
    copy = _writable_copy(artifact, tmp_path)
    listed = contract.read_manifest(copy).files[contract.ITEM_EMB].sha256
    svc_artifacts.tamper(copy, contract.ITEM_EMB)
    actual = contract.sha256_file(copy / contract.ITEM_EMB)
    with pytest.raises(ArtifactError) as info:
        load_artifact(copy)
    assert str(info.value) == (
        f"{copy / contract.ITEM_EMB}: sha256 mismatch (manifest {listed[:12]}..., file {actual[:12]}...)"
    )


def test_malformed_id_files_are_named_with_what_was_expected(artifact: Path, tmp_path: Path) -> None:
    copy = _writable_copy(artifact, tmp_path)
    _replace_file(copy, contract.USER_IDS, b"[not json", [12], "json")
    with pytest.raises(ArtifactError) as info:
        load_artifact(copy)
    assert str(info.value).startswith(f"{copy / contract.USER_IDS}: malformed JSON (Expecting value")
    # valid JSON, but an object of 12 entries instead of a list of 12 ids
    ids = json.dumps({f"u{n}": n for n in range(12)}).encode()
    _replace_file(copy, contract.USER_IDS, ids, [12], "json")
    with pytest.raises(ArtifactError) as info:
        load_artifact(copy)
    assert str(info.value) == f"{copy / contract.USER_IDS}: expected a list of 12 ids"


def test_arrays_are_loaded_without_unpickling(artifact: Path, tmp_path: Path) -> None:
    copy = _writable_copy(artifact, tmp_path)
    np.save(copy / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    _replace_file(copy, "objects.npy", (copy / "objects.npy").read_bytes(), [2], "object")
    with pytest.raises(ArtifactError) as info:
        load_artifact(copy)
    assert str(info.value).startswith(
        f"{copy / 'objects.npy'}: unreadable array (Object arrays cannot be loaded"
    )


def _every_field_manifest() -> contract.Manifest:
    """A manifest whose every field holds a distinct, non-default value."""
    return contract.Manifest(
        model_version="v7",
        created_at="2026-12-02T15:00:00+00:00",
        dataset_fingerprint="fp-123",
        n_users=5,
        n_items=12,
        dim=2,
        n_layers=3,
        omega=0.25,
        graph_norm="symmetric",
        modalities=[{"name": "image", "raw_dim": 9, "dim": 2}],
        model_config={"embed_dim": 2, "heads": 1},
        train_config={"lr": 0.001},
        metrics={"val": {"recall@20": 0.125}},
        files={
            "a.npy": contract.FileEntry("ab" * 32, (3, 2), "float32"),
            "b.json": contract.FileEntry("cd" * 32, (4,), "json"),
        },
        parent_version="v6",
        notes={"reason": "nightly"},
        content={"kind": "linear"},
    )


def test_manifest_from_json_reads_back_every_field_of_to_json() -> None:
    m = _every_field_manifest()
    data = json.loads(json.dumps(m.to_json()))  # through the file format: tuples become lists
    assert contract.Manifest.from_json(data) == m
    # manifests written before parent_version, notes and content existed still load
    for key in ("parent_version", "notes", "content"):
        data.pop(key)
    old = contract.Manifest.from_json(data)
    assert (old.parent_version, old.notes, old.content) == (None, {}, None)
    assert old.created_at == "2026-12-02T15:00:00+00:00" and old.dataset_fingerprint == "fp-123"
    assert old.format_version == 1 and old.model_config == {"embed_dim": 2, "heads": 1}


def test_read_manifest_returns_the_manifest_write_artifact_wrote(tmp_path: Path) -> None:
    manifest, arrays = svc_artifacts.build(version="v1", n_users=5, n_items=12, dim=2)
    manifest.parent_version, manifest.notes, manifest.train_config = "v0", {"k": [1, 2]}, {"epochs": 3}
    path = contract.write_artifact(tmp_path, manifest, arrays)
    assert contract.read_manifest(path) == manifest
    art = load_artifact(str(path))  # a str path is accepted and kept as a Path
    assert art.manifest == manifest and art.path == path and isinstance(art.path, Path)


def test_manifest_errors_name_the_manifest_file(artifact: Path, tmp_path: Path) -> None:
    copy = _writable_copy(artifact, tmp_path)
    _rewrite_manifest(copy, lambda m: m.pop("n_items"))
    with pytest.raises(ArtifactError) as info:
        load_artifact(copy)
    assert str(info.value) == f"{copy / contract.MANIFEST}: missing keys ['n_items']"
    # from_json alone names manifest.json, and lists every required key that is missing
    with pytest.raises(ArtifactError) as info:
        contract.Manifest.from_json({"model_version": "v1", "omega": 0.5})
    assert str(info.value) == (
        "manifest.json: missing keys ['format_version', 'created_at', 'dataset_fingerprint', 'n_users', "
        "'n_items', 'dim', 'n_layers', 'graph_norm', 'modalities', 'model_config', 'train_config', "
        "'metrics', 'files']"
    )
