#!/usr/bin/env python3
"""Independent PyTorch reference implementation of SCLIP inference.

Implements ../../../shared/SCLIP.md (copied into the repository as SCLIP.md):
OpenCV decode, mmcv-style resize, a hand-written CLIP vision tower whose last
layer uses Correlative Self-Attention, 80-template text queries, sliding-window
inference and SCLIP's post-processing.

The vision tower is written directly from the checkpoint tensors with plain
torch ops. The text tower is Hugging Face transformers' CLIP text model fed
with open_clip's tokenizer, i.e. deliberately a different code path from the
tokenizer.json the Rust implementation uses.

Usable as a module (see `SclipReference`) and as a command-line tool:

    python sclip_ref.py IMAGE --model DIR --classes "sky|wall,person,cup" \
        --out-probs probs.npy --out-labels labels.npy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Spec section 3: normalisation on the 0..255 scale, RGB order.
PIXEL_MEAN = (122.771, 116.746, 104.094)
PIXEL_STD = (68.501, 66.632, 70.323)
LONG_SIDE_CAP = 2048

DEFAULT_LOGIT_SCALE = 40.0
DEFAULT_PROB_THD = 0.0
DEFAULT_SHORT_SIDE = 336
DEFAULT_WINDOW = 224
DEFAULT_STRIDE = 112

SOT_ID = 49406
EOT_ID = 49407


# --------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------

def imagenet_templates() -> List[str]:
    """The 80 OpenAI ImageNet prompt templates, in open_clip's order, as
    format strings with a single '{}' placeholder."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    marker = "\x00CLASSNAME\x00"
    out = []
    for fn in OPENAI_IMAGENET_TEMPLATES:
        s = fn(marker)
        assert s.count(marker) == 1, s
        out.append(s.replace(marker, "{}"))
    assert len(out) == 80
    return out


# --------------------------------------------------------------------------
# Class lists
# --------------------------------------------------------------------------

def parse_classes_arg(spec: str) -> List[List[str]]:
    """'a,b|c' -> [['a'], ['b', 'c']]: classes comma-separated, synonyms '|'."""
    classes = []
    for cls in spec.split(","):
        names = [n.strip() for n in cls.split("|") if n.strip()]
        if not names:
            raise ValueError(f"empty class in {spec!r}")
        classes.append(names)
    return classes


def read_classes_file(path: str) -> List[List[str]]:
    """One class per line, its names comma-separated; '#' comments and blank
    lines ignored."""
    classes = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            names = [n.strip() for n in line.split(",") if n.strip()]
            if names:
                classes.append(names)
    if not classes:
        raise ValueError(f"no classes in {path}")
    return classes


# --------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------

def load_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def load_state_dict(model_dir: str) -> Dict[str, torch.Tensor]:
    st = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(st):
        from safetensors.torch import load_file

        sd = load_file(st)
    else:
        sd = torch.load(os.path.join(model_dir, "pytorch_model.bin"), map_location="cpu",
                        weights_only=True)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: F.gelu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"unsupported hidden_act {name!r}")


# --------------------------------------------------------------------------
# Pre-processing (spec section 3)
# --------------------------------------------------------------------------

def decode_image(path: str) -> np.ndarray:
    """OpenCV decode (EXIF applied, alpha dropped, grey/palette expanded,
    16-bit -> high byte, CMYK as OpenCV converts it); returns RGB uint8 HxWx3."""
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"OpenCV could not decode {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def resized_size(h: int, w: int, short_side: int) -> Tuple[int, int]:
    """mmcv imrescale with scale (2048, short_side): returns (new_h, new_w)."""
    long_edge = max(LONG_SIDE_CAP, short_side)
    short_edge = min(LONG_SIDE_CAP, short_side)
    scale = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * float(scale) + 0.5), int(w * float(scale) + 0.5)


def resize_image(rgb: np.ndarray, short_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    nh, nw = resized_size(h, w, short_side)
    return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 3xHxW, (v - mean) / std per channel."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------
# Vision tower (spec section 1), hand-written
# --------------------------------------------------------------------------

METHODS = ("sclip", "clip", "maskclip", "clearclip", "naclip")
CSA_PROJS = ("qk", "q", "k", "identity")
NACLIP_STD = 5.0


def check_method(method: str, csa_proj: str):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if csa_proj not in CSA_PROJS:
        raise ValueError(f"unknown csa_proj {csa_proj!r} (one of {', '.join(CSA_PROJS)})")
    if csa_proj != "qk" and method != "sclip":
        raise ValueError(f"csa_proj {csa_proj!r} applies to method sclip only, not {method!r}")


def naclip_omega(gh: int, gw: int, std: float = NACLIP_STD) -> torch.Tensor:
    """NACLIP's neighbourhood term, (1 + gh*gw) square, f32: for patch tokens i, j at
    row-major grid positions (ri, ci), (rj, cj) of this window's gh x gw grid,
    exp(-((ri - rj)^2 + (ci - cj)^2) / (2 std^2)) (computed in f64); 0 in the class
    token's row and column."""
    r = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
    c = torch.arange(gw, dtype=torch.float64).repeat(gh)
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    n = gh * gw
    out = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    out[1:, 1:] = torch.exp(-d2 / (2.0 * std * std))
    return out.float()


class VisionTower:
    def __init__(self, config: dict, sd: Dict[str, torch.Tensor]):
        vc = config["vision_config"]
        self.hidden = int(vc["hidden_size"])
        self.layers = int(vc["num_hidden_layers"])
        self.heads = int(vc["num_attention_heads"])
        self.head_dim = self.hidden // self.heads
        self.patch = int(vc["patch_size"])
        self.image_size = int(vc["image_size"])
        self.eps = float(vc.get("layer_norm_eps", 1e-5))
        self.act = _activation(vc.get("hidden_act", "quick_gelu"))
        self.grid = self.image_size // self.patch

        p = "vision_model."
        self.patch_w = sd[p + "embeddings.patch_embedding.weight"]
        self.cls = sd[p + "embeddings.class_embedding"]
        self.pos = sd[p + "embeddings.position_embedding.weight"]
        assert self.pos.shape[0] == self.grid * self.grid + 1, self.pos.shape
        self.pre_ln = (sd[p + "pre_layrnorm.weight"], sd[p + "pre_layrnorm.bias"])
        self.post_ln = (sd[p + "post_layernorm.weight"], sd[p + "post_layernorm.bias"])
        self.proj = sd["visual_projection.weight"]  # [proj, hidden]
        self.blocks = []
        for i in range(self.layers):
            q = f"{p}encoder.layers.{i}."
            self.blocks.append({n: sd[q + n] for n in (
                "layer_norm1.weight", "layer_norm1.bias",
                "self_attn.q_proj.weight", "self_attn.q_proj.bias",
                "self_attn.k_proj.weight", "self_attn.k_proj.bias",
                "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                "self_attn.out_proj.weight", "self_attn.out_proj.bias",
                "layer_norm2.weight", "layer_norm2.bias",
                "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")})
        self._pos_cache: Dict[Tuple[int, int], torch.Tensor] = {}

    def _ln(self, x, wb):
        return F.layer_norm(x, (self.hidden,), wb[0], wb[1], self.eps)

    def position_embeddings(self, gh: int, gw: int) -> torch.Tensor:
        """(1 + gh*gw) x hidden; bicubic with SCLIP's (g + 0.1) / G scale factor."""
        key = (gh, gw)
        if key in self._pos_cache:
            return self._pos_cache[key]
        g = self.grid
        if (gh, gw) == (g, g):
            out = self.pos
        else:
            grid = self.pos[1:].reshape(1, g, g, self.hidden).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, scale_factor=((gh + 0.1) / g, (gw + 0.1) / g),
                                 mode="bicubic", align_corners=False)
            assert grid.shape[-2:] == (gh, gw), (grid.shape, gh, gw)
            grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, self.hidden)
            out = torch.cat([self.pos[:1], grid], dim=0)
        self._pos_cache[key] = out
        return out

    def _qkv(self, blk, h):
        B, N, _ = h.shape
        shape = (B, N, self.heads, self.head_dim)
        q = F.linear(h, blk["self_attn.q_proj.weight"], blk["self_attn.q_proj.bias"])
        k = F.linear(h, blk["self_attn.k_proj.weight"], blk["self_attn.k_proj.bias"])
        v = F.linear(h, blk["self_attn.v_proj.weight"], blk["self_attn.v_proj.bias"])
        return (q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2),
                v.view(shape).transpose(1, 2))

    def _attn_out(self, blk, o):
        B, H, N, d = o.shape
        o = o.transpose(1, 2).reshape(B, N, H * d)
        return F.linear(o, blk["self_attn.out_proj.weight"], blk["self_attn.out_proj.bias"])

    def _mlp(self, blk, x):
        h = F.layer_norm(x, (self.hidden,), blk["layer_norm2.weight"], blk["layer_norm2.bias"],
                         self.eps)
        h = self.act(F.linear(h, blk["mlp.fc1.weight"], blk["mlp.fc1.bias"]))
        return F.linear(h, blk["mlp.fc2.weight"], blk["mlp.fc2.bias"])

    def _standard_block(self, blk, x):
        h = F.layer_norm(x, (self.hidden,), blk["layer_norm1.weight"], blk["layer_norm1.bias"],
                         self.eps)
        q, k, v = self._qkv(blk, h)
        scale = 1.0 / math.sqrt(self.head_dim)
        a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)
        x = x + self._attn_out(blk, torch.matmul(a, v))
        return x + self._mlp(blk, x)

    def last_block_attention(self, blk, x, gh: int, gw: int, method: str = "sclip",
                             csa_proj: str = "qk") -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """Spec section 8: the last block's attention matrix A (B x heads x N x N, row softmax;
        None for maskclip, whose attention is the identity) and the values v (B x heads x N x d)."""
        check_method(method, csa_proj)
        h = F.layer_norm(x, (self.hidden,), blk["layer_norm1.weight"], blk["layer_norm1.bias"],
                         self.eps)
        q, k, v = self._qkv(blk, h)
        s = 1.0 / math.sqrt(self.head_dim)

        def sm(a, b):
            return torch.softmax(torch.matmul(a, b.transpose(-1, -2)) * s, dim=-1)

        if method == "sclip":
            if csa_proj == "qk":
                a = sm(q, q) + sm(k, k)
            elif csa_proj == "q":
                a = sm(q, q)
            elif csa_proj == "k":
                a = sm(k, k)
            else:  # identity: head h's slice of y = ln1(x), no projection, no bias
                B, N, _ = h.shape
                y = h.view(B, N, self.heads, self.head_dim).transpose(1, 2)
                a = sm(y, y)
        elif method == "clip":
            a = sm(q, k)
        elif method == "maskclip":
            a = None
        elif method == "clearclip":
            a = sm(q, q)
        else:  # naclip: Omega added after the scaling, unscaled
            omega = naclip_omega(gh, gw).to(dtype=k.dtype)
            a = torch.softmax(torch.matmul(k, k.transpose(-1, -2)) * s + omega, dim=-1)
        return a, v

    def _last_block(self, blk, x, gh: int, gw: int, method: str, csa_proj: str):
        a, v = self.last_block_attention(blk, x, gh, gw, method, csa_proj)
        out = self._attn_out(blk, v if a is None else torch.matmul(a, v))
        if method in ("clearclip", "naclip"):
            return out  # residual AND mlp dropped
        x = x + out
        return x + self._mlp(blk, x)

    def hidden_states(self, pixels: torch.Tensor, csa: bool = True, method: str = "sclip",
                      csa_proj: str = "qk") -> List[torch.Tensor]:
        """Residual stream after embeddings+pre-LN (index 0) and after every
        layer (index i+1). pixels: B x 3 x h x w (normalised). With csa, the last
        layer is the `method` / `csa_proj` block of spec section 8 (default: SCLIP's CSA)."""
        B = pixels.shape[0]
        x = F.conv2d(pixels, self.patch_w, stride=self.patch)  # B x D x gh x gw
        gh, gw = x.shape[-2:]
        if gh == 0 or gw == 0:
            raise ValueError(f"window {tuple(pixels.shape[-2:])} is smaller than one patch")
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.view(1, 1, -1).expand(B, 1, -1), x], dim=1)
        x = x + self.position_embeddings(gh, gw).unsqueeze(0)
        x = self._ln(x, self.pre_ln)
        states = [x]
        for i, blk in enumerate(self.blocks):
            if csa and i == self.layers - 1:
                x = self._last_block(blk, x, gh, gw, method, csa_proj)
            else:
                x = self._standard_block(blk, x)
            states.append(x)
        return states

    def features(self, pixels: torch.Tensor, csa: bool = True, method: str = "sclip",
                 csa_proj: str = "qk") -> Tuple[torch.Tensor, int, int]:
        """B x (gh*gw) x proj, L2-normalised patch tokens (CLS dropped)."""
        gh, gw = pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch
        x = self.hidden_states(pixels, csa=csa, method=method, csa_proj=csa_proj)[-1]
        x = self._ln(x, self.post_ln)
        x = F.linear(x, self.proj)
        x = x[:, 1:]
        x = x / x.norm(dim=-1, keepdim=True)
        return x, gh, gw


# --------------------------------------------------------------------------
# Text tower (spec sections 1, 2): transformers' CLIP text model
# --------------------------------------------------------------------------

class TextEncoder:
    def __init__(self, config: dict, sd: Dict[str, torch.Tensor]):
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        tc = dict(config["text_config"])
        tc.setdefault("projection_dim", config.get("projection_dim", 512))
        tc.pop("model_type", None)
        cfg = CLIPTextConfig(**tc)
        cfg._attn_implementation = "eager"
        model = CLIPTextModelWithProjection(cfg)
        sub = {k: v for k, v in sd.items()
               if (k.startswith("text_model.") or k.startswith("text_projection."))
               and not k.endswith("position_ids")}
        missing, unexpected = model.load_state_dict(sub, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"text weights mismatch: missing {missing}, unexpected {unexpected}")
        self.model = model.eval()
        self.context = int(cfg.max_position_embeddings)
        self.eos_token_id = cfg.eos_token_id

    @staticmethod
    def tokenize(texts: Sequence[str], context: int = 77) -> torch.Tensor:
        import open_clip

        return open_clip.tokenizer.tokenize(list(texts), context_length=context)

    @torch.no_grad()
    def encode_tokens(self, ids: torch.Tensor, trim: bool = False) -> torch.Tensor:
        """ids: N x 77 (open_clip, zero padded). Returns N x proj (not normalised)."""
        if trim:
            n = int((ids != 0).sum(dim=1).max())
            ids = ids[:, :n]
        if self.eos_token_id == 2:
            # transformers pools at argmax(ids) for legacy configs: what we want
            return self.model(input_ids=ids).text_embeds
        # Pool at the arg-max id ourselves, whatever the config says.
        out = self.model.text_model(input_ids=ids)
        h = out.last_hidden_state
        pooled = h[torch.arange(h.shape[0]), ids.argmax(dim=-1)]
        return self.model.text_projection(pooled)

    @torch.no_grad()
    def name_queries(self, names: Sequence[str], templates: Sequence[str], trim: bool = False,
                     batch: int = 1024) -> torch.Tensor:
        """One L2-normalised query per name (mean of 80 normalised prompt features)."""
        prompts = [t.format(n) for n in names for t in templates]
        ids = self.tokenize(prompts, self.context)
        feats = []
        for s in range(0, ids.shape[0], batch):
            feats.append(self.encode_tokens(ids[s:s + batch], trim=trim))
        f = torch.cat(feats, 0)
        f = f / f.norm(dim=-1, keepdim=True)
        f = f.view(len(names), len(templates), -1).mean(dim=1)
        return f / f.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------
# Sliding window (spec section 4) and post-processing (section 5)
# --------------------------------------------------------------------------

def window_grid(H: int, W: int, window: int, stride: int) -> List[Tuple[int, int, int, int]]:
    rows = max(H - window + stride - 1, 0) // stride + 1
    cols = max(W - window + stride - 1, 0) // stride + 1
    out = []
    for i in range(rows):
        for j in range(cols):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + window, H), min(x1 + window, W)
            y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
            out.append((y1, y2, x1, x2))
    return out


@torch.no_grad()
def sliding_logits(vision: VisionTower, image: torch.Tensor, queries: torch.Tensor,
                   window: int, stride: int, batch: int = 8, method: str = "sclip",
                   csa_proj: str = "qk") -> torch.Tensor:
    """image: 3 x H x W normalised; queries: Q x proj. Returns Q x H x W."""
    _, H, W = image.shape
    Q = queries.shape[0]
    wins = window_grid(H, W, window, stride)
    canvas = torch.zeros(Q, H, W, dtype=image.dtype)
    count = torch.zeros(1, H, W, dtype=image.dtype)
    for s in range(0, len(wins), batch):
        chunk = wins[s:s + batch]
        crops = torch.stack([image[:, y1:y2, x1:x2] for (y1, y2, x1, x2) in chunk])
        feats, gh, gw = vision.features(crops, csa=True, method=method, csa_proj=csa_proj)
        logits = torch.matmul(feats, queries.t())  # B x gh*gw x Q
        logits = logits.transpose(1, 2).reshape(len(chunk), Q, gh, gw)
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear",
                               align_corners=False)
        for b, (y1, y2, x1, x2) in enumerate(chunk):
            canvas[:, y1:y2, x1:x2] += logits[b]
            count[:, y1:y2, x1:x2] += 1
    return canvas / count


def _shifted(x: torch.Tensor, dilations: Sequence[int], with_centre: bool) -> torch.Tensor:
    """K x H x W -> K x P x H x W: x at p + o for every offset o of {-d, 0, d}^2 of each
    dilation d (raster order, the centre only with `with_centre`), the border replicated."""
    H, W = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x.unsqueeze(0), [d, d, d, d], mode="replicate")[0]
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if (dy, dx) == (0, 0) and not with_centre:
                    continue
                out.append(padded[:, d + dy:d + dy + H, d + dx:d + dx + W])
    return torch.stack(out, dim=1)


@torch.no_grad()
def pamr(guide: torch.Tensor, mask: torch.Tensor, steps: int,
         dilations: Sequence[int]) -> torch.Tensor:
    """Spec section 7: guide 3 x H x W, mask Q x H x W (cosine logits) -> refined mask."""
    std = _shifted(guide, dilations, True).std(dim=1, keepdim=True)  # unbiased, K x 1 x H x W
    diff = -(guide.unsqueeze(1) - _shifted(guide, dilations, False)).abs() / (1e-8 + 0.1 * std)
    weights = torch.softmax(diff.mean(dim=0), dim=0)  # P x H x W
    for _ in range(steps):
        mask = (_shifted(mask, dilations, False) * weights.unsqueeze(0)).sum(dim=1)
    return mask


@torch.no_grad()
def postprocess(logits: torch.Tensor, out_hw: Tuple[int, int], class_of_query: Sequence[int],
                num_classes: int, logit_scale: float, prob_thd: float,
                area_thd: Optional[float], guide: Optional[torch.Tensor] = None,
                pamr_steps: int = 0, pamr_dilations: Sequence[int] = (8, 16)
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """logits Q x H x W (resized image) -> (probs C x H0 x W0 f32, labels H0 x W0 int64).
    With pamr_steps, `guide` is the normalised network input (3 x H x W)."""
    x = F.interpolate(logits.unsqueeze(0), size=out_hw, mode="bilinear",
                      align_corners=False)[0]
    if pamr_steps:
        g = F.interpolate(guide.unsqueeze(0), size=out_hw, mode="bilinear",
                          align_corners=False)[0]
        x = pamr(g, x, pamr_steps, pamr_dilations)
    p = torch.softmax(x * logit_scale, dim=0)
    idx = torch.as_tensor(list(class_of_query))
    probs = torch.stack([p[idx == c].max(dim=0).values for c in range(num_classes)])
    if area_thd is not None:
        arg = probs.argmax(dim=0)
        area = torch.bincount(arg.flatten(), minlength=num_classes).tolist()
        total = sum(area[1:])
        for c in range(1, num_classes):
            if area[c] <= area_thd * total:
                probs[c] = 0.0
    best = probs.max(dim=0).values
    labels = _first_argmax(probs)  # first index on ties
    labels[best < prob_thd] = 0
    return probs, labels


def _first_argmax(probs: torch.Tensor) -> torch.Tensor:
    best = probs.max(dim=0).values
    is_best = probs == best.unsqueeze(0)
    # index of the first True along dim 0
    ar = torch.arange(probs.shape[0]).view(-1, 1, 1).expand_as(probs)
    return torch.where(is_best, ar, probs.shape[0]).min(dim=0).values


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

@dataclass
class Result:
    probs: np.ndarray   # C x H0 x W0 float32
    labels: np.ndarray  # H0 x W0 uint8/uint16
    logits: torch.Tensor  # Q x H x W (resized image grid), before post-processing
    timings: Dict[str, float]


class SclipReference:
    def __init__(self, model_dir: str):
        self.config = load_config(model_dir)
        sd = load_state_dict(model_dir)
        self.vision = VisionTower(self.config, sd)
        self.text = TextEncoder(self.config, sd)
        self.templates = imagenet_templates()
        self._query_cache: Dict[str, torch.Tensor] = {}

    def queries(self, classes: List[List[str]], trim: bool = False) -> Tuple[torch.Tensor, List[int]]:
        names, owner = [], []
        for c, cls in enumerate(classes):
            for n in cls:
                names.append(n)
                owner.append(c)
        todo = [n for n in dict.fromkeys(names) if n not in self._query_cache]
        if todo:
            q = self.text.name_queries(todo, self.templates, trim=trim)
            for n, v in zip(todo, q):
                self._query_cache[n] = v
        return torch.stack([self._query_cache[n] for n in names]), owner

    @torch.no_grad()
    def segment(self, image_path: str, classes: List[List[str]],
                logit_scale: float = DEFAULT_LOGIT_SCALE, prob_thd: float = DEFAULT_PROB_THD,
                area_thd: Optional[float] = None, short_side: int = DEFAULT_SHORT_SIDE,
                window: int = DEFAULT_WINDOW, stride: int = DEFAULT_STRIDE,
                trim_text: bool = False, batch: int = 8, method: str = "sclip",
                csa_proj: str = "qk", pamr_steps: int = 0,
                pamr_dilations: Sequence[int] = (8, 16)) -> Result:
        check_method(method, csa_proj)
        t = {}
        t0 = time.perf_counter()
        queries, owner = self.queries(classes, trim=trim_text)
        t["text"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rgb = decode_image(image_path)
        h0, w0 = rgb.shape[:2]
        img = normalise(resize_image(rgb, short_side))
        t["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        logits = sliding_logits(self.vision, img, queries, window, stride, batch=batch,
                                method=method, csa_proj=csa_proj)
        t["vision"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        probs, labels = postprocess(logits, (h0, w0), owner, len(classes), logit_scale,
                                    prob_thd, area_thd, guide=img, pamr_steps=pamr_steps,
                                    pamr_dilations=pamr_dilations)
        t["postprocess"] = time.perf_counter() - t0
        ldtype = np.uint8 if len(classes) <= 256 else np.uint16
        return Result(probs.numpy().astype(np.float32), labels.numpy().astype(ldtype), logits, t)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="SCLIP PyTorch reference")
    ap.add_argument("image")
    ap.add_argument("--model", required=True, help="HF CLIP directory (config.json + weights)")
    ap.add_argument("--classes", help="'a,b|c': classes comma-separated, synonyms '|'")
    ap.add_argument("--classes-file", help="one class per line, names comma-separated")
    ap.add_argument("--logit-scale", type=float, default=DEFAULT_LOGIT_SCALE)
    ap.add_argument("--prob-thd", type=float, default=DEFAULT_PROB_THD)
    ap.add_argument("--area-thd", type=float, default=None)
    ap.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE)
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    ap.add_argument("--stride", type=int, default=DEFAULT_STRIDE)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8, help="windows per vision batch")
    ap.add_argument("--trim-text", action="store_true",
                    help="trim prompts to the longest one instead of padding to 77 (exact)")
    ap.add_argument("--bf16", action="store_true",
                    help="run under torch.autocast('cpu', torch.bfloat16), as a PyTorch user on a "
                    "CPU with bf16 matrix units would")
    ap.add_argument("--method", choices=METHODS, default="sclip",
                    help="last vision block (spec section 8): sclip, clip, maskclip, clearclip, "
                    "naclip")
    ap.add_argument("--csa-proj", choices=CSA_PROJS, default="qk",
                    help="with --method sclip: CSA's projections (qk, q, k, identity)")
    ap.add_argument("--pamr", type=int, default=0, metavar="STEPS",
                    help="PAMR refinement steps (spec section 7; 0 = off)")
    ap.add_argument("--pamr-dilations", default="8,16")
    ap.add_argument("--out-probs")
    ap.add_argument("--out-labels")
    a = ap.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
        try:
            torch.set_num_interop_threads(a.threads)
        except RuntimeError:
            pass
    if bool(a.classes) == bool(a.classes_file):
        ap.error("give exactly one of --classes / --classes-file")
    try:
        check_method(a.method, a.csa_proj)
    except ValueError as e:
        ap.error(str(e))
    classes = parse_classes_arg(a.classes) if a.classes else read_classes_file(a.classes_file)

    t_start = time.perf_counter()
    import open_clip  # noqa: F401  (library imports timed separately from model loading)
    import transformers  # noqa: F401
    from transformers import CLIPTextModelWithProjection  # noqa: F401
    t_import = time.perf_counter() - t_start
    t0 = time.perf_counter()
    ref = SclipReference(a.model)
    t_load = time.perf_counter() - t0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        r = ref.segment(a.image, classes, a.logit_scale, a.prob_thd, a.area_thd, a.short_side,
                        a.window, a.stride, trim_text=a.trim_text, batch=a.batch,
                        method=a.method, csa_proj=a.csa_proj, pamr_steps=a.pamr,
                        pamr_dilations=[int(d) for d in a.pamr_dilations.split(",")])
    t0 = time.perf_counter()
    if a.out_probs:
        np.save(a.out_probs, r.probs)
    if a.out_labels:
        np.save(a.out_labels, r.labels)
    t_write = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    print(f"timing import_libs {t_import:.4f}s")
    print(f"timing load_model {t_load:.4f}s")
    for k, v in r.timings.items():
        print(f"timing {k} {v:.4f}s")
    print(f"timing write {t_write:.4f}s")
    print(f"timing total {total:.4f}s")
    counts = np.bincount(r.labels.ravel(), minlength=len(classes))
    print("labels " + " ".join(f"{'|'.join(c)}={n}" for c, n in zip(classes, counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
