"""ENTRep-style frame classifier and retriever: CLIP towers + LoRA + multi-level CLS fusion.

After "Multi-Level CLS Token Fusion for Contrastive Learning in Endoscopy Image
Classification" (arXiv 2509.00752; no public code). A CLIP ViT image tower and
a CLIP text tower, written here in the OpenAI/open_clip state-dict layout
(`visual.transformer.resblocks.N.attn.in_proj_weight`, `token_embedding`,
`text_projection`, ...) so a ViT-B/16 checkpoint loads key for key
(`endofuse.model.entrep_weights`). The towers are our own code rather than
`open_clip.CLIP` because the method needs every layer's CLS token, LoRA inside
the fused q/k/v projection and a plain-matmul attention that exports to ONNX;
the BPE tokenizer is endofuse's own over CLIP's vocabulary (`clip_tokenizer`).

Blocks: LoRA (`LoRADelta`, merge/unmerge), multi-level CLS fusion (softmax
weights over the post-LN CLS tokens of `cls_layers`), SLERP feature
augmentation (`slerp`, same-class partners), class prompt templates.
Input convention as the segmenters: RGB float32 [0, 1], NCHW, `img_size`.

Order: blocks -> towers -> model -> configs -> builder.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATES = (
    "an endoscopy image of {}",
    "an endoscopic frame showing {}",
    "a laryngoscopy image with {}",
    "a photo of {} seen through an endoscope",
)


# ---- blocks ----
class LoRADelta(nn.Module):
    """Low-rank update `scale * B @ A` of an (out, in) weight; B starts at zero (no change at init)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.a = nn.Parameter(torch.empty(rank, in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.scale = alpha / rank

    def delta(self) -> torch.Tensor:
        return (self.b @ self.a) * self.scale


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names and LoRA on q, k, v, out.

    The matmul/softmax form (not SDPA) keeps the ONNX graph plain. `merge_lora()`
    folds the deltas into the weights (no extra cost at inference); `unmerge_lora()`
    takes them out again.
    """

    def __init__(self, width: int, heads: int, lora_rank: int = 0, lora_alpha: float = 16.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.lora = nn.ModuleDict()
        if lora_rank > 0:
            for name in ("q", "k", "v", "out"):
                self.lora[name] = LoRADelta(width, width, lora_rank, lora_alpha)
        self.merged = False

    def _in_delta(self) -> torch.Tensor:
        return torch.cat([self.lora[n].delta() for n in ("q", "k", "v")], dim=0)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w_in, w_out = self.in_proj_weight, self.out_proj.weight
        if len(self.lora) and not self.merged:
            w_in, w_out = w_in + self._in_delta(), w_out + self.lora["out"].delta()
        return w_in, w_out

    @torch.no_grad()
    def merge_lora(self) -> None:
        if len(self.lora) and not self.merged:
            self.in_proj_weight += self._in_delta()
            self.out_proj.weight += self.lora["out"].delta()
            self.merged = True

    @torch.no_grad()
    def unmerge_lora(self) -> None:
        if len(self.lora) and self.merged:
            self.in_proj_weight -= self._in_delta()
            self.out_proj.weight -= self.lora["out"].delta()
            self.merged = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        w_in, w_out = self.weights()
        qkv = F.linear(x, w_in, self.in_proj_bias).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        if mask is not None:
            scores = scores + mask
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        return F.linear(out, w_out, self.out_proj.bias)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation (its checkpoints were trained with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool, lora_rank: int, lora_alpha: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, lora_rank, lora_alpha)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()  # named children match open_clip: mlp.c_fc, mlp.gelu, mlp.c_proj
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool,
                 lora_rank: int, lora_alpha: float):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualBlock(width, heads, mlp_ratio, quick_gelu, lora_rank, lora_alpha) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every layer's output (B, N, D), first layer first."""
        outs = []
        for block in self.resblocks:
            x = block(x, mask)
            outs.append(x)
        return outs


def fuse_cls(cls_tokens: torch.Tensor, level_logits: torch.Tensor) -> torch.Tensor:
    """Multi-level CLS fusion: (L, B, D) tokens, (L,) logits -> softmax(logits)-weighted sum (B, D)."""
    weights = level_logits.softmax(dim=0)
    return (weights[:, None, None] * cls_tokens).sum(dim=0)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation between rows of unit vectors a, b (B, D) at fractions t (B,).

    sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b, θ = arccos(a·b); nearly parallel rows
    fall back to linear interpolation (renormalised), where SLERP tends to it anyway.
    """
    t = t[:, None]
    dot = (a * b).sum(dim=-1, keepdim=True).clamp(-1 + eps, 1 - eps)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    spherical = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin.clamp_min(eps)
    linear = F.normalize((1 - t) * a + t * b, dim=-1)
    return torch.where(sin > 1e-4, spherical, linear)


def same_class_partners(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row, a random row index with the same label (possibly itself)."""
    partners = torch.empty_like(labels)
    for value in labels.unique():
        idx = (labels == value).nonzero(as_tuple=True)[0]
        pick = torch.randint(len(idx), (len(idx),), generator=generator, device=labels.device)
        partners[idx] = idx[pick]
    return partners


# ---- towers ----
class VisionTower(nn.Module):
    """CLIP ViT (OpenAI layout) whose output is the fused CLS of `cls_layers`, projected."""

    def __init__(self, c: EntrepConfig):
        super().__init__()
        if c.img_size % c.patch_size:
            raise ValueError(f"img_size {c.img_size} is not a multiple of patch_size {c.patch_size}")
        if not c.cls_layers or min(c.cls_layers) < 1 or max(c.cls_layers) > c.vision_layers:
            raise ValueError(f"cls_layers {c.cls_layers} must name layers 1..{c.vision_layers}")
        width, grid = c.vision_width, c.img_size // c.patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, c.patch_size, c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, c.vision_layers, c.vision_heads, c.mlp_ratio, c.quick_gelu,
                                       c.lora_rank, c.lora_alpha)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, c.embed_dim))
        self.cls_layers = tuple(c.cls_layers)
        self.cls_fusion_logits = nn.Parameter(torch.zeros(len(self.cls_layers)))  # equal weights at init
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def cls_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Post-LN CLS tokens of `cls_layers`: (L, B, width)."""
        x = self.conv1((images - self.mean) / self.std).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        outs = self.transformer(x)
        return torch.stack([self.ln_post(outs[i - 1][:, 0]) for i in self.cls_layers])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return fuse_cls(self.cls_tokens(images), self.cls_fusion_logits) @ self.proj


# ---- model ----
class EntrepModel(nn.Module):
    """Image tower (`visual`), text tower (top-level, OpenAI layout), linear class head.

    `encode_image` / `encode_text` -> unnormalised embeddings; `forward(images)` ->
    class logits from the L2-normalised image embedding.
    """

    def __init__(self, name: str, config: EntrepConfig, classes: list[str], overrides: dict | None = None):
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {classes}")
        self.name, self.config, self.classes = name, config, list(classes)
        self.overrides = dict(overrides or {})
        c = config
        self.visual = VisionTower(c)
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(c.context_length, c.text_width))
        self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads, c.mlp_ratio, c.quick_gelu,
                                       c.lora_rank, c.lora_alpha)
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Parameter(c.text_width ** -0.5 * torch.randn(c.text_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.classifier = nn.Linear(c.embed_dim, len(classes))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        causal = torch.full((c.context_length, c.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context_length) BPE ids -> (B, embed_dim); the end-of-text token (highest id) is pooled."""
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, self.attn_mask)[-1])
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def classify_features(self, unit_features: torch.Tensor) -> torch.Tensor:
        """Class logits of unit-norm features, scaled by sqrt(dim) so their entries are ~unit size."""
        return self.classifier(unit_features * math.sqrt(unit_features.shape[-1]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify_features(F.normalize(self.encode_image(images), dim=-1))

    def prompts(self, label: str) -> list[str]:
        """The class's prompt texts (its templates filled with the readable class name)."""
        readable = label.replace("_", " ")
        return [t.format(readable) for t in self.config.templates]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".lora." in n]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """`freeze_base`: LoRA + fusion weights + head + logit scale only; otherwise everything."""
        if not self.config.freeze_base:
            return list(self.parameters())
        keep = (".lora.", "cls_fusion_logits", "classifier.", "logit_scale")
        return [p for n, p in self.named_parameters() if any(k in n for k in keep)]

    def attention_modules(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def merge_lora(self) -> None:
        for m in self.attention_modules():
            m.merge_lora()

    def unmerge_lora(self) -> None:
        for m in self.attention_modules():
            m.unmerge_lora()


# ---- configurations: numbers only ----
@dataclass(frozen=True)
class EntrepConfig:
    """Every number of a configuration; `build_entrep(name, classes, **overrides)` replaces any of them."""

    img_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    embed_dim: int = 512
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    mlp_ratio: float = 4.0
    quick_gelu: bool = True
    cls_layers: tuple[int, ...] = (9, 10, 11, 12)  # 1-based; (vision_layers,) is plain CLIP
    lora_rank: int = 8
    lora_alpha: float = 16.0
    freeze_base: bool = True  # train LoRA + fusion + head only (the pretrained towers stay as loaded)
    slerp_prob: float = 0.5  # share of each batch that gets an extra SLERP-mixed feature (0 = off)
    slerp_max_t: float = 0.5  # interpolation fraction drawn from U(0, slerp_max_t)
    contrastive_weight: float = 1.0  # image-text contrastive term (0 = classification only)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES


ENTREP_CONFIGS: dict[str, EntrepConfig] = {
    # the paper's configuration: CLIP ViT-B/16 towers, LoRA on the attention projections
    "entrep-b16": EntrepConfig(),
    # the same blocks at a size that trains from scratch on CPU in minutes
    "entrep-tiny": EntrepConfig(
        img_size=64, patch_size=8, vision_width=96, vision_layers=4, vision_heads=4, embed_dim=64,
        context_length=32, text_width=64, text_layers=2, text_heads=4, quick_gelu=False, cls_layers=(2, 3, 4),
        lora_rank=4, lora_alpha=8.0, freeze_base=False,
    ),  # fmt: skip
}


def list_entrep_models() -> list[str]:
    return list(ENTREP_CONFIGS)


def build_entrep(name: str, classes: list[str], **overrides) -> EntrepModel:
    """Build a named configuration for `classes`; any config field can be overridden."""
    if name not in ENTREP_CONFIGS:
        raise ValueError(f"unknown classifier model {name!r}; expected one of {list_entrep_models()}")
    fields = {f.name for f in dataclasses.fields(EntrepConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config keys {unknown} for model {name!r}; valid keys: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    config = dataclasses.replace(ENTREP_CONFIGS[name], **values)
    return EntrepModel(name, config, classes, overrides=values)
