"""Shared fixtures: the host-memory device plugin and clean environments for Paddle subprocesses.

Paddle reads CUSTOM_DEVICE_ROOT once, at ``import paddle``, so everything that runs on the
plugin device runs in a subprocess started with the environment these fixtures return.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_TYPE = "medvl_cpu"
PLUGIN_DEVICES = 2  # enough for a two-rank launch; single-process tests use device 0

# Variables that would leak a plugin, a launch rank or tuned collectives into a subprocess.
_LEAKY_PREFIXES = ("CUSTOM_DEVICE_ROOT", "FLAGS_", "MEDVL_", "PADDLE_", "MASTER_", "GLOG_")


@dataclass(frozen=True)
class Plugin:
    device_type: str
    root: str  # the CUSTOM_DEVICE_ROOT directory holding lib<type>.so
    env: dict[str, str]  # a complete environment for a Paddle subprocess on the plugin
    build_seconds: float  # the cold compile, measured once per session


def clean_env() -> dict[str, str]:
    """os.environ without plugin, launch or flag settings; quiet glog; this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env["GLOG_minloglevel"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def cpu_env() -> dict[str, str]:
    return clean_env()


@pytest.fixture(scope="session")
def medvl_plugin(tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    """Compile the plugin once per session into a fresh directory (so the compile is cold)."""
    from paddle_medvl.custom_device import PluginBuildError, plugin_env

    cache = tmp_path_factory.mktemp("plugin-cache")
    start = time.perf_counter()
    try:
        extra = plugin_env(PLUGIN_TYPE, device_count=PLUGIN_DEVICES, cache_dir=cache)
    except PluginBuildError as err:  # the custom-device tests are required: no compiler is a failure
        pytest.fail(f"cannot build the test device plugin here: {err}")
    build_seconds = time.perf_counter() - start
    env = clean_env()
    env.update(extra)
    env["MEDVL_XCCL_TIMEOUT"] = "60"  # a broken collective fails the test instead of hanging it
    return Plugin(PLUGIN_TYPE, extra["CUSTOM_DEVICE_ROOT"], env, build_seconds)
