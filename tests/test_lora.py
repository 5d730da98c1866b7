"""LoRA (models/lora.py): the update's arithmetic against numpy, gradients against finite differences,
merge/unmerge, the adapter's own training flag, and the config errors. Tiny random layers, float64
where exactness matters."""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from paddle_medvl.config import LoRAConfig, VisionConfig
from paddle_medvl.errors import MedVLError
from paddle_medvl.models import eva_vit
from paddle_medvl.models.eva_vit import EvaViT
from paddle_medvl.models.language import default_dtype
from paddle_medvl.models.lora import (
    LoRAError, LoRALinear, apply_lora, lora_layers, merge_lora, set_training, unmerge_lora,
)
from paddle_medvl.workarounds import FrozenSafeLayerNorm, fix_frozen_layer_norms

QV = ["encoder.layers.*.self_attn.qkv.q", "encoder.layers.*.self_attn.qkv.v"]
FD_STEP = 1e-6
FD_TOL = 1e-7  # relative; measured 2e-10 .. 3e-10 (plain Linear), 2e-9 .. 1e-8 (tiny EVA ViT)


# ---------------------------------------------------------------------------- helpers


class Net(nn.Layer):
    """Two plain Linears, one fused [a | b | c] Linear, one in a LayerList, and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.fused = nn.Linear(8, 12, bias_attr=False)
        self.fused.parts = ("a", "b", "c")
        self.blocks = nn.LayerList([nn.Linear(12, 12), nn.Linear(12, 12)])
        self.norm = nn.LayerNorm(12)
        self.out = nn.Linear(12, 3)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.fused(paddle.tanh(self.inp(x)))
        for block in self.blocks:
            h = paddle.tanh(block(h))
        return self.out(self.norm(h))


def build(cls=Net, dtype: str = "float64", seed: int = 0, **kw) -> nn.Layer:
    paddle.seed(seed)
    with default_dtype(dtype):
        return cls(**kw)


def tiny_vit(dtype: str = "float64", seed: int = 0, **kw) -> EvaViT:
    cfg = VisionConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, **kw)
    model = build(EvaViT, dtype, seed, config=cfg)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():  # O(1) activations; norms far from 1 (the frozen-norm defect needs it)
        if "norm" in name and name.endswith("weight"):
            value = rng.uniform(0.5, 1.5, p.shape)
        elif len(p.shape) >= 2 and name.endswith("weight"):
            fan_in = p.shape[0] if len(p.shape) == 2 else int(np.prod(p.shape[1:]))  # Linear [in, out]; conv [out, in, k, k]
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), p.shape)
        else:
            value = rng.normal(0.0, 0.3, p.shape)
        p.set_value(value.astype(dtype))
    for p in model.parameters():
        p.stop_gradient = True
    return model


def randomize(model: nn.Layer, seed: int = 1, scale: float = 0.3) -> None:
    """Non-zero A and B (a fresh B is zero: no update, no gradient to A)."""
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        for p in (layer.lora_A, layer.lora_B):
            p.set_value(rng.normal(0.0, scale, p.shape).astype(p.numpy().dtype))


def np_(t: paddle.Tensor) -> np.ndarray:
    return t.numpy().astype("float64")


def gradients(loss: paddle.Tensor, tensors: list[paddle.Tensor]) -> list[paddle.Tensor]:
    """d loss / d tensors by ``backward()``, as training computes them -- not ``paddle.grad(loss, tensors)``:
    Paddle 3.3.1's layer_norm gives a wrong input gradient whenever its weight's gradient is not being
    computed, and ``paddle.grad`` over some inputs only is such a case (0.55 instead of 0.60 on a random
    float64 [4, 32] case, weight trainable or not), beyond the reach of workarounds.fix_frozen_layer_norms."""
    for t in tensors:
        t.clear_gradient()
    loss.backward()
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.clear_gradient()
    return out


def sampled_fd_check(loss_of, tensors: dict[str, paddle.Tensor], count: int = 12, seed: int = 0) -> dict[str, float]:
    """Relative error ||fd - grad|| / ||grad|| over ``count`` random entries of each tensor, where grad is
    the gradient of ``loss_of()`` by ``backward`` and fd the central difference with step FD_STEP."""
    names = list(tensors)
    grads = dict(zip(names, (g.numpy() for g in gradients(loss_of(), [tensors[n] for n in names]))))
    rng = np.random.default_rng(seed)
    errors = {}
    with paddle.no_grad():
        for name in names:
            t = tensors[name]
            base = t.numpy().copy()
            flat = rng.choice(base.size, size=min(count, base.size), replace=False)
            fd, an = [], []
            for i in flat:
                idx = np.unravel_index(i, base.shape)
                values = []
                for step in (FD_STEP, -FD_STEP):
                    moved = base.copy()
                    moved[idx] += step
                    t.set_value(moved)
                    values.append(float(loss_of()))
                t.set_value(base)
                fd.append((values[0] - values[1]) / (2 * FD_STEP))
                an.append(grads[name][idx])
            fd, an = np.array(fd), np.array(an)
            assert np.linalg.norm(an) > 1e-6, f"{name}: gradient is zero on the sampled entries"
            errors[name] = float(np.linalg.norm(fd - an) / np.linalg.norm(an))
    return errors


def pixels(seed: int = 0, dtype: str = "float64") -> paddle.Tensor:
    return paddle.to_tensor(np.random.default_rng(seed).normal(size=(2, 3, 16, 16)).astype(dtype))


def vit_loss(model: nn.Layer, x: paddle.Tensor, seed: int = 3):
    weights = paddle.to_tensor(np.random.default_rng(seed).normal(size=(2, 17, 32)))
    return lambda: (paddle.tanh(model(x)) * weights).sum()


def adapter_tensors(model: nn.Layer) -> dict[str, paddle.Tensor]:
    return {f"{name}.{p}": getattr(layer, p) for name, layer in lora_layers(model).items() for p in ("lora_A", "lora_B")}


# ---------------------------------------------------------------------------- the update


def test_fresh_adapter_changes_nothing_and_update_is_x_A_B():
    model = build()
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 6)))
    before = np_(model(x))
    names = apply_lora(model, [LoRAConfig(targets=["inp", "out"], rank=3, alpha=6.0)])
    assert names == ["inp", "out"]
    assert np.abs(np_(model(x)) - before).max() == 0.0

    layer = model.inp
    assert isinstance(layer, LoRALinear) and layer.lora_A.shape == [6, 3] and layer.lora_B.shape == [3, 8]
    bound = 1 / np.sqrt(6)  # kaiming-uniform a = sqrt(5)
    assert 0 < np.abs(np_(layer.lora_A)).max() <= bound and np.abs(np_(layer.lora_B)).max() == 0.0
    randomize(model)
    xv, w, b = np_(x), np_(layer.weight), np_(layer.bias)
    want = xv @ w + b + 2.0 * xv @ np_(layer.lora_A) @ np_(layer.lora_B)  # scale = 6 / 3
    np.testing.assert_allclose(np_(layer(x)), want, rtol=0, atol=1e-12)


def test_base_parameters_kept_by_object_and_name():
    model = build()
    weight, bias = model.inp.weight, model.inp.bias
    model.inp.weight.stop_gradient = True
    names_before = set(model.state_dict())
    apply_lora(model, [LoRAConfig(targets=["inp", "blocks.1", "fused.c"])])
    assert model.inp.weight is weight and model.inp.bias is bias
    assert model.inp.weight.stop_gradient and not model.blocks[1].weight.stop_gradient  # as they were
    added = set(model.state_dict()) - names_before
    assert names_before <= set(model.state_dict())
    assert added == {f"{n}.{p}" for n in ("inp", "blocks.1", "fused") for p in ("lora_A", "lora_B")}
    assert all(not t.stop_gradient for t in adapter_tensors(model).values())
    assert model.fused.bias is None and model.fused.adapted == ("c",)


def test_fused_parts_update_only_their_columns():
    model = build()
    names = apply_lora(model, [LoRAConfig(targets=["fused.a", "fused.c"], rank=2, alpha=3.0)])
    assert names == ["fused"]
    layer = model.fused
    assert layer.lora_A.shape == [2, 8, 2] and layer.lora_B.shape == [2, 2, 4]
    randomize(model)
    x = paddle.to_tensor(np.random.default_rng(2).normal(size=(5, 8)))
    xv, A, B = np_(x), np_(layer.lora_A), np_(layer.lora_B)
    base = xv @ np_(layer.weight)
    got = np_(layer(x))
    scale = 1.5
    np.testing.assert_array_equal(got[:, 4:8], base[:, 4:8])  # b: not adapted, bit for bit
    np.testing.assert_allclose(got[:, 0:4], base[:, 0:4] + scale * xv @ A[0] @ B[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[:, 8:12], base[:, 8:12] + scale * xv @ A[1] @ B[1], rtol=0, atol=1e-12)
    assert np.abs(got[:, 0:4] - base[:, 0:4]).min() > 0 and np.abs(got[:, 8:12] - base[:, 8:12]).min() > 0


def test_fused_bare_name_selects_every_part():
    model = build()
    apply_lora(model, [LoRAConfig(targets=["fus*"], rank=2)])
    assert model.fused.adapted == ("a", "b", "c") and model.fused.lora_A.shape == [3, 8, 2]


def test_eva_attention_qkv_adapter_takes_effect():
    """EVA's Attention calls its qkv layer (not F.linear on its weight), and qkv declares q, k, v."""
    model = tiny_vit()
    assert model.encoder.layers[0].self_attn.qkv.parts == ("q", "k", "v")
    x = pixels()
    before = np_(model(x))
    names = apply_lora(model, [LoRAConfig(targets=QV, rank=2)])
    assert names == ["encoder.layers.0.self_attn.qkv", "encoder.layers.1.self_attn.qkv"]
    assert all(layer.adapted == ("q", "v") for layer in lora_layers(model).values())
    assert np.abs(np_(model(x)) - before).max() == 0.0
    randomize(model)
    assert np.abs(np_(model(x)) - before).max() > 1e-3


# ---------------------------------------------------------------------------- gradients


def test_plain_linear_gradients_match_finite_differences():
    layer = build(nn.Linear, in_features=5, out_features=4)
    layer.weight.stop_gradient = True
    holder = nn.LayerList([layer])
    apply_lora(holder, [LoRAConfig(targets=["0"], rank=2, alpha=5.0)])
    randomize(holder)
    rng = np.random.default_rng(4)
    x = paddle.to_tensor(rng.normal(size=(3, 5)), stop_gradient=False)
    g = paddle.to_tensor(rng.normal(size=(3, 4)))
    adapted = holder[0]
    loss_of = lambda: (paddle.tanh(adapted(x)) * g).sum()  # noqa: E731  non-linear in A, B and x
    errors = sampled_fd_check(loss_of, {"A": adapted.lora_A, "B": adapted.lora_B, "x": x}, count=20)
    assert max(errors.values()) < FD_TOL, errors


def test_vit_qkv_gradients_match_finite_differences_only_with_the_layer_norm_fix():
    """Frozen EVA ViT, adapters on q and v of every block: without the frozen-LayerNorm fix (Paddle 3.3.1,
    REFERENCE 2b) the adapters' gradients are wrong; with it (applied after apply_lora) they are right."""
    model = tiny_vit()
    apply_lora(model, [LoRAConfig(targets=QV, rank=2, alpha=4.0)])
    randomize(model)
    x = pixels()
    x.stop_gradient = False
    tensors = {**adapter_tensors(model), "pixels": x}

    unfixed = sampled_fd_check(vit_loss(model, x), tensors)
    assert min(v for k, v in unfixed.items() if k != "pixels") > 1e-2, unfixed  # the defect bites

    assert fix_frozen_layer_norms(model) == 5  # 2 per block + post_layernorm
    fixed = sampled_fd_check(vit_loss(model, x), tensors)
    assert max(fixed.values()) < FD_TOL, fixed
    assert all(p.stop_gradient for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_layer_norm_fix_order_does_not_matter():
    """fix_frozen_layer_norms swaps LayerNorm classes, apply_lora swaps Linears: either order, same gradients;
    the fix is idempotent."""
    grads = []
    for fix_first in (True, False):
        model = tiny_vit()
        if fix_first:
            fix_frozen_layer_norms(model)
        apply_lora(model, [LoRAConfig(targets=QV, rank=2)])
        if not fix_first:
            fix_frozen_layer_norms(model)
        assert fix_frozen_layer_norms(model) == 0  # idempotent
        assert isinstance(model.post_layernorm, FrozenSafeLayerNorm)
        randomize(model)
        loss = vit_loss(model, pixels())()
        grads.append([g.numpy() for g in gradients(loss, list(adapter_tensors(model).values()))])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_lora_unfreezes_the_vit_so_recompute_applies_with_the_same_gradients(monkeypatch):
    """A frozen EvaViT holds eval mode and never recomputes; its adapters make it trainable again, so
    recompute (when configured) runs in train mode -- and the adapters' gradients are unchanged by it."""
    calls = []
    real = eva_vit.recompute
    monkeypatch.setattr(eva_vit, "recompute", lambda *a, **k: calls.append(1) or real(*a, **k))
    grads = []
    for flag in (False, True):
        model = tiny_vit(recompute=flag)
        fix_frozen_layer_norms(model)
        assert not model.train().training  # frozen
        apply_lora(model, [LoRAConfig(targets=QV, rank=2)])
        assert model.train().training  # adapters trainable: no longer frozen
        randomize(model)
        loss = vit_loss(model, pixels())()
        grads.append([g.numpy() for g in gradients(loss, list(adapter_tensors(model).values()))])
    assert len(calls) == 2  # recompute ran, once per block, only for flag=True
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- merging


def test_merge_unmerge_restores_weights_and_outputs():
    model = build()
    for p in model.parameters():
        p.stop_gradient = True
    apply_lora(model, [LoRAConfig(targets=["inp", "fused.b", "blocks.*"], rank=2)])
    randomize(model)
    x = paddle.to_tensor(np.random.default_rng(5).normal(size=(4, 6)))
    out = np_(model(x))
    weights = {n: np_(layer.weight) for n, layer in lora_layers(model).items()}

    assert merge_lora(model) == 4
    assert all(layer.merged for layer in lora_layers(model).values())
    np.testing.assert_allclose(np_(model(x)), out, rtol=0, atol=1e-12)
    fused = np_(model.fused.weight)
    np.testing.assert_array_equal(fused[:, :4], weights["fused"][:, :4])  # a and c columns untouched
    np.testing.assert_array_equal(fused[:, 8:], weights["fused"][:, 8:])
    assert np.abs(fused[:, 4:8] - weights["fused"][:, 4:8]).min() > 0
    want = model.inp.scale * np_(model.inp.lora_A) @ np_(model.inp.lora_B)
    np.testing.assert_allclose(np_(model.inp.weight) - weights["inp"], want, rtol=0, atol=1e-12)
    assert all(layer.weight.stop_gradient for layer in lora_layers(model).values())  # frozen stays frozen

    with pytest.raises(LoRAError, match="already merged"):
        merge_lora(model)
    assert unmerge_lora(model) == 4
    for name, layer in lora_layers(model).items():
        np.testing.assert_allclose(np_(layer.weight), weights[name], rtol=0, atol=1e-12)
        assert layer.weight.stop_gradient
    np.testing.assert_allclose(np_(model(x)), out, rtol=0, atol=1e-12)
    with pytest.raises(LoRAError, match="not merged"):
        unmerge_lora(model)
    with pytest.raises(LoRAError, match="fused"):
        model.fused.unmerge()


def test_merged_vit_equals_unmerged():
    model = tiny_vit()
    apply_lora(model, [LoRAConfig(targets=QV, rank=2)])
    randomize(model)
    x = pixels()
    out = np_(model(x))
    qkv = np_(model.encoder.layers[0].self_attn.qkv.weight)
    merge_lora(model)
    np.testing.assert_allclose(np_(model(x)), out, rtol=0, atol=1e-12)
    merged = np_(model.encoder.layers[0].self_attn.qkv.weight)
    np.testing.assert_array_equal(merged[:, 32:64], qkv[:, 32:64])  # k
    unmerge_lora(model)
    np.testing.assert_allclose(np_(model.encoder.layers[0].self_attn.qkv.weight), qkv, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- dropout


def test_dropout_follows_the_adapter_flag_not_training():
    model = build(dtype="float32")
    apply_lora(model, [LoRAConfig(targets=["inp"], rank=4, dropout=0.5)])
    randomize(model, scale=1.0)
    x = paddle.to_tensor(np.random.default_rng(6).normal(size=(16, 6)).astype("float32"))
    layer = model.inp
    assert not layer.adapter_training  # starts deterministic
    clean = layer(x).numpy()
    np.testing.assert_array_equal(layer(x).numpy(), clean)

    assert set_training(model, True) == 1
    assert not np.array_equal(layer(x).numpy(), layer(x).numpy())
    for sub in model.sublayers(include_self=True):  # what the frozen LLM does at every call
        sub.training = False
    assert not np.array_equal(layer(x).numpy(), layer(x).numpy())

    model.train()  # nor does Layer.train() / eval() touch it
    model.eval()
    assert layer.adapter_training
    set_training(model, False)
    np.testing.assert_array_equal(layer(x).numpy(), clean)
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())


# ---------------------------------------------------------------------------- errors


def test_pattern_matching_nothing_names_it_and_nearby_layers():
    model = build()
    with pytest.raises(LoRAError, match=r"Model\.lora\[1\]\.targets: 'blocks\.\*\.qq' matches no Linear") as e:
        apply_lora(model, [LoRAConfig(targets=["inp"]), LoRAConfig(targets=["blocks.*.qq"])])
    assert "nearest names: " in str(e.value) and "blocks." in str(e.value)
    assert isinstance(e.value, MedVLError) and isinstance(e.value, ValueError)
    assert not lora_layers(model)  # nothing half-applied: group 0 was valid but is not in
    with pytest.raises(LoRAError, match=r"'fused\.q'"):  # a part the layer does not declare
        apply_lora(model, [LoRAConfig(targets=["fused.q"])])


def test_layer_matched_by_two_groups():
    model = build()
    with pytest.raises(LoRAError, match=r"fused is matched by both Model\.lora\[0\] and Model\.lora\[1\]"):
        apply_lora(model, [LoRAConfig(targets=["fused.a"]), LoRAConfig(targets=["fused.c"])])
    with pytest.raises(LoRAError, match=r"blocks\.0 is matched by both"):
        apply_lora(model, [LoRAConfig(targets=["blocks.*"]), LoRAConfig(targets=["inp", "blocks.0"])])
    apply_lora(model, [LoRAConfig(targets=["fused.a", "fus*"])])  # two patterns of one group: fine
    with pytest.raises(LoRAError, match="already has a LoRA adapter"):
        apply_lora(model, [LoRAConfig(targets=["fused"])])


@pytest.mark.parametrize("field, value", [
    ("rank", 0), ("rank", 2.5), ("alpha", 0.0), ("alpha", -1.0), ("dropout", 1.0), ("dropout", -0.1), ("targets", []),
])
def test_bad_group_fields_are_named(field, value):
    group = LoRAConfig(targets=["inp"])
    setattr(group, field, value)
    with pytest.raises(LoRAError, match=rf"Model\.lora\[1\]\.{field}"):
        apply_lora(build(), [LoRAConfig(targets=["out"]), group])


def test_linear_subclass_with_own_forward_is_refused():
    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    holder = nn.LayerList([Scaled(3, 3)])
    with pytest.raises(LoRAError, match="forward of its own"):
        apply_lora(holder, [LoRAConfig(targets=["0"])])


# ---------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_base_gets_float32_adapter(dtype):
    holder = nn.LayerList([nn.Linear(8, 6)])
    holder.to(dtype=dtype)
    for p in holder.parameters():
        p.stop_gradient = True
    apply_lora(holder, [LoRAConfig(targets=["0"], rank=2)])
    layer = holder[0]
    assert layer.weight.dtype == getattr(paddle, dtype)
    assert layer.lora_A.dtype == paddle.float32 and layer.lora_B.dtype == paddle.float32
    x = paddle.ones([2, 8], dtype=dtype)
    try:
        paddle.matmul(x, layer.weight)
    except RuntimeError as e:  # Paddle 3.3.1 CPU: no half matmul kernel
        pytest.skip(f"no {dtype} matmul on this device: {str(e).splitlines()[0][:80]}")
    randomize(holder)
    out = layer(x)
    assert out.dtype == getattr(paddle, dtype)
    want = np_(x) @ np_(layer.weight) + np_(layer.bias) + layer.scale * np_(x) @ np_(layer.lora_A) @ np_(layer.lora_B)
    np.testing.assert_allclose(np_(out), want, rtol=2e-2, atol=2e-2)


def test_reset_gives_a_fresh_adapter():
    """``reset`` (used when a checkpoint has no values for an adapter) restores A ~ U(+-1/sqrt(in)), B = 0."""
    model = build()
    apply_lora(model, [LoRAConfig(targets=["fused.a", "fused.c"], rank=2)])
    randomize(model, scale=5.0)
    x = paddle.to_tensor(np.random.default_rng(7).normal(size=(3, 8)))
    base = np_(paddle.matmul(x, model.fused.weight))
    model.fused.reset()
    assert np.abs(np_(model.fused.lora_B)).max() == 0.0
    assert 0 < np.abs(np_(model.fused.lora_A)).max() <= 1 / np.sqrt(8)
    assert not model.fused.lora_A.stop_gradient and not model.fused.lora_B.stop_gradient
    np.testing.assert_array_equal(np_(model.fused(x)), base)
