"""A tiny transformer training step that proves a device computes what the CPU computes.

Used by ``tools/env_check.py`` (the install doctor) and the device tests. Weights and data
come from NumPy, not from Paddle's per-device random generators, so every device starts from
the same numbers and the losses are comparable.
"""
from __future__ import annotations

import numpy as np

VOCAB, HIDDEN, LAYERS, HEADS, SEQ, BATCH = 64, 32, 2, 4, 8, 4


def build_tiny_transformer(seed: int = 0):
    """Embedding -> 2 pre-norm encoder layers (hidden 32) -> LM head, weights drawn from NumPy."""
    import paddle
    from paddle import nn

    class TinyTransformer(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, HIDDEN)
            layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, 4 * HIDDEN, dropout=0.0, normalize_before=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS)
            self.norm = nn.LayerNorm(HIDDEN)
            self.head = nn.Linear(HIDDEN, VOCAB)

        def forward(self, tokens):
            return self.head(self.norm(self.encoder(self.embed(tokens))))

    model = TinyTransformer()
    rng = np.random.default_rng(seed)
    state = {
        name: (rng.standard_normal(p.shape) * 0.1 + (1.0 if "norm" in name and "weight" in name else 0.0))
        for name, p in model.state_dict().items()
    }
    model.set_state_dict({k: paddle.to_tensor(v.astype("float32")) for k, v in state.items()})
    return model


def tiny_transformer_losses(place: str, steps: int = 3, seed: int = 0) -> list[float]:
    """Run ``steps`` forward/backward/AdamW steps on ``place`` and return each step's loss."""
    import paddle
    import paddle.nn.functional as F

    paddle.set_device(place)
    model = build_tiny_transformer(seed)
    rng = np.random.default_rng(seed + 1)
    tokens = paddle.to_tensor(rng.integers(0, VOCAB, (BATCH, SEQ)), dtype="int64")
    targets = paddle.to_tensor(rng.integers(0, VOCAB, (BATCH, SEQ)), dtype="int64")
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters(), weight_decay=0.01)
    losses = []
    for _ in range(steps):
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape([-1, VOCAB]), targets.reshape([-1]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    return losses
