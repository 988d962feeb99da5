"""Check a retrain's trainer overrides at ``POST /retrain``, before a job is queued.

The API has no trainer (no torch, no ``training`` package), so the schema comes from the serving
model's manifest: ``model_config`` and ``train_config`` hold every key the trainer took, with the
value it used, and so its type. The rules mirror ``training.config`` (``key`` or ``model.key`` /
``train.key``; a key in both sections must name its section; data-derived keys cannot be set;
values must have the type of the key: an int is accepted for a float, never a bool for a number).
The job still validates everything itself; this only turns a bad key into a 422 now instead of a
failed job later. A key that the trainer gained after the serving model was trained is refused
until a model trained with it serves (or the override goes into RETRAIN_OVERRIDES, which is not
checked here).
"""

from __future__ import annotations

from collections.abc import Mapping
from difflib import get_close_matches
from typing import Any

# training.config.DATA_DERIVED: set from the data, never configurable
DATA_DERIVED = frozenset({"n_users", "n_items", "modality_dims"})


def _entry(key: str, value: Any, msg: str) -> dict[str, Any]:
    return {"type": "invalid_override", "loc": ("body", "overrides", key), "msg": msg, "input": value}


def _type_ok(expected: Any, value: Any) -> bool:
    if isinstance(expected, bool):
        return isinstance(value, bool)
    if isinstance(expected, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(expected, str):
        return isinstance(value, str)
    if isinstance(expected, list):
        return isinstance(value, list)
    return True  # a type the manifest does not pin down: the job decides


def check_overrides(
    overrides: Mapping[str, Any], model_config: Mapping[str, Any], train_config: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """422 entries (FastAPI's format), one per bad override; empty when all are acceptable."""
    sections = {"model": model_config, "train": train_config}
    errors: list[dict[str, Any]] = []
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section and section not in sections:
            errors.append(_entry(key, value, f"unknown section {section!r} (expected 'model' or 'train')"))
            continue
        if not section:
            owners = [s for s, keys in sections.items() if name in keys]
            if len(owners) > 1:
                errors.append(_entry(key, value, f"ambiguous: write model.{name} or train.{name}"))
                continue
            section = owners[0] if owners else ""
        if name in DATA_DERIVED:
            errors.append(_entry(key, value, f"{name} is set from the data and cannot be configured"))
            continue
        keys = sections.get(section) if section else None
        if keys is None or name not in keys:
            known = list(keys) if keys is not None else [*model_config, *train_config]
            close = get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(_entry(key, value, f"unknown trainer config key {name!r}{hint}"))
            continue
        expected = keys[name]
        if not _type_ok(expected, value):
            kind = type(expected).__name__
            errors.append(_entry(key, value, f"{name} must be {kind} like {expected!r}, got {value!r}"))
    return errors
