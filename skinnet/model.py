"""The single-shared network (Tang & Lasser, arXiv 2403.19203) and its ablations.

One encoder is shared by the clinical photo and the dermoscopy image; after chosen stages
a shared cross-attention module lets each modality attend to the other (the same module
serves both directions); modality-specific heads and a fused head predict the 8 tasks.

    clinical ──┐                 ┌─ stage k ─┐  cross-attention (shared, both ways)
               ├─ shared encoder ┤           ├──────────────────────────────── ... ─┐
    dermoscopy ┘                 └─ stage k ─┘                                       │
        clinical head(pool(h_c))   dermoscopy head(pool(h_d))   fused head([pool(h_c), pool(h_d)])

``shared=False`` gives the two-encoder baseline with the same stages, attention and heads.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import StagedBackbone, create_backbone
from .labels import NUM_OUTPUTS

MODALITIES = ("clinical", "dermoscopy")
HEADS = ("clinical", "dermoscopy", "fused")
BN_MODES = ("joint", "separate")
ATTENTION_SHARING = ("shared", "individual")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the architecture (stored in the checkpoint card).

    Attributes:
        backbone: timm model name.
        shared: one encoder for both modalities (the method) or two (the baseline).
        cross_attention_stages: backbone stage indexes followed by cross-attention
            (negative counts from the end; empty disables it).
        attention_dim: width of the attention's queries/keys/values.
        attention_heads: number of heads.
        attention_sharing: ``shared`` (the method): one cross-attention module per stage serves
            both directions; ``individual``: one module per stage and direction (the
            ablation the paper's shared module replaces, about twice the attention weights).
        bn_mode: how a shared encoder's BatchNorm sees the modalities: ``joint`` runs both
            images as one batch (statistics over both), ``separate`` runs two calls.
        dropout: before each head.
        backbone_kwargs: extra timm arguments (small variants in tests).
    """

    backbone: str = "tf_efficientnet_lite0"
    shared: bool = True
    cross_attention_stages: tuple[int, ...] = (-2, -1)
    attention_dim: int = 128
    attention_heads: int = 4
    attention_sharing: str = "shared"
    bn_mode: str = "joint"
    dropout: float = 0.2
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.cross_attention_stages = tuple(int(s) for s in self.cross_attention_stages)
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.attention_sharing not in ATTENTION_SHARING:
            raise ValueError(f"attention_sharing must be one of {ATTENTION_SHARING}, "
                             f"got {self.attention_sharing!r}")
        if self.attention_dim % self.attention_heads:
            raise ValueError(f"attention_dim {self.attention_dim} is not divisible by "
                             f"attention_heads {self.attention_heads}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cross_attention_stages"] = list(self.cross_attention_stages)
        return data


class CrossAttention(nn.Module):
    """Gated residual cross-attention: queries from one modality, keys/values from the other.

    The gate is ``tanh(g)`` with ``g = 0`` at initialisation, so a fresh module is the
    identity and training starts from the pretrained encoder's behaviour.
    """

    def __init__(self, channels: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_query = nn.LayerNorm(channels)
        self.norm_key = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, dim)
        self.key = nn.Linear(channels, dim)
        self.value = nn.Linear(channels, dim)
        self.out = nn.Linear(dim, channels)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, query_tokens: torch.Tensor, key_tokens: torch.Tensor,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend ``query_tokens`` (B, Nq, C) to ``key_tokens`` (B, Nk, C).

        Returns:
            The updated query tokens, and when asked the attention weights averaged over
            heads, (B, Nq, Nk).
        """
        b, nq, _ = query_tokens.shape
        q = self._split(self.query(self.norm_query(query_tokens)))
        kv = self.norm_key(key_tokens)
        k, v = self._split(self.key(kv)), self._split(self.value(kv))
        weights = None
        if return_weights:
            attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
            mixed = attn @ v
            weights = attn.mean(dim=1)
        else:
            mixed = F.scaled_dot_product_attention(q, k, v)
        mixed = mixed.transpose(1, 2).reshape(b, nq, -1)
        return query_tokens + torch.tanh(self.gate) * self.out(mixed), weights

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)


def summarise(h: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A stage output's channel means and standard deviations over space, (B, 2C)."""
    dims = (1, 2) if channels_last else (2, 3)
    return torch.cat([h.mean(dims), h.std(dims)], -1).float()


def to_tokens(h: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(B, C, H, W) or (B, H, W, C) feature map -> (B, H*W, C) tokens."""
    return h.flatten(1, 2) if channels_last else h.flatten(2).transpose(1, 2)


def from_tokens(tokens: torch.Tensor, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`to_tokens`, shaped like the feature map ``like``."""
    if channels_last:
        return tokens.reshape(like.shape)
    b, c, h, w = like.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)


@dataclass
class PairEncoding:
    """What the encoder produced for a pair.

    Attributes:
        pooled: modality -> (B, num_features) pooled features.
        keys: stage -> modality -> (B, N, C) tokens each modality offered as keys to the
            other at that stage (what :meth:`SingleSharedNet.encode_one` needs to
            reproduce one branch with the other held fixed).
        attention: stage -> direction (``clinical->dermoscopy`` = clinical queries over
            the dermoscopy grid) -> (B, Nq, Nk) weights; with the key grid's (H, W) in
            ``grids[stage]``. Empty unless asked.
        summaries: modality -> per stage, (B, 2C) channel means and standard deviations of
            the stage's output (what :mod:`skinnet.guards` compares with the training
            images). Empty unless asked.
        last_stage: modality -> the last stage's output after cross-attention, the neck's
            input: Grad-CAM differentiates from there on (:mod:`skinnet.explain`), so the
            encoder need not run again to explain a prediction. Empty unless asked.
    """

    pooled: dict[str, torch.Tensor]
    summaries: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    keys: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    attention: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    grids: dict[int, tuple[int, int]] = field(default_factory=dict)
    last_stage: dict[str, torch.Tensor] = field(default_factory=dict)

    def first(self, n: int) -> "PairEncoding":
        """The encoding of the batch's first ``n`` rows (e.g. the unflipped view of a TTA batch),
        copied, so that keeping it does not keep the other rows' memory alive."""
        rows = lambda v: v[:n].clone()  # noqa: E731
        return PairEncoding(
            pooled={m: rows(v) for m, v in self.pooled.items()},
            summaries={m: [rows(s) for s in stats] for m, stats in self.summaries.items()},
            keys={s: {m: rows(v) for m, v in k.items()} for s, k in self.keys.items()},
            attention={s: {d: rows(w) for d, w in a.items()} for s, a in self.attention.items()},
            grids=dict(self.grids), last_stage={m: rows(v) for m, v in self.last_stage.items()})


class SingleSharedNet(nn.Module):
    """Multi-modal skin lesion classifier: shared (or two) encoders, cross-attention, 3 heads.

    Call it with either or both images, (B, 3, H, W) each, normalised. It returns a dict
    head name -> (B, NUM_OUTPUTS) logits (see :func:`skinnet.labels.split_logits`); with one
    image only, just that modality's head (there is nothing to fuse).
    """

    def __init__(self, config: ModelConfig, pretrained: bool | str = False):
        super().__init__()
        self.config = config
        self.encoder = create_backbone(config.backbone, pretrained, **config.backbone_kwargs)
        self.dermoscopy_encoder = None
        if not config.shared:
            self.dermoscopy_encoder = create_backbone(config.backbone, pretrained,
                                                      **config.backbone_kwargs)
        n_stages = len(self.encoder.stages)
        stages = sorted({s % n_stages for s in config.cross_attention_stages
                         if -n_stages <= s < n_stages})
        if len(stages) != len(set(config.cross_attention_stages)):
            raise ValueError(f"cross_attention_stages {config.cross_attention_stages} are not "
                             f"distinct stages of {config.backbone}, which has {n_stages}")
        self.attention_stages = tuple(stages)
        self.cross_attention = nn.ModuleDict({
            key: CrossAttention(self.encoder.info[s].channels, config.attention_dim, config.attention_heads)
            for s in stages for key in self._attention_keys(s)})
        width = self.encoder.num_features
        self.heads = nn.ModuleDict({
            "clinical": nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, NUM_OUTPUTS)),
            "dermoscopy": nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, NUM_OUTPUTS)),
            "fused": nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * width, NUM_OUTPUTS)),
        })

    def _attention_keys(self, stage: int) -> list[str]:
        if self.config.attention_sharing == "shared":
            return [str(stage)]
        return [f"{stage}_{query}" for query in MODALITIES]

    def attention_module(self, stage: int, query: str) -> CrossAttention:
        """The cross-attention through which ``query``'s tokens attend to the other modality
        after ``stage``: the stage's one shared module, or its own with individual modules."""
        if self.config.attention_sharing == "shared":
            return self.cross_attention[str(stage)]
        return self.cross_attention[f"{stage}_{query}"]

    # -- encoders -------------------------------------------------------------------------
    def encoder_for(self, modality: str) -> StagedBackbone:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if modality == "dermoscopy" and self.dermoscopy_encoder is not None:
            return self.dermoscopy_encoder
        return self.encoder

    def _run_stage(self, index: int, clinical: torch.Tensor, dermoscopy: torch.Tensor):
        if self.dermoscopy_encoder is None and self.config.bn_mode == "joint":
            both = self.encoder.stages[index](torch.cat([clinical, dermoscopy]))
            return both.split(clinical.shape[0])
        return (self.encoder_for("clinical").stages[index](clinical),
                self.encoder_for("dermoscopy").stages[index](dermoscopy))

    def pool_last_stage(self, modality: str, h: torch.Tensor) -> torch.Tensor:
        """The last stage's output -> pooled features (neck, then global pooling)."""
        encoder = self.encoder_for(modality)
        return encoder.pool(encoder.neck(h))

    def encode_pair(self, clinical: torch.Tensor, dermoscopy: torch.Tensor,
                    return_attention: bool = False, keep_keys: bool = False,
                    summaries: bool = False, keep_last_stage: bool = False) -> PairEncoding:
        """Run both images through the encoder(s), with cross-attention between them."""
        channels_last = self.encoder.channels_last
        h = {"clinical": clinical, "dermoscopy": dermoscopy}
        encoding = PairEncoding(pooled={}, summaries={m: [] for m in MODALITIES} if summaries else {})
        for index in range(len(self.encoder.stages)):
            h["clinical"], h["dermoscopy"] = self._run_stage(index, h["clinical"], h["dermoscopy"])
            for m, stats in encoding.summaries.items():
                stats.append(summarise(h[m], channels_last))
            if index not in self.attention_stages:
                continue
            tokens = {m: to_tokens(h[m], channels_last) for m in MODALITIES}
            updated, weights = {}, {}
            for query, key in (("clinical", "dermoscopy"), ("dermoscopy", "clinical")):
                module = self.attention_module(index, query)
                updated[query], weights[f"{query}->{key}"] = module(tokens[query], tokens[key],
                                                                    return_attention)
            if keep_keys:
                encoding.keys[index] = {m: t.detach() for m, t in tokens.items()}
            if return_attention:
                encoding.attention[index] = weights
                grid = h["dermoscopy"].shape[1:3] if channels_last else h["dermoscopy"].shape[2:]
                encoding.grids[index] = tuple(grid)
            h = {m: from_tokens(updated[m], h[m], channels_last) for m in MODALITIES}
        if keep_last_stage:
            encoding.last_stage = dict(h)
        encoding.pooled = {m: self.pool_last_stage(m, h[m]) for m in MODALITIES}
        return encoding

    def encode_one(self, image: torch.Tensor, modality: str,
                   partner_keys: dict[int, torch.Tensor] | None = None,
                   summaries: list | None = None, last_stage: dict | None = None) -> torch.Tensor:
        """Encode one modality; the pooled (B, num_features) features.

        Args:
            partner_keys: stage -> the other modality's key tokens at that stage, as kept
                by :meth:`encode_pair`. With them the result equals this modality's branch
                of the pair forward, but the encoder runs once, on this image only (the tests
                check Grad-CAM against it). Without them cross-attention is skipped (one image only).
            summaries: if given, each stage's :func:`summarise` is appended to it.
            last_stage: if given, the last stage's output is stored in it under ``modality``.
        """
        encoder = self.encoder_for(modality)
        channels_last = encoder.channels_last
        h = image
        for index, stage in enumerate(encoder.stages):
            h = stage(h)
            if summaries is not None:
                summaries.append(summarise(h, channels_last))
            if partner_keys is not None and index in self.attention_stages:
                tokens, _ = self.attention_module(index, modality)(to_tokens(h, channels_last),
                                                                   partner_keys[index])
                h = from_tokens(tokens, h, channels_last)
        if last_stage is not None:
            last_stage[modality] = h
        return self.pool_last_stage(modality, h)

    # -- heads ----------------------------------------------------------------------------
    def classify(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Head logits from pooled features of one or both modalities."""
        out = {m: self.heads[m](pooled[m]) for m in MODALITIES if m in pooled}
        if len(out) == 2:
            out["fused"] = self.heads["fused"](torch.cat([pooled["clinical"], pooled["dermoscopy"]], 1))
        return out

    def forward(self, clinical: torch.Tensor | None = None,
                dermoscopy: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if clinical is None and dermoscopy is None:
            raise ValueError("need a clinical image, a dermoscopy image, or both")
        if clinical is not None and dermoscopy is not None:
            return self.classify(self.encode_pair(clinical, dermoscopy).pooled)
        modality, image = ("clinical", clinical) if clinical is not None else ("dermoscopy", dermoscopy)
        return self.classify({modality: self.encode_one(image, modality)})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def create_model(pretrained: bool | str = False, **config: Any) -> SingleSharedNet:
    """Build a :class:`SingleSharedNet` from :class:`ModelConfig` fields.

    ``None`` values are dropped, so a command-line default of None keeps the config default.

    Raises:
        ValueError: an unknown field (the message lists the known ones) or a bad value.
    """
    known = set(ModelConfig.__dataclass_fields__)
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"unknown model options {sorted(unknown)}; known: {sorted(known)}")
    return SingleSharedNet(ModelConfig(**{k: v for k, v in config.items() if v is not None}),
                           pretrained=pretrained)
