"""Retrain overrides checked at POST /retrain against the serving manifest's trainer config."""

from __future__ import annotations

from service.overrides import check_overrides

MODEL = {
    "embed_dim": 64,
    "omega": 0.55,
    "use_gumbel": True,
    "graph_norm": "symmetric",
    "n_items": 10,
    "lr": 0.1,
}
TRAIN = {"epochs": 40, "lr": 0.001, "seeds": [1]}


def _msgs(overrides: dict) -> dict[str, str]:
    return {e["loc"][-1]: e["msg"] for e in check_overrides(overrides, MODEL, TRAIN)}


def test_good_overrides_pass() -> None:
    good = {"epochs": 3, "omega": 1, "model.use_gumbel": False, "train.lr": 0.01, "graph_norm": "paper"}
    assert check_overrides(good, MODEL, TRAIN) == []
    assert check_overrides({"seeds": [1, 2]}, MODEL, TRAIN) == []


def test_each_bad_override_is_named_with_why() -> None:
    msgs = _msgs(
        {
            "epoch": 3,  # typo
            "omega": "high",  # wrong type
            "embed_dim": 2.5,  # float for an int
            "epochs": True,  # bool is not an int
            "use_gumbel": 1,  # int is not a bool
            "lr": 0.1,  # in both sections
            "n_items": 5,  # data-derived
            "data.x": 1,  # unknown section
            "train.omega": 0.3,  # model key under train
        }
    )
    assert "did you mean 'epochs'" in msgs["epoch"]
    assert "must be float" in msgs["omega"] and "must be int" in msgs["embed_dim"]
    assert "must be int" in msgs["epochs"] and "must be bool" in msgs["use_gumbel"]
    assert "ambiguous" in msgs["lr"] and "set from the data" in msgs["n_items"]
    assert (
        "unknown section 'data'" in msgs["data.x"]
        and "unknown trainer config key 'omega'" in msgs["train.omega"]
    )
    assert len(msgs) == 9
