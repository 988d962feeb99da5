"""Artifact contract between the trainer and the service (numpy + stdlib only)."""

from artifact.contract import (
    Artifact,
    ArtifactArrays,
    ArtifactError,
    Manifest,
    fold_in_id_side,
    list_versions,
    load_artifact,
    modality_side,
    modality_user_features,
    new_model_version,
    promotion_decision,
    read_current,
    read_manifest,
    set_current,
    user_vector,
    write_artifact,
)

__all__ = [
    "Artifact",
    "ArtifactArrays",
    "ArtifactError",
    "Manifest",
    "fold_in_id_side",
    "list_versions",
    "load_artifact",
    "modality_side",
    "modality_user_features",
    "new_model_version",
    "promotion_decision",
    "read_current",
    "read_manifest",
    "set_current",
    "user_vector",
    "write_artifact",
]
