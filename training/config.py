"""Training configuration: dataclass defaults, then a YAML file, then ``key=value`` overrides.

Unknown keys are an error at every level. A YAML file has two sections, ``model:`` (fields of
``model.MMSSLConfig`` except the sizes, which come from the data) and ``train:`` (``TrainConfig``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.config import MMSSLConfig

# Set from the data, never from a config file.
DATA_DERIVED = ("n_users", "n_items", "modality_dims")


VIEW_INDEXES = ("exact", "ivf")


class ConfigError(ValueError):
    """A config file or override is malformed, unknown or out of range."""


@dataclass
class TrainConfig:
    """Optimisation settings (paper section 3.3 and 4.1.4; authors' TikTok values as defaults)."""

    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 1024  # (user, positive, negative) triples per step
    lr: float = 5.5e-4  # AdamW, model (generator side)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    d_lr: float = 3e-4  # Adam, discriminator
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    cl_weight: float = 0.03  # λ2 (Eq. 13)
    g_weight: float = 1.8e-3  # λ3 (Eq. 13)
    l2_weight: float = 1e-4  # λ4 (Eq. 13), on the batch's ID embeddings
    gp_weight: float = 1.0  # λ1 (Eq. 7)
    cl_temperature: float = 0.5  # τ' (Eq. 11)
    adv_users: int = 256  # users per step in the adversarial SSL task (rows of width |I|)
    # Item columns the discriminator sees per step: 0 = all |I| (the paper); N > 0 = the adversarial
    # users' observed items plus uniform others up to N, the same columns for real and fake rows.
    # Bounds the adversarial step's cost (D's first layer, A_hat^m blocks) as |I| grows.
    adv_item_columns: int = 0
    # Users of the step's batch in the Eq. 11 InfoNCE: 0 = all of them (the paper); N > 0 = a
    # uniform sample of N. Its similarity matrices are (users x users): with a batch that grows
    # with the data this term grows with its square, and N bounds it.
    cl_users: int = 0
    view_refresh_steps: int = 20  # rebuild the Eq. 8 top-k views every N steps
    # N > 0: rebuild them N times per epoch instead (every ceil(steps per epoch / N) steps), a
    # schedule that does not grow with the number of steps; 0 = every view_refresh_steps steps.
    view_refreshes_per_epoch: int = 0
    # How the Eq. 8 top-k items are found: "exact" scores every item for every user (|U| x |I|,
    # the paper); "ivf" searches a FAISS inverted-file index over the items (inner product of the
    # normalised features = cosine), probing view_ivf_probe of view_ivf_lists cells per user
    # (0 = 4 sqrt(|I|) cells): about |U| x sqrt(|I|) work, approximate (docs/MODEL.md).
    view_index: str = "exact"
    view_ivf_lists: int = 0
    view_ivf_probe: int = 16
    # Compute Eq. 2 for a step on the graph without that step's positive edges, so that the
    # modality side cannot score a training positive through its own features (see docs/MODEL.md).
    holdout_batch_edges: bool = True
    patience: int = 8  # epochs without validation Recall@20 improvement before stopping
    eval_every: int = 1  # epochs between validation runs
    eval_batch_users: int = 2048
    # Validation during training on a fixed seeded sample of this many users with validation
    # items (0 = all of them): bounds its |U| x |I| ranking at scale; final evaluation uses all.
    eval_users: int = 0
    seed: int = 2026
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = all cores
    max_minutes: float = 0.0  # wall-clock budget; 0 = none

    def validate(self) -> None:
        problems: list[str] = []
        positive = ("epochs", "batch_size", "lr", "d_lr", "cl_temperature", "adv_users")
        for name in positive:
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        for name in ("view_refresh_steps", "patience", "eval_every", "eval_batch_users"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        nonneg = ("weight_decay", "cl_weight", "g_weight", "l2_weight", "gp_weight", "max_minutes")
        for name in nonneg:
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in (
            "adv_item_columns",
            "cl_users",
            "view_refreshes_per_epoch",
            "view_ivf_lists",
            "eval_users",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.view_index not in VIEW_INDEXES:
            problems.append(f"view_index must be one of {', '.join(VIEW_INDEXES)} (got {self.view_index!r})")
        if self.view_ivf_probe < 1:
            problems.append(f"view_ivf_probe must be >= 1 (got {self.view_ivf_probe})")
        if self.adv_users < 2:
            problems.append("adv_users must be >= 2 (batch normalisation in D)")
        if len(self.d_betas) != 2 or not all(0 <= b < 1 for b in self.d_betas):
            problems.append(f"d_betas must be two numbers in [0, 1) (got {self.d_betas})")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            problems.append(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if problems:
            raise ConfigError("invalid train config: " + "; ".join(problems))


@dataclass
class Config:
    model: dict[str, Any]  # MMSSLConfig fields without the data-derived sizes
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "train": asdict(self.train)}


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


MODEL_FIELDS = {k: v for k, v in _fields(MMSSLConfig).items() if k not in DATA_DERIVED}
TRAIN_FIELDS = _fields(TrainConfig)


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _coerce(value: Any, f: dataclasses.Field[Any], where: str) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is list and isinstance(value, list):
        return value
    raise ConfigError(f"{where}: {f.name} must be {kind.__name__}, got {value!r}")


def default_config() -> Config:
    model_defaults = {k: getattr(MMSSLConfig(), k) for k in MODEL_FIELDS}
    return Config(model=model_defaults, train=TrainConfig())


def _apply(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    if section == "model":
        if key in DATA_DERIVED:
            raise ConfigError(f"{where}: {key} is set from the data and cannot be configured")
        if key not in MODEL_FIELDS:
            raise _unknown(key, list(MODEL_FIELDS), where + " [model]")
        cfg.model[key] = _coerce(value, MODEL_FIELDS[key], where)
    elif section == "train":
        if key not in TRAIN_FIELDS:
            raise _unknown(key, list(TRAIN_FIELDS), where + " [train]")
        setattr(cfg.train, key, _coerce(value, TRAIN_FIELDS[key], where))
    else:
        raise ConfigError(f"{where}: unknown section {section!r} (expected 'model' or 'train')")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` or ``key=value``."""
    cfg = default_config()
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: malformed YAML ({exc})".replace("\n", " ")) from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping with 'model' and/or 'train'")
        for section, values in data.items():
            if section not in ("model", "train"):
                raise ConfigError(f"{path}: unknown section {section!r} (expected 'model' or 'train')")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            for key, value in values.items():
                _apply(cfg, section, str(key), value, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value ({exc})") from exc
        if "." in key:
            section, key = key.split(".", 1)
        elif key in TRAIN_FIELDS and key in MODEL_FIELDS:
            raise ConfigError(f"override {item!r}: ambiguous, write model.{key} or train.{key}")
        elif key in TRAIN_FIELDS:
            section = "train"
        elif key in MODEL_FIELDS or key in DATA_DERIVED:
            section = "model"
        else:
            raise _unknown(key, list(TRAIN_FIELDS) + list(MODEL_FIELDS), f"override {item!r}")
        _apply(cfg, section, key, value, f"override {item!r}")
    cfg.train.validate()
    return cfg
