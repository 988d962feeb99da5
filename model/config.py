"""Model configuration: everything needed to rebuild an MMSSL module from a checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GRAPH_NORMS = ("paper", "symmetric")
# Raw item features before the modality projections: "none" as in the paper; "standardize" =
# (x - mean) / std per feature over all items, the statistics kept in the model (and the artifact).
FEATURE_NORMS = ("none", "standardize")
# The frozen item-item kNN graph (issue 11 (b), FREEDOM-style): how the raw features are prepared
# before the cosine ("center": x - mean; "standardize": (x - mean) / std, statistics over all items)
# and how the binary kNN matrix is normalised ("symmetric": 1/sqrt(k * indegree_j), the
# D_out^-1/2 A D_in^-1/2 of a directed kNN graph; "mean": 1/k, FREEDOM's value when every row has k).
ITEM_GRAPH_FEATURES = ("center", "standardize")
ITEM_GRAPH_NORMS = ("symmetric", "mean")


@dataclass
class MMSSLConfig:
    """Sizes and architecture of the MMSSL model (paper section 3).

    Defaults follow the paper and the authors' TikTok settings where the paper is silent; the
    trainer's YAML config overrides them.
    """

    n_users: int = 0
    n_items: int = 0
    # Modality name -> raw feature dimension d_m, in a fixed order. Empty = ID-only model.
    modality_dims: dict[str, int] = field(default_factory=dict)

    embed_dim: int = 64  # d
    n_layers: int = 2  # L, GNN layers over the interaction graph (Eq. 10)
    # "paper": A[u,i] = 1/sqrt(|N_u|) (Eq. 10 as written, the authors' code); "symmetric":
    # 1/sqrt(|N_u||N_i|) as in LightGCN.
    graph_norm: str = "symmetric"
    feat_dropout: float = 0.1  # dropout after the modality projection (Eq. 2 context)
    feature_norm: str = "none"  # one of FEATURE_NORMS, applied to the raw features (issue 11 (c))
    n_heads: int = 4  # H in Eq. 9
    eta: float = 0.36  # η, weight of the modality-aware initial embedding (Eq. 10)
    omega: float = 0.55  # ω, fusion weight of the modality features (Eq. 12)
    view_topk: int = 10  # k of the modality-aware contrastive views (Eq. 8)

    # Discriminator D (Eq. 4): width independent of |I|.
    disc_hidden: int = 256
    disc_dropout: float = 0.2
    leaky_slope: float = 0.2
    # Eq. 5
    gumbel_tau: float = 0.002  # τ of the Gumbel-softmax transformation
    zeta: float = 1.0  # ζ, weight of the augmented signal cos(h_u, h_i)

    # Ablations (paper Table 3) and the ID-only baseline.
    use_adversarial: bool = True  # False = w/o-ASL
    use_contrastive: bool = True  # False = w/o-CL
    use_gumbel: bool = True  # False = w/o-GT (observed rows enter Eq. 5 untransformed)
    id_only: bool = False  # no modalities at all: LightGCN-like

    # Frozen item-item kNN graph S from the raw modality features (issue 11 (b); off by default, the
    # paper has none): h_i += S^L e_i (FREEDOM, Zhou & Shen 2023). Each item's k most similar items
    # among those with training interactions (itself excluded), per modality, averaged over the
    # modalities. Uses every modality in modality_dims, also for the ID-only model.
    item_graph_k: int = 0  # k; 0 = no item graph
    item_graph_layers: int = 1  # L of the item-graph propagation
    item_graph_features: str = "center"  # one of ITEM_GRAPH_FEATURES
    item_graph_norm: str = "symmetric"  # one of ITEM_GRAPH_NORMS

    def __post_init__(self) -> None:
        self.modality_dims = {str(k): int(v) for k, v in dict(self.modality_dims).items()}

    @property
    def modalities(self) -> list[str]:
        return [] if self.id_only else list(self.modality_dims)

    def validate(self) -> None:
        """Raise ValueError naming the first impossible setting."""
        problems: list[str] = []
        if self.n_users <= 0 or self.n_items <= 0:
            problems.append(f"n_users/n_items must be positive (got {self.n_users}, {self.n_items})")
        if self.embed_dim <= 0:
            problems.append(f"embed_dim must be positive (got {self.embed_dim})")
        if self.n_layers < 0:
            problems.append(f"n_layers must be >= 0 (got {self.n_layers})")
        if self.graph_norm not in GRAPH_NORMS:
            problems.append(f"graph_norm must be one of {GRAPH_NORMS} (got {self.graph_norm!r})")
        if self.feature_norm not in FEATURE_NORMS:
            problems.append(f"feature_norm must be one of {FEATURE_NORMS} (got {self.feature_norm!r})")
        if self.n_heads <= 0 or self.embed_dim % self.n_heads:
            problems.append(f"n_heads ({self.n_heads}) must divide embed_dim ({self.embed_dim})")
        for name, p in (("feat_dropout", self.feat_dropout), ("disc_dropout", self.disc_dropout)):
            if not 0.0 <= p < 1.0:
                problems.append(f"{name} must be in [0, 1) (got {p})")
        if self.view_topk <= 0:
            problems.append(f"view_topk must be positive (got {self.view_topk})")
        if not self.id_only and self.view_topk > self.n_items > 0:
            problems.append(f"view_topk ({self.view_topk}) exceeds n_items ({self.n_items})")
        if self.disc_hidden < 2:
            problems.append(f"disc_hidden must be >= 2 (got {self.disc_hidden})")
        if self.gumbel_tau <= 0:
            problems.append(f"gumbel_tau must be positive (got {self.gumbel_tau})")
        if not self.id_only and not self.modality_dims:
            problems.append("no modalities: the data has no <modality>_feat.npy; set id_only: true")
        if self.item_graph_k < 0:
            problems.append(f"item_graph_k must be >= 0 (got {self.item_graph_k})")
        if self.item_graph_k > 0:
            if not self.modality_dims:
                problems.append("item_graph_k > 0 needs item features (<modality>_feat.npy)")
            if self.item_graph_k >= self.n_items > 0:
                problems.append(f"item_graph_k ({self.item_graph_k}) must be below n_items ({self.n_items})")
            if self.item_graph_layers < 1:
                problems.append(f"item_graph_layers must be >= 1 (got {self.item_graph_layers})")
        if self.item_graph_features not in ITEM_GRAPH_FEATURES:
            problems.append(
                f"item_graph_features must be one of {ITEM_GRAPH_FEATURES} (got {self.item_graph_features!r})"
            )
        if self.item_graph_norm not in ITEM_GRAPH_NORMS:
            problems.append(
                f"item_graph_norm must be one of {ITEM_GRAPH_NORMS} (got {self.item_graph_norm!r})"
            )
        for name, dim in self.modality_dims.items():
            if dim <= 0:
                problems.append(f"modality {name!r} has dimension {dim}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MMSSLConfig:
        return cls(**data)
