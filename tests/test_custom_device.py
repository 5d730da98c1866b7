"""The custom-device path end to end on the host-memory plugin (custom_device/host_device.cc).

Each test starts Paddle in a subprocess, because the plugin is loaded at ``import paddle``.
Together they show that training, export + inference and data-parallel launch behave on a
PaddleCustomDevice plugin exactly as on the CPU, and that the plugin's collectives are real.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from conftest import Plugin

SCRIPTS = Path(__file__).resolve().parent / "scripts"
TIMEOUT = 120  # seconds per subprocess; each normally takes 2-8 s


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run with a timeout that also kills grandchildren (launch's ranks), then check success."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s: {' '.join(cmd)}\n{out[-3000:]}\n{err[-3000:]}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{out[-3000:]}\n{err[-5000:]}"
    return result


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_plugin_trains_like_cpu(medvl_plugin: Plugin, cpu_env: dict[str, str]) -> None:
    script = [sys.executable, str(SCRIPTS / "tiny_losses.py"), "--steps", "3"]
    cpu = last_json(run([*script, "--device", "cpu"], cpu_env).stdout)
    dev = last_json(run([*script, "--device", medvl_plugin.device_type], medvl_plugin.env).stdout)
    assert dev["place"] == f"{medvl_plugin.device_type}:0"
    assert len(cpu["losses"]) == len(dev["losses"]) == 3
    assert cpu["losses"][-1] < cpu["losses"][0]  # it trains at all
    np.testing.assert_allclose(dev["losses"], cpu["losses"], rtol=0, atol=1e-6)


def test_jit_save_and_predictor_on_plugin(medvl_plugin: Plugin, tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPTS / "export_predict.py"), "--device", medvl_plugin.device_type, "--out", str(tmp_path)]
    report = last_json(run(cmd, medvl_plugin.env).stdout)
    assert {"model.json", "model.pdiparams"} <= set(report["files"])  # Paddle 3 PIR format
    assert report["max_abs_diff"] <= 1e-5
    # enable_custom_device really put the predictor's weights in the plugin's memory.
    assert report["predictor_device_bytes"] >= report["weight_bytes"] > 0


def launch(env: dict[str, str], device_args: list[str], device: str, out: Path, *extra: str) -> dict[int, dict]:
    cmd = [
        sys.executable, "-m", "paddle.distributed.launch", *device_args, "--log_dir", str(out / "log"),
        str(SCRIPTS / "dp_rank.py"), "--device", device, "--out", str(out), *extra,
    ]  # fmt: skip
    try:
        run(cmd, env, cwd=out)
    except AssertionError as err:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted((out / "log").glob("workerlog.*")))
        raise AssertionError(f"{err}\n{logs}") from None
    ranks = {r: dict(np.load(out / f"rank{r}.npz")) for r in (0, 1)}
    ranks[-1] = dict(np.load(out / "reference.npz"))  # single process, whole batch
    return ranks


def check_data_parallel_step(ranks: dict[int, dict]) -> None:
    """Both ranks hold the same parameters, equal to one SGD step on the concatenated batch."""
    names = sorted(k for k in ranks[-1] if k.startswith("param/"))
    assert len(names) == 4
    for name in names:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        np.testing.assert_allclose(ranks[0][name], ranks[-1][name], rtol=0, atol=1e-5, err_msg=name)
    assert float(ranks[0]["loss"]) != float(ranks[1]["loss"])  # the ranks saw different data


def test_data_parallel_launch_cpu(cpu_env: dict[str, str], tmp_path: Path) -> None:
    ranks = launch(cpu_env, ["--nproc_per_node", "2"], "cpu", tmp_path)
    assert str(ranks[0]["backend"]) == "gloo" == str(ranks[0]["device_backend"])
    assert str(ranks[0]["place"]) == str(ranks[1]["place"]) == "Place(cpu)"
    check_data_parallel_step(ranks)


def test_data_parallel_launch_plugin(medvl_plugin: Plugin, tmp_path: Path) -> None:
    env = dict(medvl_plugin.env)
    # Small staging and ring buffers: every collective here runs in many chunks.
    env.update(MEDVL_XCCL_CHUNK_BYTES="16384", MEDVL_XCCL_P2P_BYTES="4096")
    ranks = launch(env, ["--devices", "0,1"], medvl_plugin.device_type, tmp_path, "--collectives")
    t = medvl_plugin.device_type
    assert str(ranks[0]["backend"]) == "xccl" == str(ranks[0]["device_backend"])
    assert [str(ranks[r]["place"]) for r in (0, 1)] == [f"Place({t}:0)", f"Place({t}:1)"]
    check_data_parallel_step(ranks)

    world, base = 2, np.arange(3001, dtype=np.float32)
    contributions = [base * (r + 1) for r in range(world)]  # each rank its own values
    for r in (0, 1):
        got = ranks[r]
        np.testing.assert_array_equal(got["coll/mean_f32"], np.mean(contributions, axis=0))
        np.testing.assert_array_equal(got["coll/broadcast"], base + 100 * (world - 1))
        np.testing.assert_array_equal(got["coll/all_gather"], np.stack([base[:257] + 1000 * q for q in range(world)]))
        np.testing.assert_array_equal(got["coll/reduce_scatter"], base[:300] * 3 + world * r)
        values = [(np.arange(64) % 7 + q + 1).astype(np.float64) for q in range(world)]
        for dtype in ("float64", "float16", "bfloat16", "int32", "int64"):
            for op, want in (("sum", np.sum), ("max", np.max), ("min", np.min), ("prod", np.prod)):
                np.testing.assert_array_equal(got[f"coll/{op}_{dtype}"], want(values, axis=0), err_msg=f"{op} {dtype}")
    np.testing.assert_array_equal(ranks[1]["coll/reduce"], base * 3)  # the root
    np.testing.assert_array_equal(ranks[0]["coll/reduce"], base)  # not the root: untouched
    np.testing.assert_array_equal(ranks[1]["coll/recv"], np.arange(40000, dtype=np.float32))


@pytest.fixture(scope="module")
def plugin_driver(medvl_plugin: Plugin, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """tests/scripts/plugin_driver.cc compiled against the same header; the command to run it."""
    from paddle_medvl.custom_device import paddle_dir

    exe = tmp_path_factory.mktemp("driver") / "plugin_driver"
    cxx = os.environ.get("CXX") or "g++"
    source = SCRIPTS / "plugin_driver.cc"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", f"-I{paddle_dir() / 'include'}", str(source), "-o", str(exe), "-ldl"],
        check=True, capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    return [str(exe), str(Path(medvl_plugin.root) / f"lib{medvl_plugin.device_type}.so")]


@pytest.mark.parametrize("nranks", [2, 3, 4])
def test_xccl_collectives_direct(plugin_driver: list[str], medvl_plugin: Plugin, nranks: int) -> None:
    """Every op (AVG included, which Paddle 3.3 cannot send), fp16/bf16 rounding, grouped p2p."""
    env = dict(medvl_plugin.env, MEDVL_XCCL_CHUNK_BYTES="16384", MEDVL_XCCL_P2P_BYTES="4096")
    result = run([*plugin_driver, "collectives", str(nranks)], env)
    assert result.stdout.count("ok all_reduce") == nranks
    assert result.stdout.count("ok send recv group") == nranks
    assert f"collectives: 0 of {nranks} ranks failed, 0 shared-memory segments left" in result.stdout
    assert "ok blas_axpby" in result.stdout


def test_xccl_stuck_peer_times_out(plugin_driver: list[str], medvl_plugin: Plugin) -> None:
    env = dict(medvl_plugin.env, MEDVL_XCCL_TIMEOUT="1")
    result = run([*plugin_driver, "timeout", "2"], env)
    assert "ok timeout after" in result.stdout
    assert "timed out after 1 s waiting for the other ranks" in result.stderr
    assert "MEDVL_XCCL_TIMEOUT" in result.stderr
    assert "0 shared-memory segments left" in result.stdout


def test_xccl_dead_peer_fails_fast(plugin_driver: list[str], medvl_plugin: Plugin) -> None:
    result = run([*plugin_driver, "dead_peer", "2"], medvl_plugin.env)  # timeout stays 60 s
    assert "ok dead peer noticed" in result.stdout
    assert "rank 1 (pid" in result.stderr and "has exited" in result.stderr
    assert "0 shared-memory segments left" in result.stdout


def test_xccl_peer_that_finished_its_part_may_exit(plugin_driver: list[str], medvl_plugin: Plugin) -> None:
    """A rank whose share of a grouped send/recv is done may exit while another peer is still slow
    (seen once as a failed 4-rank collectives run: 'rank 2 (pid ...) has exited')."""
    result = run([*plugin_driver, "early_exit", "3"], medvl_plugin.env)
    assert "ok rank 2 took its message and exits" in result.stdout
    assert "ok group finished after rank 2 exited" in result.stdout
    assert "early_exit: 0 of 3 ranks failed, 0 shared-memory segments left" in result.stdout


def test_invalid_device_count_is_reported(medvl_plugin: Plugin) -> None:
    env = dict(medvl_plugin.env, MEDVL_DEVICE_COUNT="two")
    code = "import paddle; print(len(paddle.device.get_available_custom_device()))"
    result = run([sys.executable, "-c", code], env)
    assert result.stdout.strip().splitlines()[-1] == "1"
    assert "MEDVL_DEVICE_COUNT='two' is not an integer" in result.stderr


def test_build_is_cached(medvl_plugin: Plugin) -> None:
    from paddle_medvl.custom_device import build_plugin

    root = Path(medvl_plugin.root)
    library = root / f"lib{medvl_plugin.device_type}.so"
    stamp = library.stat().st_mtime_ns
    assert build_plugin(medvl_plugin.device_type, cache_dir=root.parent) == str(root)
    assert library.stat().st_mtime_ns == stamp
    assert [p.name for p in root.iterdir()] == [library.name]  # Paddle loads every .so here
    print(f"\ncold plugin build: {medvl_plugin.build_seconds:.2f} s")


def test_missing_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paddle_medvl.custom_device import PluginBuildError, build_plugin

    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ anywhere on it
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(PluginBuildError, match=r"C\+\+ compiler 'g\+\+' not found on PATH.*apt-get install g\+\+"):
        build_plugin(cache_dir=tmp_path / "cache")
    with pytest.raises(PluginBuildError, match="'clang-nope' not found"):
        build_plugin(cache_dir=tmp_path / "cache", compiler="clang-nope")


def test_cli_prints_exports(medvl_plugin: Plugin, capsys: pytest.CaptureFixture[str]) -> None:
    from paddle_medvl.custom_device import main

    cache = str(Path(medvl_plugin.root).parent)
    assert main(["--device-type", medvl_plugin.device_type, "--count", "2", "--cache-dir", cache]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"export CUSTOM_DEVICE_ROOT={medvl_plugin.root}",
        "export FLAGS_use_stride_kernel=0",
        "export MEDVL_DEVICE_COUNT=2",
    ]
    assert main(["--device-type", "Bad-Name", "--cache-dir", cache]) == 1
    assert "must match" in capsys.readouterr().err
