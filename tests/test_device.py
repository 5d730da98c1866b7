"""Device flag resolution for every form, under simulated launch environments, and its errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paddle_medvl.device import (
    CUSTOM_PRESETS,
    NPU_PRESETS,
    Device,
    DeviceError,
    Probe,
    apply_presets,
    resolve_device,
)


class FakeProbe(Probe):
    """A machine described by numbers: which plugins, how many cards, what kind."""

    def __init__(self, version="3.3.1", custom=None, cuda=False, gpus=0, capability=(8, 0), names=None):
        self.version, self.custom, self.cuda, self.gpus = version, dict(custom or {}), cuda, gpus
        self.capability, self.names = capability, names or {}

    def paddle_version(self):
        return self.version

    def custom_types(self):
        return sorted(self.custom)

    def cuda_compiled(self):
        return self.cuda

    def count(self, device_type):
        return self.gpus if device_type == "gpu" else self.custom.get(device_type, 0)

    def gpu_capability(self, index):
        return self.capability

    def device_name(self, place):
        return self.names.get(place, "")


CPU_BUILD = FakeProbe()
A100 = FakeProbe(cuda=True, gpus=4, capability=(8, 0))
V100 = FakeProbe(cuda=True, gpus=2, capability=(7, 0))
NPU_910B = FakeProbe(custom={"npu": 8}, names={f"npu:{i}": "Ascend910B2" for i in range(8)})
NPU_910A_P26 = FakeProbe(version="2.6.1", custom={"npu": 8}, names={})
PLUGIN = FakeProbe(custom={"medvl_cpu": 2})


@pytest.mark.parametrize(
    "probe, spec, place, backend, amp, custom",
    [
        (CPU_BUILD, "cpu", "cpu", "gloo", None, False),
        (CPU_BUILD, "auto", "cpu", "gloo", None, False),
        (CPU_BUILD, None, "cpu", "gloo", None, False),
        (FakeProbe(cuda=True, gpus=0), "auto", "cpu", "gloo", None, False),  # CUDA build, no card
        (A100, "gpu", "gpu:0", "nccl", "bfloat16", False),
        (A100, "GPU:3", "gpu:3", "nccl", "bfloat16", False),
        (A100, "auto", "gpu:0", "nccl", "bfloat16", False),
        (V100, "gpu:1", "gpu:1", "nccl", "float16", False),
        (NPU_910B, "npu", "npu:0", "xccl", "float16", True),
        (NPU_910B, "npu:7", "npu:7", "xccl", "float16", True),
        (NPU_910B, "auto", "npu:0", "xccl", "float16", True),
        (FakeProbe(cuda=True, gpus=8, custom={"npu": 8}), "auto", "npu:0", "xccl", "float16", True),
        (PLUGIN, "medvl_cpu:1", "medvl_cpu:1", "xccl", None, True),
        (PLUGIN, "auto", "cpu", "gloo", None, False),  # auto never picks an unknown plugin
    ],
)
def test_every_flag_form(probe, spec, place, backend, amp, custom):
    device = resolve_device(spec, environ={}, probe=probe)
    assert (device.place, device.backend, device.amp_dtype, device.is_custom) == (place, backend, amp, custom)


@pytest.mark.parametrize(
    "probe, environ, spec, place",
    [
        (A100, {"FLAGS_selected_gpus": "2"}, "gpu", "gpu:2"),
        (A100, {"FLAGS_selected_gpus": "2"}, "auto", "gpu:2"),
        (A100, {"FLAGS_selected_gpus": "2"}, "gpu:2", "gpu:2"),
        (NPU_910B, {"FLAGS_selected_npus": "5"}, "npu", "npu:5"),
        (NPU_910B, {"FLAGS_selected_npus": "5", "FLAGS_selected_gpus": "1"}, "auto", "npu:5"),
        (PLUGIN, {"FLAGS_selected_medvl_cpus": "1"}, "medvl_cpu", "medvl_cpu:1"),
        (A100, {"FLAGS_selected_npus": "3"}, "gpu", "gpu:0"),  # another type's selection is ignored
    ],
)
def test_launch_selection_is_honoured(probe, environ, spec, place):
    assert resolve_device(spec, environ=environ, probe=probe).place == place


def test_launch_selection_conflicting_with_an_explicit_index():
    with pytest.raises(DeviceError, match=r"launch gave this rank npu:5 \(FLAGS_selected_npus=5\).*--devices"):
        resolve_device("npu:2", environ={"FLAGS_selected_npus": "5"}, probe=NPU_910B)


def test_npu_without_plugin_says_how_to_install():
    probe = FakeProbe(custom={"medvl_cpu": 1})
    with pytest.raises(DeviceError) as err:
        resolve_device("npu", environ={"CUSTOM_DEVICE_ROOT": "/opt/plugins"}, probe=probe)
    text = str(err.value)
    assert "no PaddleCustomDevice plugin registers it" in text
    assert "Registered custom device types: medvl_cpu" in text
    assert "/opt/plugins" in text and "paddle_custom_device/" in text
    assert "paddle-custom-npu==<same version as paddlepaddle>" in text and "3.3.1" in text
    assert "release/2.6" in text and "set_env.sh" in text


def test_unknown_custom_type_lists_registered_types():
    with pytest.raises(DeviceError, match=r"'mlu' is not available.*Registered custom device types: none"):
        resolve_device("mlu", environ={}, probe=CPU_BUILD)


def test_gpu_on_a_cpu_build():
    with pytest.raises(DeviceError, match=r"paddlepaddle 3\.3\.1 was built without CUDA.*paddlepaddle-gpu"):
        resolve_device("gpu", environ={}, probe=CPU_BUILD)


@pytest.mark.parametrize(
    "probe, spec, environ, message",
    [
        (V100, "gpu:2", {"CUDA_VISIBLE_DEVICES": "0,1"}, r"gpu:2, but only 2 gpu device\(s\) are visible \(CUDA_VISIBLE_DEVICES=0,1\): use an index from 0 to 1"),
        (NPU_910B, "npu:8", {}, r"npu:8, but only 8 npu device\(s\) are visible \(ASCEND_RT_VISIBLE_DEVICES=<unset>\)"),
        (NPU_910B, "npu", {"FLAGS_selected_npus": "9"}, r"npu:9, but only 8"),
        (PLUGIN, "medvl_cpu:2", {}, r"medvl_cpu:2, but only 2 medvl_cpu device\(s\) are visible: use"),
    ],
)
def test_index_out_of_range(probe, spec, environ, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(spec, environ=environ, probe=probe)


@pytest.mark.parametrize("spec", ["gpu:x", "npu:-1", "gpu:0:1", "", "cuda 0", "9npu"])
def test_malformed_flag(spec):
    if spec == "":  # empty means auto
        assert resolve_device(spec, environ={}, probe=CPU_BUILD).place == "cpu"
        return
    with pytest.raises(DeviceError, match=r"is not a device: expected auto \| cpu \| gpu\[:N\]"):
        resolve_device(spec, environ={}, probe=A100)


def test_cpu_has_no_index():
    with pytest.raises(DeviceError, match="the CPU has no index"):
        resolve_device("cpu:1", environ={}, probe=CPU_BUILD)


def test_amp_dtypes_per_chip():
    b = resolve_device("npu", environ={}, probe=NPU_910B)
    assert b.check_amp_dtype("bfloat16") == "bfloat16" and b.check_amp_dtype("auto") == "float16"
    a = resolve_device("npu", environ={}, probe=NPU_910A_P26)
    assert a.amp_dtypes == ("float16",)
    with pytest.raises(DeviceError, match=r"'bfloat16' is not supported on npu:0; allowed: float16.*910A is fp16 only"):
        a.check_amp_dtype("bfloat16")
    # a 910B name on Paddle 2.6 is still fp16 only: Paddle <= 2.6 refuses bf16 on custom devices
    old_b = FakeProbe(version="2.6.1", custom={"npu": 1}, names={"npu:0": "Ascend910B1"})
    assert resolve_device("npu", environ={}, probe=old_b).amp_dtypes == ("float16",)
    v = resolve_device("gpu", environ={}, probe=V100)
    with pytest.raises(DeviceError, match="allowed: float16"):
        v.check_amp_dtype("bfloat16")
    plugin = resolve_device("medvl_cpu", environ={}, probe=PLUGIN)
    assert plugin.amp_dtypes == ("float16",) and plugin.check_amp_dtype("auto") is None
    cpu = resolve_device("cpu", environ={}, probe=CPU_BUILD)
    assert cpu.check_amp_dtype("auto") is None and cpu.check_amp_dtype("float32") is None
    with pytest.raises(DeviceError, match=r"allowed: none \(fp32 only\)"):
        cpu.check_amp_dtype("float16")


def test_presets_per_device():
    b = resolve_device("npu", environ={}, probe=NPU_910B)
    assert b.env_presets["FLAGS_npu_jit_compile"] == "0"
    assert {k: b.env_presets[k] for k in NPU_PRESETS} == NPU_PRESETS
    assert b.env_presets["HCCL_CONNECT_TIMEOUT"] == "7200" and b.env_presets["FLAGS_use_stride_kernel"] == "0"
    a = resolve_device("npu", environ={}, probe=NPU_910A_P26)
    assert "FLAGS_npu_jit_compile" not in a.env_presets
    plugin = resolve_device("medvl_cpu", environ={}, probe=PLUGIN)
    assert plugin.env_presets == {**CUSTOM_PRESETS, "PADDLE_XCCL_BACKEND": "medvl_cpu"}
    assert resolve_device("gpu", environ={}, probe=A100).env_presets == {}
    assert resolve_device("cpu", environ={}, probe=CPU_BUILD).env_presets == {"FLAGS_use_stride_kernel": "0"}


def test_presets_never_override_the_user():
    environ = {"HCCL_CONNECT_TIMEOUT": "60", "FLAGS_allocator_strategy": "naive_best_fit"}
    device = resolve_device("npu", environ=environ, probe=NPU_910B)
    applied = apply_presets(device.env_presets, environ)
    assert environ["HCCL_CONNECT_TIMEOUT"] == "60" and environ["FLAGS_allocator_strategy"] == "naive_best_fit"
    assert "HCCL_CONNECT_TIMEOUT" not in applied and applied["HCCL_BUFFSIZE"] == "120"
    text = device.describe(applied)
    assert "kept the user's FLAGS_allocator_strategy, HCCL_CONNECT_TIMEOUT" in text
    assert "HCCL_BUFFSIZE=120" in text and "Ascend910B2" in text


def test_device_is_plain_data():
    d = Device("cpu", None, False, "gloo", None, ())
    assert d.place == "cpu"
    assert "device cpu: backend gloo, default AMP off" == d.describe()


def test_setup_device_on_this_machine(capsys):
    """The real probe on the CI machine: a CPU build with no plugin."""
    import paddle

    from paddle_medvl import device as device_module

    device_module._announced = False
    d = device_module.setup_device("cpu")
    assert d.place == "cpu" and paddle.get_device() == "cpu"
    assert "[paddle_medvl] device cpu" in capsys.readouterr().err
    device_module.setup_device("cpu")
    assert capsys.readouterr().err == ""  # printed once


@pytest.mark.parametrize("environ, want", [({"OMP_NUM_THREADS": "3"}, 3), ({}, 1), ({"OMP_NUM_THREADS": "junk"}, 1)])
def test_cpu_threads(environ, want):
    from paddle_medvl.device import cpu_threads

    assert cpu_threads(environ) == want


def test_importing_paddle_medvl_first_gives_paddle_the_cores():
    """In a fresh process: unset -> the usable cores (Paddle's import would write 1), set -> kept."""
    code = ("import os, paddle_medvl, paddle; "
            "print(os.environ['OMP_NUM_THREADS'], len(os.sched_getaffinity(0)))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "1"


def test_setup_device_gives_the_cpu_its_threads(monkeypatch):
    """Paddle's MKL computes on one thread unless told (OMP_NUM_THREADS alone does not do it)."""
    import paddle

    from paddle_medvl import device as device_module

    calls = []
    monkeypatch.setattr(paddle.base.core, "set_num_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    device_module.setup_device("cpu")
    assert calls == [3]
