"""Low-rank adapters (LoRA, Hu et al. 2021) on the Linear layers of any of our models, chosen by name.

Paper 002 fine-tunes a frozen model through adapters: each chosen Linear computes
``base(x) + (alpha / rank) * dropout(x) @ A @ B`` with A [in, r] and B [r, out] trained and the
base weight frozen. ``apply_lora(model, config.lora)`` puts them in; ``merge_lora`` folds them into
the base weights for inference and ``unmerge_lora`` takes them out again.

Why our own layer and not ``paddlenlp.peft.LoRAModel`` (REFERENCE 7): peft's layer is a silent
no-op on a layer whose forward reads ``self.qkv.weight`` directly (output unchanged, no gradient
to A); it needs a config shim (``tensor_parallel_degree``) on a model that is not paddlenlp's; it
freezes every parameter it was not told about; and it merges only through ``eval()``, which flips
Paddle's global tracer to eval mode for the whole process. Here nothing else is frozen or
unfrozen, merging is an explicit call, and the adapter's mode is a flag of its own.

How a Linear is adapted: ``LoRALinear`` replaces it in its parent (same attribute name) and keeps
the base's own ``weight`` and ``bias`` parameter objects under those names, so the state-dict
names of the base weights do not change (``...self_attn.qkv.weight``) and the adapter adds only
``...lora_A`` and ``...lora_B``.

Fused projections: a Linear whose output is equal-width parts declares them as an attribute
``parts`` (EVA's ``qkv`` says ``("q", "k", "v")`` for its ``[q | k | v]`` columns). A target
pattern then selects parts by suffix (``...self_attn.qkv.q``), and each chosen part gets its own
A and B whose update lands in that part's columns only: LoRA on q and v leaves k untouched.

Training mode: dropout on the adapter's input follows ``adapter_training``, set by
``set_training(model, mode)``, not ``self.training``: the frozen LLM clears the ``training`` flag of
every sublayer at each call (``language/base.py``), yet its adapters must still drop out while the
model trains. It starts False (deterministic), so whoever trains must switch it on.

Gradients need the frozen-LayerNorm fix: Paddle 3.3.1's ``layer_norm`` backward is wrong when the
norm's weight is frozen (REFERENCE 2b), and every frozen norm between an adapter and the loss
corrupts the adapter's gradient. ``workarounds.fix_frozen_layer_norms`` (which the composed model
applies) is independent of this module: it swaps LayerNorm classes, this swaps Linears, and it
reads the frozen state at each call, so the two can be applied in either order. The fix covers
``backward()`` only: ``paddle.grad(loss, adapters)`` prunes the norms' weight gradients and gets the
same wrong input gradients again (Paddle 3.3.1), so take adapter gradients with ``backward()``.
"""
from __future__ import annotations

import difflib
import math
from fnmatch import fnmatchcase
from typing import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import LoRAConfig
from ..errors import MedVLError

_HALF = (paddle.float16, paddle.bfloat16)


class LoRAError(MedVLError, ValueError):
    """A LoRA config that cannot be applied, or a merge in the wrong state; the message names the
    pattern, field or layer."""


# ---------------------------------------------------------------------------- the layer


class LoRALinear(nn.Layer):
    """A Linear plus a low-rank update, on the whole output or on some of its declared ``parts``.

    ``base``'s weight [in, out] and bias are kept as this layer's ``weight`` and ``bias`` (same
    objects, frozen or not as they were). Plain: ``lora_A`` [in, r], ``lora_B`` [r, out]. Fused
    (``base.parts`` declared, ``adapted`` a subset of them): ``lora_A`` [P, in, r], ``lora_B``
    [P, r, out / len(parts)] for the P adapted parts, in declared order.

    A starts kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), as the LoRA paper's
    code and peft do) and B at zero, so a fresh adapter changes nothing. The adapter is float32
    over a half-precision base (its gradients and Adam's updates need the range), else the base's
    dtype; its branch runs in that dtype and is cast to the output's.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
        adapted: Sequence[str] | None = None, path: str = "",
    ) -> None:
        super().__init__(dtype=base._dtype)
        self.weight = base.weight
        self.bias = base.bias
        self.in_features, self.out_features = base.weight.shape
        self.parts: tuple[str, ...] | None = tuple(base.parts) if getattr(base, "parts", None) else None
        self.path = path or type(base).__name__  # the layer's name in the model, for messages
        if self.parts is None:
            if adapted:
                raise LoRAError(f"{self.path} declares no parts, so parts {list(adapted)} cannot be adapted")
            self.adapted: tuple[str, ...] = ()
        else:
            if self.out_features % len(self.parts):
                raise LoRAError(f"{self.path}: {self.out_features} output columns do not split into "
                                f"{len(self.parts)} equal parts {self.parts}")
            chosen = set(self.parts if adapted is None else adapted)
            unknown = chosen - set(self.parts)
            if unknown or not chosen:
                raise LoRAError(f"{self.path}: parts {sorted(unknown) or '[]'} are not among its parts {self.parts}")
            self.adapted = tuple(p for p in self.parts if p in chosen)
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scale = alpha / rank
        self.merged = False
        self.adapter_training = False

        dtype = paddle.float32 if base.weight.dtype in _HALF else base.weight.dtype
        bound = 1.0 / math.sqrt(self.in_features)
        if self.parts is None:
            a_shape, b_shape = [self.in_features, rank], [rank, self.out_features]
        else:
            width = self.out_features // len(self.parts)
            a_shape, b_shape = [len(self.adapted), self.in_features, rank], [len(self.adapted), rank, width]
        self.lora_A = self.create_parameter(a_shape, dtype=dtype, default_initializer=nn.initializer.Uniform(-bound, bound))
        self.lora_B = self.create_parameter(b_shape, dtype=dtype, default_initializer=nn.initializer.Constant(0.0))

    def reset(self) -> None:
        """A fresh adapter (A kaiming-uniform, B zero), also for parameters built under ``paddle.LazyGuard``
        (a checkpoint without this adapter loads into a skeleton: its values are set here)."""
        bound = 1.0 / math.sqrt(self.in_features)
        with paddle.no_grad():
            self.lora_A.set_value(paddle.uniform(self.lora_A.shape, dtype=self.lora_A.dtype, min=-bound, max=bound))
            self.lora_B.set_value(paddle.zeros(self.lora_B.shape, dtype=self.lora_B.dtype))

    def factors(self) -> tuple[paddle.Tensor, paddle.Tensor]:
        """The update as one product ``a @ b``: a [in, P*r] and b [P*r, out], where b puts part j's
        B into that part's columns and zeros elsewhere (plain: A and B themselves). Two matmuls
        whatever the number of parts, and the same factors for the forward and for merging."""
        if self.parts is None:
            return self.lora_A, self.lora_B
        count, rank = len(self.adapted), self.rank
        a = self.lora_A.transpose([1, 0, 2]).reshape([self.in_features, count * rank])
        zeros = paddle.zeros([rank, self.out_features // len(self.parts)], dtype=self.lora_B.dtype)
        rows = [paddle.concat([self.lora_B[j] if p == part else zeros for p in self.parts], axis=1)
                for j, part in enumerate(self.adapted)]
        return a, paddle.concat(rows, axis=0)

    def delta_weight(self) -> paddle.Tensor:
        """scale * A @ B as a [in, out] matrix in the adapter's dtype (what merging adds)."""
        a, b = self.factors()
        return paddle.matmul(a, b) * self.scale

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        h = x if x.dtype == self.lora_A.dtype else x.astype(self.lora_A.dtype)
        if self.dropout:
            h = F.dropout(h, self.dropout, training=self.adapter_training)
        a, b = self.factors()
        update = paddle.matmul(paddle.matmul(h, a), b) * self.scale
        return out + (update if update.dtype == out.dtype else update.astype(out.dtype))

    # -- merging: explicit, no tracer mode involved
    def merge(self) -> None:
        """Add the update into ``weight`` (in place; frozen stays frozen); the forward then skips the branch.

        Merging a merged layer is an error, not a no-op: a second merge in a caller's code means it
        lost track of the state, and silently ignoring it would hide that. While merged, A and B
        get no gradients: merge for inference. Over a half-precision base the sum is rounded to
        the base's dtype, so ``unmerge`` restores it only to that precision.
        """
        if self.merged:
            raise LoRAError(f"LoRA on {self.path} is already merged")
        self._shift(1.0)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update back out of ``weight``; an error on a layer that is not merged."""
        if not self.merged:
            raise LoRAError(f"LoRA on {self.path} is not merged, so there is nothing to unmerge")
        self._shift(-1.0)
        self.merged = False

    def _shift(self, sign: float) -> None:
        with paddle.no_grad():
            delta = self.delta_weight() * sign
            weight = self.weight if self.weight.dtype == delta.dtype else self.weight.astype(delta.dtype)
            self.weight.set_value((weight + delta).astype(self.weight.dtype))  # keeps stop_gradient

    def extra_repr(self) -> str:
        parts = f", parts={','.join(self.adapted)}" if self.parts else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, dropout={self.dropout}{parts}, merged={self.merged}")


# ---------------------------------------------------------------------------- putting adapters in


def apply_lora(model: nn.Layer, groups: Sequence[LoRAConfig]) -> list[str]:
    """Give every ``nn.Linear`` under ``model`` whose name matches a group's targets an adapter.

    Names are relative to ``model`` (``named_sublayers()``); patterns are fnmatch (case-sensitive).
    For a Linear that declares ``parts``, a pattern matching ``name + "." + part`` selects that part
    and one matching the bare name selects all of them. Every pattern must match something; a layer
    may belong to one group only. Everything is checked before any layer changes, so an error
    leaves the model as it was. Adapters train (``stop_gradient=False``); no other parameter's
    state changes. Returns the adapted layers' names, in model order.
    """
    linears = {name: sub for name, sub in model.named_sublayers() if isinstance(sub, (nn.Linear, LoRALinear))}
    plan: dict[str, tuple[int, set[str] | None]] = {}  # name -> (group index, parts; None = whole)
    for index, group in enumerate(groups):
        _check_group(group, index)
        chosen: dict[str, set[str] | None] = {}
        for pattern in group.targets:
            hits = _matches(pattern, linears)
            if not hits:
                raise LoRAError(f"Model.lora[{index}].targets: {pattern!r} matches no Linear layer; "
                                f"{_nearby(pattern, linears)}")
            for name, parts in hits.items():
                if parts is None or chosen.get(name, set()) is None:
                    chosen[name] = None
                else:
                    chosen.setdefault(name, set()).update(parts)
        for name in chosen:
            layer = linears[name]
            if isinstance(layer, LoRALinear):
                raise LoRAError(f"Model.lora[{index}].targets: {name} already has a LoRA adapter")
            if type(layer).forward is not nn.Linear.forward:
                raise LoRAError(f"Model.lora[{index}].targets: {name} is a {type(layer).__name__} with a forward "
                                "of its own, which an adapter would replace by a plain linear")
            if name in plan:
                raise LoRAError(f"{name} is matched by both Model.lora[{plan[name][0]}] and Model.lora[{index}]; "
                                "a layer takes one adapter")
            plan[name] = (index, chosen[name])

    owners = dict(model.named_sublayers(include_self=True))
    for name, (index, parts) in plan.items():
        group = groups[index]
        parent, _, attr = name.rpartition(".")
        adapter = LoRALinear(linears[name], group.rank, group.alpha, group.dropout, adapted=parts, path=name)
        setattr(owners[parent], attr, adapter)
    order = [name for name in linears if name in plan]
    return order


def _check_group(group: LoRAConfig, index: int) -> None:
    where = f"Model.lora[{index}]"
    if not group.targets or not all(isinstance(t, str) and t for t in group.targets):
        raise LoRAError(f"{where}.targets must be a non-empty list of name patterns, got {group.targets!r}")
    if isinstance(group.rank, bool) or not isinstance(group.rank, int) or group.rank < 1:
        raise LoRAError(f"{where}.rank must be an integer >= 1, got {group.rank!r}")
    if isinstance(group.alpha, bool) or not isinstance(group.alpha, (int, float)) or not group.alpha > 0:
        raise LoRAError(f"{where}.alpha must be > 0, got {group.alpha!r}")
    if isinstance(group.dropout, bool) or not isinstance(group.dropout, (int, float)) or not 0 <= group.dropout < 1:
        raise LoRAError(f"{where}.dropout must be in [0, 1), got {group.dropout!r}")


def _matches(pattern: str, linears: dict[str, nn.Layer]) -> dict[str, set[str] | None]:
    """The layers ``pattern`` selects: name -> the parts it selects (None: the whole layer)."""
    hits: dict[str, set[str] | None] = {}
    for name, layer in linears.items():
        parts = getattr(layer, "parts", None)
        if fnmatchcase(name, pattern):
            hits[name] = None
        elif parts:
            chosen = {p for p in parts if fnmatchcase(f"{name}.{p}", pattern)}
            if chosen:
                hits[name] = chosen
    return hits


def _nearby(pattern: str, linears: dict[str, nn.Layer]) -> str:
    names = [f"{n}.{p}" for n, layer in linears.items() for p in (getattr(layer, "parts", None) or ())]
    names = list(linears) + names
    if not names:
        return "the model has no Linear layers"
    close = difflib.get_close_matches(pattern, names, n=4, cutoff=0.0)
    return "nearest names: " + ", ".join(close)


# ---------------------------------------------------------------------------- the adapters of a model


def lora_layers(model: nn.Layer) -> dict[str, LoRALinear]:
    """Name -> adapter, for every ``LoRALinear`` under ``model`` (``model`` itself included)."""
    return {name: sub for name, sub in model.named_sublayers(include_self=True) if isinstance(sub, LoRALinear)}


def merge_lora(model: nn.Layer) -> int:
    """Merge every adapter under ``model``; an error (before any merge) if one is merged already."""
    layers = lora_layers(model)
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise LoRAError(f"LoRA already merged on {', '.join(merged[:4])}{' ...' if len(merged) > 4 else ''}")
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Layer) -> int:
    """Unmerge every adapter under ``model``; an error (before any change) if one is not merged."""
    layers = lora_layers(model)
    loose = [name for name, layer in layers.items() if not layer.merged]
    if loose:
        raise LoRAError(f"LoRA not merged on {', '.join(loose[:4])}{' ...' if len(loose) > 4 else ''}")
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def set_training(model: nn.Layer, mode: bool = True) -> int:
    """Switch the adapters' dropout on (training) or off, whatever the layers' ``training`` flags say.
    Returns the number of adapters."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.adapter_training = bool(mode)
    return len(layers)
