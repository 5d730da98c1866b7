"""EVA ViT: the image encoder of BLIP-2 (EVA-CLIP ViT-g/14 without its last block), plus the
LayerNorm that LAVIS calls ``ln_vision`` and Hugging Face calls ``post_layernorm``.

Parameter names are those of HF's ``Blip2VisionModel`` (the composed model holds this as
``vision_model``), so a checkpoint converts by a key map plus transposes of Linear weights.
One difference is deliberate: EVA and LAVIS learn a query bias and a value bias and keep the
key bias at zero, so they are ``self_attn.q_bias`` / ``self_attn.v_bias`` here, while HF stores
the three concatenated as one ``self_attn.qkv.bias`` (and would let the key part train).

Attention is plain matmul + softmax: fused or flash attention kernels do not exist on every
device this runs on (Ascend NPU), and the plain form is the one that matches HF number for number.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..config import ConfigError, VisionConfig

_INIT_STD = 0.02  # trunc-normal std of LAVIS/EVA (BLIP-2 weights are loaded over it in practice)


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    init = paddle.ParamAttr(initializer=nn.initializer.TruncatedNormal(std=_INIT_STD))
    return nn.Linear(in_features, out_features, weight_attr=init, bias_attr=None if bias else False)


# ---------------------------------------------------------------------------- position embeddings


@lru_cache(maxsize=32)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The [out_size, in_size] float64 matrix of 1-D bicubic resampling.

    Same arithmetic as torch's ``interpolate(mode="bicubic", align_corners=False)`` (what HF's
    ``interpolate_pos_encoding`` and LAVIS's checkpoint interpolation call): source coordinate
    (i + 0.5) * in / out - 0.5, Keys' cubic with a = -0.75, edge taps clamped. Paddle's own
    bicubic kernel differs from torch's by ~4e-7 even in float64, so the resampling is done as
    two matmuls with this matrix instead: exact, and a matmul runs on every device.
    """
    a = -0.75
    scale = in_size / out_size
    out = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        x = scale * (i + 0.5) - 0.5
        x0 = int(np.floor(x))
        t = x - x0
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731  |d| <= 1
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731  1 < |d| < 2
        weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
        for k, w in enumerate(weights):
            out[i, min(max(x0 - 1 + k, 0), in_size - 1)] += w
    return out


def resize_grid(grid: paddle.Tensor, height: int, width: int) -> paddle.Tensor:
    """Bicubic resize of a [h, w, D] grid of embeddings to [height, width, D]."""
    h, w, dim = grid.shape
    rows = paddle.to_tensor(bicubic_matrix(h, height), dtype=grid.dtype)  # [height, h]
    cols = paddle.to_tensor(bicubic_matrix(w, width), dtype=grid.dtype)  # [width, w]
    grid = paddle.matmul(rows, grid.reshape([h, w * dim])).reshape([height, w, dim])
    return paddle.matmul(cols, grid)  # [width, w] @ [height, w, D] -> [height, width, D]


# ---------------------------------------------------------------------------- layers


class VisionEmbeddings(nn.Layer):
    """Patches (a strided conv) + a class token + learned positions for ``image_size``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim, self.patch_size = config.hidden_size, config.patch_size
        self.grid = config.image_size // config.patch_size
        init = nn.initializer.TruncatedNormal(std=_INIT_STD)
        self.class_embedding = self.create_parameter([1, 1, dim], default_initializer=init)
        self.patch_embedding = nn.Conv2D(3, dim, kernel_size=config.patch_size, stride=config.patch_size)
        positions = self.grid * self.grid + 1
        self.position_embedding = self.create_parameter([1, positions, dim], default_initializer=init)

    def positions(self, height: int, width: int) -> paddle.Tensor:
        """Position embeddings for a [height, width] patch grid, bicubic-interpolated if it is not
        the grid they were trained for (224 -> 364 px in the paper: 16x16 -> 26x26 patches)."""
        if (height, width) == (self.grid, self.grid):
            return self.position_embedding
        dim = self.position_embedding.shape[-1]
        cls_pos, patch_pos = self.position_embedding[:, :1], self.position_embedding[0, 1:]
        patch_pos = resize_grid(patch_pos.reshape([self.grid, self.grid, dim]), height, width)
        return paddle.concat([cls_pos, patch_pos.reshape([1, height * width, dim])], axis=1)

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        weight = self.patch_embedding.weight
        if pixel_values.dtype != weight.dtype:
            pixel_values = pixel_values.astype(weight.dtype)
        patches = self.patch_embedding(pixel_values)  # [B, D, h, w]
        height, width = patches.shape[2], patches.shape[3]
        patches = patches.flatten(2).transpose([0, 2, 1])  # [B, h*w, D]
        cls = self.class_embedding.expand([patches.shape[0], -1, -1])
        return paddle.concat([cls, patches], axis=1) + self.positions(height, width)


class Attention(nn.Layer):
    """Multi-head self-attention with one fused qkv projection; bias (q_bias, 0, v_bias)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim, self.num_heads = config.hidden_size, config.num_heads
        if dim % self.num_heads:
            raise ConfigError(f"vision hidden_size {dim} is not a multiple of num_heads {self.num_heads}")
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = _linear(dim, 3 * dim, bias=False)
        self.qkv.parts = ("q", "k", "v")  # its [q | k | v] columns: LoRA may adapt some (models/lora.py)
        zeros = nn.initializer.Constant(0.0)
        self.q_bias = self.create_parameter([dim], default_initializer=zeros, is_bias=True)
        self.v_bias = self.create_parameter([dim], default_initializer=zeros, is_bias=True)
        self.projection = _linear(dim, dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        bias = paddle.concat([self.q_bias, paddle.zeros_like(self.q_bias), self.v_bias])
        qkv = self.qkv(x) + bias  # [B, N, 3D]; called, not its weight read, so an adapter on qkv applies
        qkv = qkv.reshape([0, 0, 3, self.num_heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, d]
        probs = F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3])  # [B, N, H, d]
        return self.projection(out.reshape([0, 0, self.num_heads * self.head_dim]))


class MLP(nn.Layer):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = _linear(config.hidden_size, config.mlp_dim)
        self.fc2 = _linear(config.mlp_dim, config.hidden_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=False))


class EncoderLayer(nn.Layer):
    """Pre-norm transformer block."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Layer):
    """Holds the blocks as ``layers`` (the checkpoint's ``encoder.layers.N``); EvaViT runs them."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.LayerList([EncoderLayer(config) for _ in range(config.num_layers)])


# ---------------------------------------------------------------------------- the encoder


class EvaViT(nn.Layer):
    """pixels [B, 3, H, W] -> image features [B, 1 + (H/p)*(W/p), D], after ``post_layernorm``.

    Any H, W that are multiples of the patch size work; the position embeddings are bicubic-
    interpolated when the grid differs from ``config.image_size``'s (HF's
    ``interpolate_pos_encoding=True``, done here whenever it is needed).

    Frozen (every parameter ``stop_gradient=True``), the encoder stays in eval mode whatever
    ``train()`` is called on, as LAVIS's frozen ViT does. Paddle's ``Layer.train()`` sets the
    ``training`` attribute of every sublayer directly instead of calling their ``train()``, so
    this class answers ``training`` through a property: False while frozen. Nothing inside the
    encoder reads its sublayers' flags (no dropout, no drop-path), only this one (recompute).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ConfigError(
                f"vision image_size {config.image_size} is not a multiple of patch_size {config.patch_size}"
            )
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)

    @property
    def frozen(self) -> bool:
        params = self.parameters()
        return bool(params) and all(p.stop_gradient for p in params)

    @property
    def training(self) -> bool:
        return self.__dict__.get("_train_mode", True) and not self.frozen

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["_train_mode"] = bool(mode)

    def train(self, mode: bool = True) -> "EvaViT":
        super().train(mode)
        if self.frozen:  # keep every sublayer in eval mode too
            for layer in self.sublayers():
                layer.training = False
        return self

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        x = self.embeddings(pixel_values)
        checkpoint = self.config.recompute and self.training and paddle.is_grad_enabled()
        for layer in self.encoder.layers:
            x = recompute(layer, x, use_reentrant=False) if checkpoint else layer(x)
        return self.post_layernorm(x)

    def pool(self, features: paddle.Tensor) -> paddle.Tensor:
        """HF's ``pooler_output``: ``post_layernorm`` applied once more, to the class token."""
        return self.post_layernorm(features[:, 0])
