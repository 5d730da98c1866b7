"""One device flag for CPU, NVIDIA GPU, Ascend NPU and any PaddleCustomDevice plugin.

`Global.device` (``auto | cpu | gpu[:N] | npu[:N] | <custom type>[:N]``) resolves to a
:class:`Device` that carries everything the rest of the code may need to know about where it
runs: the place string for ``paddle.set_device``, the distributed backend, the default AMP dtype
and the environment presets. Models never look at it; ``engine/`` and ``tools/`` do.

What Paddle can do is read through a :class:`Probe`, so every rule here is testable without
the hardware (tests pass a fake probe).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Mapping, MutableMapping

from .errors import MedVLError

# The environment the official Ascend images use (REFERENCE.md section 3). Applied only where
# the user has not set a value. ASCEND_RT_VISIBLE_DEVICES is deliberately absent: it must be
# set before the runtime starts (Dockerfile.ascend does that), and setting it here would hide
# devices from a user who did not ask for it.
NPU_PRESETS: dict[str, str] = {
    "FLAGS_use_stride_kernel": "0",  # the NPU plugin has no strided kernels
    "FLAGS_npu_storage_format": "0",  # private NPU layouts break checkpoint round trips
    "FLAGS_allocator_strategy": "auto_growth",  # naive_best_fit grabs all HBM up front
    "HCCL_CONNECT_TIMEOUT": "7200",  # the first op compile on 8 cards outlasts the default
    "HCCL_WHITELIST_DISABLE": "1",
    "HCCL_SECURITY_MODE": "1",
    "HCCL_BUFFSIZE": "120",
    "PADDLE_XCCL_BACKEND": "npu",  # Paddle <= 2.6 needs it to pick the plugin's collectives
}
# Ascend 910B only: its JIT op compile is slower than the prebuilt binary kernels.
NPU_910B_PRESETS: dict[str, str] = {"FLAGS_npu_jit_compile": "0"}
# The CPU: strided views send transposes and their gradients through a slow generic copy
# (0.35 s of a 1.1 s BLIP-2 train step, bench/model_step.py); contiguous kernels give the same numbers.
CPU_PRESETS: dict[str, str] = {"FLAGS_use_stride_kernel": "0"}
# Any other custom device: the plugin kernels (and our test plugin) have no strided views.
CUSTOM_PRESETS: dict[str, str] = {"FLAGS_use_stride_kernel": "0"}

_SPEC = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)(?::(?P<index>\d+))?$")
_FORMS = "auto | cpu | gpu[:N] | npu[:N] | <registered custom device type>[:N]"


class DeviceError(MedVLError, RuntimeError):
    """The device flag cannot be honoured on this machine; the message says how to fix it."""


@dataclass(frozen=True)
class Device:
    """Where this process runs, resolved once from the device flag."""

    type: str  # "cpu", "gpu", "npu" or another registered custom device type
    index: int | None  # None on CPU
    is_custom: bool  # a PaddleCustomDevice plugin
    backend: str  # "gloo" | "nccl" | "xccl"
    amp_dtype: str | None  # default AMP dtype: None, "float16" or "bfloat16"
    amp_dtypes: tuple[str, ...]  # every AMP dtype this device accepts
    env_presets: Mapping[str, str] = field(default_factory=dict)
    name: str = ""  # the hardware name where Paddle reports one (e.g. "Ascend910B1")

    @property
    def place(self) -> str:
        """The string for ``paddle.set_device``."""
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def check_amp_dtype(self, dtype: str | None) -> str | None:
        """Validate a configured AMP dtype ("auto" means this device's default)."""
        if dtype in (None, "", "none", "float32"):
            return None
        if dtype == "auto":
            return self.amp_dtype
        if dtype not in self.amp_dtypes:
            allowed = ", ".join(self.amp_dtypes) or "none (fp32 only)"
            raise DeviceError(
                f"AMP dtype {dtype!r} is not supported on {self.place}"
                f"{' (' + self.name + ')' if self.name else ''}; allowed: {allowed}. "
                "Ascend 910A is fp16 only; bf16 needs a 910B with Paddle >= 3 or a GPU with "
                "compute capability >= 8."
            )
        return dtype

    def describe(self, applied: Mapping[str, str] | None = None) -> str:
        presets = self.env_presets if applied is None else applied
        kept = sorted(set(self.env_presets) - set(presets))
        text = (
            f"device {self.place}{' (' + self.name + ')' if self.name else ''}: "
            f"{'custom device plugin, ' if self.is_custom else ''}backend {self.backend}, "
            f"default AMP {self.amp_dtype or 'off'}"
        )
        if self.env_presets:
            text += "; environment presets set: " + (", ".join(f"{k}={v}" for k, v in presets.items()) or "none")
            if kept:
                text += "; kept the user's " + ", ".join(kept)
        return text


class Probe:
    """What the installed Paddle can do. Imports paddle lazily: presets go in first."""

    def _paddle(self):
        import paddle

        return paddle

    def paddle_version(self) -> str:
        return self._paddle().__version__

    def custom_types(self) -> list[str]:
        return sorted(self._paddle().device.get_all_custom_device_type() or [])

    def cuda_compiled(self) -> bool:
        return bool(self._paddle().device.is_compiled_with_cuda())

    def count(self, device_type: str) -> int:
        paddle = self._paddle()
        if device_type == "gpu":
            return int(paddle.device.cuda.device_count())
        return len(
            [d for d in paddle.device.get_available_custom_device() or [] if d.split(":")[0] == device_type]
        )

    def gpu_capability(self, index: int) -> tuple[int, int]:
        return tuple(self._paddle().device.cuda.get_device_capability(index))

    def device_name(self, place: str) -> str:
        """The hardware name a custom plugin reports (Paddle >= 3); "" where it reports none."""
        try:
            return str(self._paddle().device.get_device_properties(place).name)
        except Exception:  # Paddle 2.6 has no such call; plugins may not implement it
            return ""


def _version_tuple(version: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", version)[:3]
    return tuple(int(n) for n in nums)


def _plugin_help(device_type: str, probe: Probe, environ: Mapping[str, str]) -> str:
    types = probe.custom_types()
    registered = ", ".join(types) if types else "none"
    root = environ.get("CUSTOM_DEVICE_ROOT") or "<unset>"
    msg = (
        f"device type {device_type!r} is not available: no PaddleCustomDevice plugin registers it. "
        f"Registered custom device types: {registered}. Paddle loads plugins (*.so) at "
        f"`import paddle` from $CUSTOM_DEVICE_ROOT (now {root}) and from "
        "<site-packages>/paddle_custom_device/."
    )
    if device_type == "npu":
        msg += (
            f" For Ascend NPUs install the plugin that matches paddlepaddle {probe.paddle_version()}: "
            "on 910B `pip install paddle-custom-npu==<same version as paddlepaddle>` from Paddle's "
            "package index; on 910A build PaddleCustomDevice branch release/2.6 "
            "(backends/npu: `bash tools/compile.sh`) and pip-install the wheel it writes. Then "
            "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` and check with "
            "`python tools/env_check.py --device npu`. See custom_device/README.md."
        )
    return msg


def resolve_device(
    spec: str = "auto", *, environ: Mapping[str, str] | None = None, probe: Probe | None = None
) -> Device:
    """Turn the device flag into a :class:`Device`, or raise :class:`DeviceError` saying why not.

    Under ``paddle.distributed.launch`` the rank's device comes from ``FLAGS_selected_<type>s``.
    """
    environ = os.environ if environ is None else environ
    probe = probe or Probe()
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if "npu" in probe.custom_types():
            text = "npu"
        elif probe.cuda_compiled() and probe.count("gpu") > 0:
            text = "gpu"
        else:
            text = "cpu"
    match = _SPEC.match(text)
    if not match:
        raise DeviceError(f"Global.device={spec!r} is not a device: expected {_FORMS}")
    dtype, index = match["type"], match["index"]
    index = None if index is None else int(index)

    if dtype == "cpu":
        if index not in (None, 0):
            raise DeviceError(f"Global.device={spec!r}: the CPU has no index; use `cpu`")
        return Device("cpu", None, False, "gloo", None, (), dict(CPU_PRESETS))

    if dtype == "gpu":
        if not probe.cuda_compiled():
            raise DeviceError(
                f"Global.device={spec!r}, but paddlepaddle {probe.paddle_version()} was built without "
                "CUDA. Install the GPU wheel (`pip install paddlepaddle-gpu==<version>` from Paddle's "
                "package index for your CUDA), or set Global.device=cpu (or auto)."
            )
    elif dtype not in probe.custom_types():
        raise DeviceError(_plugin_help(dtype, probe, environ))

    selected = environ.get(f"FLAGS_selected_{dtype}s")
    if selected:
        launched = int(selected.split(",")[0])
        if index is not None and index != launched:
            raise DeviceError(
                f"Global.device={spec!r}, but paddle.distributed.launch gave this rank {dtype}:{launched} "
                f"(FLAGS_selected_{dtype}s={selected}). Under launch choose devices with "
                f"`--devices`, and set Global.device={dtype}."
            )
        index = launched
    index = 0 if index is None else index
    count = probe.count(dtype)
    if index >= count:
        visible = {"gpu": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}.get(dtype)
        hint = f" ({visible}={environ.get(visible, '<unset>')})" if visible else ""
        raise DeviceError(
            f"Global.device={spec!r} asks for {dtype}:{index}, but only {count} {dtype} device(s) "
            f"are visible{hint}: use an index from 0 to {count - 1}."
        )

    place = f"{dtype}:{index}"
    new_paddle = _version_tuple(probe.paddle_version()) >= (3,)
    if dtype == "gpu":
        major, _ = probe.gpu_capability(index)
        amp = "bfloat16" if major >= 8 else "float16"
        return Device("gpu", index, False, "nccl", amp, ("float16", "bfloat16") if major >= 8 else ("float16",))

    name = probe.device_name(place)
    presets = dict(CUSTOM_PRESETS)
    presets.setdefault("PADDLE_XCCL_BACKEND", dtype)
    # Paddle (3.3.1) allows bf16 AMP only on custom types it knows by name (npu among them).
    amp_dtypes: tuple[str, ...] = ("float16",)
    amp: str | None = None
    if dtype == "npu":
        presets = dict(NPU_PRESETS)
        is_910b = "910b" in name.lower() or "910_93" in name.lower()
        if is_910b:
            presets.update(NPU_910B_PRESETS)
        # 910A is fp16 only, and Paddle <= 2.6 refuses bf16 AMP on any custom device.
        amp_dtypes = ("float16", "bfloat16") if (is_910b and new_paddle) else ("float16",)
        amp = "float16"
    return Device(dtype, index, True, "xccl", amp, amp_dtypes, presets, name)


def apply_presets(presets: Mapping[str, str], environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each preset only where the user has not; returns what was set."""
    environ = os.environ if environ is None else environ
    applied = {k: v for k, v in presets.items() if k not in environ}
    environ.update(applied)
    return applied


_announced = False


def cpu_threads(environ: Mapping[str, str] | None = None) -> int:
    """Math threads on the CPU: ``OMP_NUM_THREADS`` as Paddle's OpenMP kernels read it at import
    (the user's, or the cores, set by importing ``paddle_medvl`` first; Paddle's own default is 1,
    and ``paddle.distributed.launch`` hands its ranks that 1 unless the user set a value)."""
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def setup_device(spec: str = "auto") -> Device:
    """Resolve the flag, apply the presets the user has not set, select the device, say so once.

    Call it before building models. ``FLAGS_*`` presets are also passed to ``paddle.set_flags``
    because Paddle reads its flags from the environment only at import.
    """
    global _announced
    device = resolve_device(spec)
    applied = apply_presets(device.env_presets)
    import paddle

    for key, value in applied.items():
        if key.startswith("FLAGS_"):
            _set_flag(paddle, key, value)
    paddle.set_device(device.place)
    threads = ""
    if device.type == "cpu":  # Paddle's MKL computes on one thread, whatever OMP_NUM_THREADS says
        count = cpu_threads()
        paddle.base.core.set_num_threads(count)
        threads = f"; {count} math thread(s)"
    if not _announced and os.environ.get("PADDLE_TRAINER_ID", "0") == "0":
        print(f"[paddle_medvl] {device.describe(applied)}{threads}", file=sys.stderr, flush=True)
    _announced = True
    return device


def _set_flag(paddle, key: str, value: str) -> None:
    """Set a flag Paddle already read at import, converting to the flag's own type."""
    try:
        current = paddle.get_flags([key])[key]
    except (ValueError, RuntimeError):
        return  # not defined by this Paddle build or plugin: the environment value stays
    if isinstance(current, bool):
        paddle.set_flags({key: value.lower() in ("1", "true")})
    else:
        paddle.set_flags({key: type(current)(value)})
