"""Seeded synthetic datasets in the MMSSL format, with planted multi-modal structure.

numpy + standard library only. Same arguments and seed => byte-identical files.

Generative process (k = ``n_factors``, one ``numpy.random.default_rng(seed)`` drawn in a fixed order):

1. Item latent factors ``z_i ~ N(0, I_k)``; user tastes ``theta_u ~ N(0, I_k)``.
2. Features of modality m: ``x_i^m = z_i W_m + feature_noise * eps``, with ``W_m ~ N(0, 1/k)`` of
   shape (k, d_m) and ``eps ~ N(0, I)``. The signal part has unit variance per coordinate, so
   ``feature_noise`` is the noise-to-signal standard-deviation ratio. The first modality is written
   float16, the others float32 (the loader must handle both).
3. Preference of user u over items:
   ``p_u(i) = (1 - beta) * softmax_i(theta_u . z_i / tau) + beta * pop_i``, with
   ``tau = sqrt(k) / TASTE_SHARPNESS`` (taste logits have standard deviation ``TASTE_SHARPNESS``)
   and ``pop`` a mild Zipf popularity over a random order of the items (``beta = POPULARITY_WEIGHT``).
4. Each user gets ``n_u = max(3, Poisson(mean_interactions))`` distinct items, drawn without
   replacement from ``p_u`` (Gumbel top-k, i.e. successive sampling).
5. Per user, 1 item goes to validation, 1 to test (when ``with_test``) and the rest to train, chosen
   at random among the user's items.

Edge cases planted on purpose:

* Cold items (about 5% of the items, at least 2; the real TikTok split has 6.9%) never enter train:
  they are sampled like any other item, but a cold draw that lands in a user's training part is
  replaced by the user's next warm draw, so cold items appear only in val/test (at their natural
  rate there).
* Two cold-start users get a single validation item and nothing else (absent from train.json).

Why modalities help: who interacts with item i depends only on ``z_i``, and every modality is a
noisy linear image of ``z_i``, so a model reading the features can place an item next to similar
items from its first epoch, cold items included. With ~``mean_interactions`` interactions per user
out of ``n_items`` items an ID embedding has only a handful of observations to learn from.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from training.data import FEATURE_SUFFIX, TEST_FILE, TRAIN_FILE, VAL_FILE

TASTE_SHARPNESS = 2.0  # std of the taste logits theta_u . z_i / tau
POPULARITY_WEIGHT = 0.2  # beta: share of the popularity distribution in p_u
ZIPF_EXPONENT = 0.8
COLD_ITEM_SHARE = 0.05
N_COLD_USERS = 2
_MODALITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_CHUNK = 1 << 22  # matrix entries per chunk of users (bounds memory for large datasets)


def _json_bytes(split: dict[str, list[int]]) -> bytes:
    return json.dumps(split).encode()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_synthetic(
    out_dir: str | Path,
    *,
    n_users: int = 400,
    n_items: int = 300,
    n_factors: int = 8,
    modalities: Mapping[str, int] = MappingProxyType({"image": 32, "audio": 16}),
    mean_interactions: float = 10,
    feature_noise: float = 0.3,
    with_test: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic MMSSL dataset folder into ``out_dir`` and return its path.

    ``modalities`` maps modality name -> feature dimension, in the order written (``{}``: an ID-only
    dataset). Existing files of the same names are overwritten; other
    ``*_feat.npy`` files or a stale ``test.json`` in ``out_dir`` are an error, as the loader would
    read them.
    """
    modalities = dict(modalities)
    holdout = 2 if with_test else 1
    n_cold = max(2, round(COLD_ITEM_SHARE * n_items))
    if n_users < N_COLD_USERS + 1:
        raise ValueError(f"n_users must be >= {N_COLD_USERS + 1}, got {n_users}")
    if n_items < n_cold + 3:
        raise ValueError(f"n_items must be >= {n_cold + 3}, got {n_items}")
    if n_factors < 1 or mean_interactions < 0 or feature_noise < 0:
        raise ValueError("n_factors must be >= 1, mean_interactions and feature_noise >= 0")
    for name, dim in modalities.items():
        if not _MODALITY_RE.fullmatch(name) or int(dim) < 1:
            raise ValueError(f"modality {name!r}: need a name of letters/digits/'-' and a dimension >= 1")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ours = {f"{name}{FEATURE_SUFFIX}" for name in modalities}
    stale = sorted(
        p.name
        for p in out.iterdir()
        if (p.name.endswith(FEATURE_SUFFIX) and p.name not in ours) or (p.name == TEST_FILE and not with_test)
    )
    if stale:
        raise ValueError(f"{out}: holds files the loader would read but this call would not write: {stale}")

    rng = np.random.default_rng(seed)
    k = n_factors
    item_factors = rng.standard_normal((n_items, k))  # z, (n_items, k)
    user_tastes = rng.standard_normal((n_users, k))  # theta, (n_users, k)

    files: dict[str, bytes] = {}
    for position, (name, dim) in enumerate(modalities.items()):
        projection = rng.standard_normal((k, int(dim))) / math.sqrt(k)  # W_m, (k, d_m)
        noise = feature_noise * rng.standard_normal((n_items, int(dim)))
        feats = item_factors @ projection + noise  # (n_items, d_m)
        dtype = np.float16 if position == 0 else np.float32
        files[f"{name}{FEATURE_SUFFIX}"] = _npy_bytes(feats.astype(dtype))

    ranks = rng.permutation(n_items)  # popularity rank of each item
    popularity = 1.0 / (ranks + 1.0) ** ZIPF_EXPONENT
    popularity /= popularity.sum()  # (n_items,)
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[rng.choice(n_items, size=n_cold, replace=False)] = True
    cold_users = set(rng.choice(n_users, size=N_COLD_USERS, replace=False).tolist())
    max_items = n_items - n_cold  # warm items alone can fill any user's set
    counts = np.clip(rng.poisson(mean_interactions, size=n_users), 3, max_items)

    tau = math.sqrt(k) / TASTE_SHARPNESS
    train: dict[str, list[int]] = {}
    val: dict[str, list[int]] = {}
    test: dict[str, list[int]] = {}
    chunk = max(1, _CHUNK // n_items)
    for start in range(0, n_users, chunk):
        stop = min(n_users, start + chunk)
        logits = user_tastes[start:stop] @ item_factors.T / tau  # (chunk, n_items)
        logits -= logits.max(axis=1, keepdims=True)
        taste = np.exp(logits)
        taste /= taste.sum(axis=1, keepdims=True)
        prefs = (1.0 - POPULARITY_WEIGHT) * taste + POPULARITY_WEIGHT * popularity
        # Gumbel top-k over log p_u samples n_u items without replacement, proportionally to p_u.
        keys = np.log(prefs) + rng.gumbel(size=prefs.shape)
        order = np.argsort(-keys, axis=1, kind="stable")
        for row, u in enumerate(range(start, stop)):
            ranked = order[row]  # the user's items in sampling order
            key = str(u)
            if u in cold_users:
                val[key] = [int(ranked[0])]
                continue
            n_u = int(counts[u])
            picks = ranked[:n_u][rng.permutation(n_u)]
            held, rest = picks[:holdout], picks[holdout:]
            # Cold items may only be held out: in train they are replaced by the next warm draws.
            warm_rest = rest[~is_cold[rest]]
            refill = ranked[n_u:][~is_cold[ranked[n_u:]]][: rest.size - warm_rest.size]
            val[key] = [int(held[0])]
            if with_test:
                test[key] = [int(held[1])]
            train[key] = sorted(int(i) for i in np.concatenate([warm_rest, refill]))

    files[TRAIN_FILE] = _json_bytes(train)
    files[VAL_FILE] = _json_bytes(val)
    if with_test:
        files[TEST_FILE] = _json_bytes(test)
    params = {
        "generator": "training.synthetic.write_synthetic",
        "n_users": n_users,
        "n_items": n_items,
        "n_factors": n_factors,
        "modalities": modalities,
        "mean_interactions": mean_interactions,
        "feature_noise": feature_noise,
        "with_test": with_test,
        "seed": seed,
        "cold_items": sorted(np.flatnonzero(is_cold).tolist()),
        "cold_users": sorted(cold_users),
    }
    files["synthetic.json"] = json.dumps(params, indent=2).encode()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out
