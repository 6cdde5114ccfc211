"""MM-EndoCL: Align-Disentangle-Fuse segmentation of paired WLI/NBI endoscopy frames.

Paper: arXiv 2508.16882 (reference code: wwwjh333/MM-EndoCL, not used here).
Two hybrid R50-ViT encoders (one per modality) -> token-wise disentangle/fuse
MLPs -> TransUNet decoder with WLI-only skips. Training adds multi-scale
distribution alignment (MMD on pooled shallow features), cosine disentanglement
terms and the disentangle-aware contrastive loss (see `forward_train`).

Order: fusion block -> model -> configs -> builder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from endofuse.errors import InvalidOptionError
from endofuse.kernels import dacl_loss, mmd_loss
from endofuse.model import losses
from endofuse.model.blocks import AttentionMeanPool, Mlp
from endofuse.model.cluster_negatives import OnlineKMeans, cluster_dacl
from endofuse.model.decoder import CascadedDecoder
from endofuse.model.distill import prototype_distill, relation_distill
from endofuse.model.encoder import EncoderOutput, HybridViTEncoder
from endofuse.model.fusion import DMAFusion
from endofuse.model.mir import MaskedNBIReconstruction

# raw training terms of forward_train; how they are weighted is the recipe's (endofuse.train.recipes)
AUX_KEYS = ("da", "align", "diff", "orth_wli", "orth_nbi", "mi", "dacl")
# terms of the related-work options, returned only when switched on (see `forward_train`)
METHOD_KEYS = ("cgns", "mir", "relation", "prototype")
FUSIONS = ("token", "dmaf")
NEGATIVES = ("batch", "cluster")
DISTILL_TERMS = ("relation", "prototype")


class DisentangleFuse(nn.Module):
    """Specific/share MLPs per modality, share fusion, three modal-fusion MLPs summed."""

    def __init__(self, dim: int, share_hidden: int, with_fuse: bool = True):
        super().__init__()
        self.specific_wli = Mlp(dim, dim)
        self.specific_nbi = Mlp(dim, dim)
        self.share_wli = Mlp(dim, dim)
        self.share_nbi = Mlp(dim, dim)
        if with_fuse:  # False with fusion="dmaf", whose block replaces the summed MLPs
            self.share_fusion = Mlp(2 * dim, share_hidden, dim)
            self.fuse_specific_wli = Mlp(dim, dim)
            self.fuse_share = Mlp(dim, dim)
            self.fuse_specific_nbi = Mlp(dim, dim)

    def split(self, tokens_wli: torch.Tensor, tokens_nbi: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four disentangled token maps (B, N, D)."""
        return {
            "spec_w": self.specific_wli(tokens_wli),
            "spec_n": self.specific_nbi(tokens_nbi),
            "share_w": self.share_wli(tokens_wli),
            "share_n": self.share_nbi(tokens_nbi),
        }

    def split_wli(self, tokens_wli: torch.Tensor) -> dict[str, torch.Tensor]:
        """The WLI half of `split` (NBI absent)."""
        return {"spec_w": self.specific_wli(tokens_wli), "share_w": self.share_wli(tokens_wli)}

    def fuse(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        share = self.share_fusion(torch.cat([parts["share_w"], parts["share_n"]], dim=-1))
        return (
            self.fuse_specific_wli(parts["spec_w"])
            + self.fuse_share(share)
            + self.fuse_specific_nbi(parts["spec_n"])
        )


@dataclass(frozen=True)
class MMEndoCLConfig:
    """Every number of a configuration; `build_model(name, **overrides)` replaces any of them."""

    img_size: int = 224
    stem_width: int = 64
    stem_units: tuple[int, int, int] = (3, 4, 9)
    norm_groups: int = 32
    hidden_size: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    shallow_taps: tuple[int, ...] = (2, 4, 6)
    share_hidden: int = 3072
    decoder_head_channels: int = 512
    decoder_channels: tuple[int, ...] = (256, 128, 64, 16)
    n_skip: int = 3
    dropout: float = 0.1
    # learned stand-in for the NBI tokens when NBI is absent (False: WLI fed to both encoders)
    missing_nbi_token: bool = False
    # training-time probability per sample of replacing NBI tokens with the missing token
    modality_dropout: float = 0.0
    da_kernel: str = "gaussian"
    # "token": the summed fusion MLPs (+ missing_nbi_token); "dmaf": masked attention over both modalities
    fusion: str = "token"
    # DACL negatives: "batch" (the reference) or "cluster" (CM-CGNS cluster-guided, `clusters` centroids)
    negatives: str = "batch"
    clusters: int = 16
    centroid_momentum: float = 0.9
    # training-only masked NBI reconstruction head (absent from the export graph)
    mir: bool = False


class MMEndoCL(nn.Module):
    """The network. `model(wli, nbi)` is the export graph; `forward_train` adds the aux terms."""

    def __init__(self, name: str, config: MMEndoCLConfig, num_classes: int = 2, overrides: dict | None = None):
        super().__init__()
        if config.img_size % 16:
            raise InvalidOptionError(f"img_size must be a multiple of 16, got {config.img_size}")
        if config.fusion not in FUSIONS:
            raise InvalidOptionError(f"fusion must be one of {FUSIONS}, got {config.fusion!r}")
        if config.negatives not in NEGATIVES:
            raise InvalidOptionError(f"negatives must be one of {NEGATIVES}, got {config.negatives!r}")
        if config.fusion == "dmaf" and config.missing_nbi_token:
            raise InvalidOptionError("fusion='dmaf' masks a missing NBI out; it takes no missing_nbi_token")
        if config.missing_nbi_token is False and config.fusion == "token" and config.modality_dropout > 0:
            raise InvalidOptionError("modality_dropout needs missing_nbi_token=True or fusion='dmaf'")
        self.name, self.config, self.num_classes = name, config, num_classes
        self.img_size = config.img_size
        self.overrides = dict(overrides or {})
        c = config

        def encoder() -> HybridViTEncoder:
            return HybridViTEncoder(
                c.img_size, c.stem_width, c.stem_units, c.norm_groups, c.hidden_size, c.depth,
                c.heads, c.mlp_dim, c.dropout, c.shallow_taps,
            )  # fmt: skip

        self.encoder_wli = encoder()
        self.encoder_nbi = encoder()
        self.fusion = DisentangleFuse(c.hidden_size, c.share_hidden, with_fuse=c.fusion == "token")
        tokens = (c.img_size // 16) ** 2
        self.dmaf = DMAFusion(c.hidden_size, c.heads, c.mlp_dim, tokens) if c.fusion == "dmaf" else None
        self.cluster = OnlineKMeans(c.clusters, tokens * c.hidden_size, c.centroid_momentum) \
            if c.negatives == "cluster" else None
        self.mir_head = MaskedNBIReconstruction(c.hidden_size, c.heads, tokens) if c.mir else None
        pool_dim = c.hidden_size * len(c.shallow_taps)
        self.pool_wli = AttentionMeanPool(pool_dim)
        self.pool_nbi = AttentionMeanPool(pool_dim)
        self.decoder = CascadedDecoder(
            c.hidden_size, c.img_size // 16, c.decoder_head_channels, c.decoder_channels,
            self.encoder_wli.stem.skip_channels, c.n_skip, num_classes,
        )  # fmt: skip
        self.missing_nbi_token: nn.Parameter | None = None
        if c.missing_nbi_token:
            self.missing_nbi_token = nn.Parameter(torch.zeros(1, (c.img_size // 16) ** 2, c.hidden_size))
            nn.init.trunc_normal_(self.missing_nbi_token, std=0.02)
        # dmaf, training only: per-token classes from each modality's fusion term alone (the `modality` term)
        self.modality_head = nn.Linear(c.hidden_size, num_classes) if self.dmaf is not None else None

    # ---- input checks (plain Python on static shapes; skipped while exporting) ----
    def _check_frame(self, label: str, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{label} must be a (B, 3, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ValueError(f"{label} must be float RGB in [0, 1], got dtype {x.dtype}")
        b, ch, h, w = x.shape
        if ch != 3:
            raise ValueError(f"{label} must have 3 channels (RGB), got {ch} channels in shape {tuple(x.shape)}")
        if h % 16 or w % 16:
            raise ValueError(f"{label} size {h}x{w} is not divisible by 16")
        if (h, w) != (self.img_size, self.img_size):
            raise ValueError(
                f"{label} size {h}x{w} does not match model '{self.name}' input size {self.img_size}x{self.img_size}"
            )

    def check_inputs(self, wli: torch.Tensor, nbi: torch.Tensor | None) -> None:
        """Raise ValueError naming what was expected for a malformed pair."""
        if torch.compiler.is_compiling():
            return
        self._check_frame("wli", wli)
        if nbi is not None:
            self._check_frame("nbi", nbi)
            if nbi.shape[0] != wli.shape[0]:
                raise ValueError(f"batch sizes differ: wli has {wli.shape[0]} frames, nbi has {nbi.shape[0]}")

    # ---- forward paths ----
    def _missing_tokens(self, batch: int) -> torch.Tensor:
        return self.missing_nbi_token.expand(batch, -1, -1)

    def forward(self, wli: torch.Tensor, nbi: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes, H, W); `nbi=None` takes the missing-NBI path."""
        self.check_inputs(wli, nbi)
        wli_out = self.encoder_wli(wli)
        if self.dmaf is not None:
            if nbi is None:  # NBI keys absent: the same as masking all of them
                fused, _ = self.dmaf(self.fusion.split_wli(wli_out.tokens))
            else:
                fused, _ = self.dmaf(self.fusion.split(wli_out.tokens, self.encoder_nbi(nbi).tokens))
            return self.decoder(fused, wli_out.skips)
        if nbi is None and self.missing_nbi_token is not None:
            tokens_nbi = self._missing_tokens(wli.shape[0])
        else:  # paper fallback without NBI: WLI fed to both encoders
            tokens_nbi = self.encoder_nbi(wli if nbi is None else nbi).tokens
        parts = self.fusion.split(wli_out.tokens, tokens_nbi)
        return self.decoder(self.fusion.fuse(parts), wli_out.skips)

    @property
    def handles_missing_nbi(self) -> bool:
        """True when a missing NBI has its own path (learned token or DMAF mask), not WLI twice."""
        return self.missing_nbi_token is not None or self.dmaf is not None

    def _nbi_dropped(self, batch: int, nbi: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Per-sample bool: NBI treated as missing (absent, or modality dropout)."""
        if not self.handles_missing_nbi:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        if nbi is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        if self.training and self.config.modality_dropout > 0:
            return torch.rand(batch, device=device) < self.config.modality_dropout
        return torch.zeros(batch, dtype=torch.bool, device=device)

    def _missing_path(self, tokens_wli: torch.Tensor) -> torch.Tensor:
        """Fused tokens of the missing-NBI path (the distillation student)."""
        if self.dmaf is not None:
            return self.dmaf(self.fusion.split_wli(tokens_wli))[0]
        return self.fusion.fuse(self.fusion.split(tokens_wli, self._missing_tokens(tokens_wli.shape[0])))

    def forward_train(
        self,
        wli: torch.Tensor,
        nbi: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        distill: tuple[str, ...] = (),
        *,
        temperature: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, aux) with the raw aux terms `da, align, diff, orth_wli, orth_nbi, mi, dacl` (unweighted).

        `temperature` is DACL's (the training recipe owns it, with every loss weight).

        Samples whose NBI is dropped (modality dropout or `nbi=None` with a missing
        token / DMAF) still go through the fusion and the decoder, but are left out of
        every aux term: those terms compare two real modalities. When no sample keeps
        its NBI, every aux term is 0.

        Related-work terms, present only when switched on: `cgns` (negatives="cluster":
        the false-negative margin loss; `dacl` then uses the cluster-guided negatives),
        `mir` (mir=True: L1 of the masked NBI patches rebuilt from the WLI shared
        tokens, every sample with an NBI frame), `relation` / `prototype` (names in
        `distill`: the missing-NBI path taught by the full path on the kept samples;
        `prototype` needs `target` (B, H, W)).
        """
        self.check_inputs(wli, nbi)
        unknown = sorted(set(distill) - set(DISTILL_TERMS))
        if unknown:
            raise InvalidOptionError(f"unknown distillation term(s) {unknown}; choose from {DISTILL_TERMS}")
        if distill and not self.handles_missing_nbi:
            raise InvalidOptionError("distillation needs a missing-NBI path: fusion='dmaf' or missing_nbi_token=True")
        batch = wli.shape[0]
        wli_out = self.encoder_wli(wli, with_shallow=True)
        dropped = self._nbi_dropped(batch, nbi, wli.device)
        nbi_out: EncoderOutput | None = None
        if not self.handles_missing_nbi:
            nbi_out = self.encoder_nbi(wli if nbi is None else nbi, with_shallow=True)
            parts = self.fusion.split(wli_out.tokens, nbi_out.tokens)
        elif bool(dropped.all()):
            parts = self.fusion.split_wli(wli_out.tokens) if self.dmaf is not None else \
                self.fusion.split(wli_out.tokens, self._missing_tokens(batch))
        else:
            nbi_out = self.encoder_nbi(nbi, with_shallow=True)
            tokens_nbi = nbi_out.tokens if self.dmaf is not None else \
                torch.where(dropped[:, None, None], self._missing_tokens(batch), nbi_out.tokens)
            parts = self.fusion.split(wli_out.tokens, tokens_nbi)
        if self.dmaf is not None:
            fused, _ = self.dmaf(parts, None if nbi_out is None else ~dropped)
        else:
            fused = self.fusion.fuse(parts)
        logits = self.decoder(fused, wli_out.skips)
        kept = ~dropped
        if nbi_out is None:
            zero = logits.new_zeros(())
            aux = {key: zero for key in AUX_KEYS}
            if self.cluster is not None:
                aux["cgns"] = zero
                self._update_clusters(None, kept)
        else:
            aux = self._aux_terms(wli_out, nbi_out, parts, kept, temperature)
        if self.mir_head is not None:
            aux["mir"] = logits.new_zeros(()) if nbi is None else self.mir_head(parts["share_w"], nbi)
        if self.modality_head is not None and target is not None:
            aux["modality"] = self._modality_term(parts, kept if nbi_out is not None else None, target)
        if distill:
            aux.update(self._distill_terms(wli_out.tokens, fused, kept if nbi_out is not None else None,
                                           target, distill))
        return logits, aux

    def _modality_term(self, parts: dict[str, torch.Tensor], kept: torch.Tensor | None,
                       target: torch.Tensor) -> torch.Tensor:
        """Per-token CE of the WLI and the NBI fusion terms, each alone, on the samples that keep their NBI."""
        if kept is None or not bool(kept.any()):
            return parts["share_w"].new_zeros(())
        c_w, c_n = self.dmaf.contributions({k: v[kept] for k, v in parts.items()})
        return losses.token_grid_ce(self.modality_head(c_w), target[kept]) + \
            losses.token_grid_ce(self.modality_head(c_n), target[kept])

    def _distill_terms(self, tokens_wli: torch.Tensor, fused: torch.Tensor, kept: torch.Tensor | None,
                       target: torch.Tensor | None, distill: tuple[str, ...]) -> dict[str, torch.Tensor]:
        zero = fused.new_zeros(())
        if kept is None or not bool(kept.any()):
            return {name: zero for name in distill}
        # dmaf: the student learns in the fusion, not in the WLI encoder. The encoder also feeds the full path
        # and the decoder's skips, and there the relation gap's gradient is ~20x the segmentation's: left
        # in, it retrains the encoder to imitate NBI-driven relations (fused Dice fell 0.07, missing-NBI 0.1)
        student = self._missing_path(tokens_wli[kept].detach() if self.dmaf is not None else tokens_wli[kept])
        teacher = fused[kept].detach()
        out = {}
        if "relation" in distill:
            out["relation"] = relation_distill(student, teacher)
        if "prototype" in distill:
            out["prototype"] = zero if target is None else \
                prototype_distill(student, teacher, target[kept], self.num_classes)
        return out

    def _update_clusters(self, parts: dict[str, torch.Tensor] | None, kept: torch.Tensor) -> None:
        """Move the k-means centroids (training only; every rank calls it, with or without rows)."""
        if not self.training:
            return
        if parts is None:
            rows = torch.zeros(0, self.cluster.centroids.shape[1], device=kept.device)
        else:
            rows = torch.cat([parts[k].flatten(1) for k in ("share_w", "share_n", "spec_w", "spec_n")])
        self.cluster.update(rows)

    def _aux_terms(
        self, wli_out: EncoderOutput, nbi_out: EncoderOutput, parts: dict[str, torch.Tensor], kept: torch.Tensor,
        temperature: float,
    ) -> dict[str, torch.Tensor]:
        if not bool(kept.any()):
            zero = parts["share_w"].new_zeros(())
            aux = {key: zero for key in AUX_KEYS}
            if self.cluster is not None:
                aux["cgns"] = zero
                self._update_clusters(None, kept)
            return aux
        pooled_wli = self.pool_wli(torch.cat(wli_out.shallow, dim=-1)[kept])
        pooled_nbi = self.pool_nbi(torch.cat(nbi_out.shallow, dim=-1)[kept])
        p = {key: value[kept] for key, value in parts.items()}
        aux = {"da": mmd_loss(pooled_nbi, pooled_wli, kernel=self.config.da_kernel)}
        aux.update(losses.disentangle(p["spec_w"], p["spec_n"], p["share_w"], p["share_n"]))
        if self.cluster is not None:
            aux.update(cluster_dacl(p["share_w"], p["share_n"], p["spec_w"], p["spec_n"], self.cluster, temperature))
            self._update_clusters(p, kept)
        else:
            aux["dacl"] = dacl_loss(p["share_w"], p["share_n"], p["spec_w"], p["spec_n"], temperature=temperature)
        return aux


# ---- configurations: numbers only ----
MODEL_CONFIGS: dict[str, MMEndoCLConfig] = {
    # the reference network exactly: two R50-ViT-B/16 hybrids, 218.5 M parameters
    "paper": MMEndoCLConfig(),
    # between tiny and paper
    "small": MMEndoCLConfig(
        img_size=192, stem_width=32, stem_units=(2, 2, 3), norm_groups=16, hidden_size=256, depth=6,
        heads=4, mlp_dim=1024, shallow_taps=(2, 3, 4), share_hidden=1024, decoder_head_channels=256,
        decoder_channels=(128, 64, 32, 16), missing_nbi_token=True, modality_dropout=0.25,
    ),  # fmt: skip
    # real-time on 2 CPU cores through ONNX Runtime; its weights ship in the package
    "tiny": MMEndoCLConfig(
        img_size=160, stem_width=16, stem_units=(1, 1, 1), norm_groups=8, hidden_size=128, depth=4,
        heads=4, mlp_dim=256, shallow_taps=(1, 2, 3), share_hidden=256, decoder_head_channels=64,
        decoder_channels=(64, 32, 16, 8), missing_nbi_token=True, modality_dropout=0.25,
    ),  # fmt: skip
}


def list_models() -> list[str]:
    """Names accepted by `build_model`."""
    return list(MODEL_CONFIGS)


def _as_config_value(value):
    return tuple(value) if isinstance(value, list) else value


def build_model(name: str, num_classes: int = 2, img_size: int | None = None, **overrides) -> MMEndoCL:
    """Build a named configuration; `img_size=None` keeps the config's native size.

    Any config number can be overridden (`build_model("tiny", depth=2)`).
    """
    if name not in MODEL_CONFIGS:
        raise InvalidOptionError(f"unknown model {name!r}; expected one of {list_models()}")
    fields = {f.name for f in dataclasses.fields(MMEndoCLConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InvalidOptionError(f"unknown config keys {unknown} for model {name!r}; valid keys: {sorted(fields)}")
    if num_classes < 1:
        raise InvalidOptionError(f"num_classes must be >= 1, got {num_classes}")
    values = {key: _as_config_value(value) for key, value in overrides.items()}
    if values.get("fusion", "token") != "token":
        if name == "paper":
            raise InvalidOptionError("model 'paper' keeps the reference fusion (checkpoint parity); "
                                     "fusion='dmaf' is for tiny and small")
        values.setdefault("missing_nbi_token", False)  # DMAF masks a missing NBI instead of replacing it
    size = {} if img_size is None else {"img_size": int(img_size)}
    config = dataclasses.replace(MODEL_CONFIGS[name], **values, **size)
    return MMEndoCL(name, config, num_classes=num_classes, overrides=values)
