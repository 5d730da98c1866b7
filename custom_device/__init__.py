"""Build and point Paddle at the host-memory PaddleCustomDevice plugin (``host_device.cc``).

The plugin lets the custom-device code paths (``paddle.set_device('<type>')``, XCCL
collectives under ``paddle.distributed.launch``, ``enable_custom_device`` predictors) run on
a machine without accelerators. Paddle reads ``CUSTOM_DEVICE_ROOT`` once, at ``import
paddle``, so everything here works without importing paddle: call :func:`plugin_env` and
start the Paddle process (or ``launch``) with that environment.

    python -m paddle_medvl.custom_device --device-type medvl_cpu --count 2   # export lines
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DEVICE_TYPE = "medvl_cpu"
DEVICE_COUNT_ENV = "MEDVL_DEVICE_COUNT"  # read by the plugin when Paddle asks for the count
CACHE_ENV = "PADDLE_MEDVL_CACHE"  # root of our caches; plugins go to $PADDLE_MEDVL_CACHE/plugins
SOURCE = Path(__file__).with_name("host_device.cc")

# Paddle derives names such as FLAGS_selected_<type>s and <TYPE>_VISIBLE_DEVICES from the
# type, and the type ends up in a C string literal: keep it to identifier characters.
_DEVICE_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CXX_FLAGS = ["-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-pthread"]


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here; the message says what is missing."""


def paddle_dir() -> Path:
    """The installed ``paddle`` package directory, found without importing paddle."""
    spec = importlib.util.find_spec("paddle")
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError("paddlepaddle is not installed in this Python environment")
    return Path(list(spec.submodule_search_locations)[0])


def _paddle_version(root: Path) -> tuple[str, str]:
    """(version, commit) from paddle/version/__init__.py, which setup.py generates."""
    try:
        text = (root / "version" / "__init__.py").read_text()
    except OSError:
        return "unknown", ""
    version = re.search(r"^full_version\s*=\s*'([^']*)'", text, re.M)
    commit = re.search(r"^commit\s*=\s*'([^']*)'", text, re.M)
    return (version[1] if version else "unknown"), (commit[1] if commit else "")


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "plugins"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "paddle_medvl" / "plugins"


def _check_device_type(device_type: str) -> None:
    """Reject names Paddle cannot use as a custom device type (or that would clash with its own)."""
    if not _DEVICE_TYPE.match(device_type):
        raise ValueError(
            f"device type {device_type!r} must match {_DEVICE_TYPE.pattern} "
            "(Paddle builds flag and environment names from it)"
        )
    if device_type in ("cpu", "gpu", "xpu", "ipu"):
        raise ValueError(f"device type {device_type!r} is a built-in Paddle place; pick another name")


def build_plugin(
    device_type: str = DEFAULT_DEVICE_TYPE,
    cache_dir: str | os.PathLike[str] | None = None,
    compiler: str | None = None,
) -> str:
    """Compile the plugin (once per source, header, type and Paddle build) and return its directory.

    The directory holds only ``lib<type>.so`` because Paddle loads every ``.so`` in
    ``CUSTOM_DEVICE_ROOT``. The compiler is ``compiler``, else ``$CXX``, else ``g++``.
    """
    _check_device_type(device_type)
    cxx = compiler or os.environ.get("CXX") or "g++"
    root = paddle_dir()
    include = root / "include"
    header = include / "paddle" / "phi" / "backends" / "device_ext.h"
    if not header.is_file():
        raise PluginBuildError(
            f"{header} is missing: this paddlepaddle build ships no custom-device headers. "
            "Use a Linux paddlepaddle wheel >= 2.5 (built WITH_CUSTOM_DEVICE=ON)."
        )
    version, commit = _paddle_version(root)
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), header.read_bytes(), device_type.encode(), commit.encode()):
        digest.update(hashlib.sha256(part).digest())
    out_dir = _cache_root(cache_dir) / f"{device_type}-paddle{version}-{digest.hexdigest()[:16]}"
    library = out_dir / f"lib{device_type}.so"
    if library.is_file():
        return str(out_dir)

    cxx_path = shutil.which(cxx)
    if cxx_path is None:
        raise PluginBuildError(
            f"C++ compiler {cxx!r} not found on PATH; the test device plugin is compiled on first "
            "use. Install one (Debian/Ubuntu: apt-get install g++) or set CXX to its path."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compile next to (not inside) the plugin directory, then rename: a concurrent process
    # never loads a half-written library, and two builders simply both succeed.
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".build-") as tmp:
        target = Path(tmp) / library.name
        cmd = [
            cxx_path,
            *_CXX_FLAGS,
            f"-I{include}",
            f'-DMEDVL_DEVICE_TYPE="{device_type}"',
            str(SOURCE),
            "-o",
            str(target),
            "-lrt",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise PluginBuildError(
                f"compiling the device plugin failed ({shlex.join(cmd)}):\n{result.stderr[-4000:]}"
            )
        os.replace(target, library)
    return str(out_dir)


def plugin_env(
    device_type: str = DEFAULT_DEVICE_TYPE,
    device_count: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The environment a process needs, set BEFORE ``import paddle``, to get ``device_type``.

    ``FLAGS_use_stride_kernel=0``: the plugin registers no kernels, so Paddle falls back to
    CPU kernels, and it has no fallback for strided views (``contiguous`` is "not
    registered"). Real plugins (paddle-custom-npu) need the same flag.
    """
    if not 1 <= int(device_count) <= 1024:
        raise ValueError(f"device_count must be in 1..1024, got {device_count}")
    return {
        "CUSTOM_DEVICE_ROOT": build_plugin(device_type, cache_dir),
        "FLAGS_use_stride_kernel": "0",
        DEVICE_COUNT_ENV: str(int(device_count)),
    }


def main(argv: list[str] | None = None) -> int:
    """Print ``export`` lines, e.g. ``eval "$(python -m paddle_medvl.custom_device --count 2)"``."""
    parser = argparse.ArgumentParser(
        prog="python -m paddle_medvl.custom_device",
        description="Build the host-memory test device plugin and print the environment that loads it.",
    )
    parser.add_argument("--device-type", default=DEFAULT_DEVICE_TYPE)
    parser.add_argument("--count", type=int, default=1, help="devices the plugin exposes")
    parser.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_ENV}/plugins or ~/.cache/paddle_medvl/plugins")
    args = parser.parse_args(argv)
    try:
        env = plugin_env(args.device_type, args.count, args.cache_dir)
    except (PluginBuildError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
