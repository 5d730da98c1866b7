"""What `pip install -e .` asks for: setup.py as setuptools reads it, constraints.txt, the README's
install lines and, when this tree is the installed package, the metadata pip recorded."""
from __future__ import annotations

import importlib.metadata
import json
import re
import runpy
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PADDLE_DISTRIBUTIONS = {"paddlepaddle", "paddlepaddle-gpu", "paddle-custom-npu"}


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    """The keyword arguments setup.py hands to setuptools.setup (setup.py run, setup() captured)."""
    captured: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
        mp.chdir(ROOT)  # find_packages() looks in the working directory
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    assert captured, "setup.py did not call setuptools.setup"
    return captured


def requirements(lines) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in reqs}


def constraints() -> dict[str, Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    return requirements(line for line in lines if line)


def pinned(name: str) -> str:
    spec = [s for s in constraints()[canonicalize_name(name)].specifier if s.operator == "=="]
    assert spec, f"{name} is not pinned (==) in constraints.txt"
    return spec[0].version


def test_paddle_is_not_a_hard_requirement(setup_kwargs):
    """A GPU or NPU user's Paddle (same `paddle/` folder) is never replaced by the CPU wheel."""
    hard = requirements(setup_kwargs["install_requires"])
    assert not PADDLE_DISTRIBUTIONS & hard.keys(), sorted(PADDLE_DISTRIBUTIONS & hard.keys())
    cpu = requirements(setup_kwargs["extras_require"]["cpu"])
    assert cpu.keys() == {"paddlepaddle"}
    assert cpu["paddlepaddle"].specifier.contains(pinned("paddlepaddle"))  # the [cpu] extra meets the pin
    # No other extra drags a Paddle build in behind the user's back.
    for extra, lines in setup_kwargs["extras_require"].items():
        if extra != "cpu":
            assert not PADDLE_DISTRIBUTIONS & requirements(lines).keys(), extra


@pytest.mark.parametrize(
    "name, refused, accepted",
    [
        # `import paddlenlp` 2.8.1 fails with these releases (REFERENCE.md section 1).
        ("huggingface_hub", "0.25.0", "0.24.7"),
        ("aistudio-sdk", "0.3.0", "0.2.6"),
        ("datasets", "3.0.0", "2.21.0"),
        # numpy 2 would replace tool-helpers 0.1.2; pyarrow 20+ does not import with numpy 1.
        ("numpy", "2.0.0", "1.26.4"),
        ("pyarrow", "20.0.0", "19.0.1"),
    ],
)
def test_paddlenlp_import_pins_are_hard_requirements(setup_kwargs, name, refused, accepted):
    """`pip install -e .` without `-c constraints.txt` still gives an environment that imports."""
    hard = requirements(setup_kwargs["install_requires"])
    assert canonicalize_name(name) in hard, f"{name} must be in install_requires"
    spec = hard[canonicalize_name(name)].specifier
    assert not spec.contains(refused) and spec.contains(accepted), (name, str(spec))


def test_constraints_satisfy_setup_py(setup_kwargs):
    """Every pin of constraints.txt meets setup.py's range for the same package (one story, two files)."""
    hard = requirements(setup_kwargs["install_requires"])
    extras = {}
    for lines in setup_kwargs["extras_require"].values():
        extras.update(requirements(lines))
    for name, pin in constraints().items():
        for req in (hard.get(name), extras.get(name)):
            if req is None:
                continue
            for spec in pin.specifier:
                if spec.operator == "==":
                    assert req.specifier.contains(spec.version), f"{name}: constraints.txt {spec} vs setup.py {req}"


def test_safetensors_is_pinned_for_the_stride_kernels_workaround(setup_kwargs):
    """workarounds.stride_kernels() answers safetensors' paddle frontend (view_dtype), which exists
    from 0.7 on; the pin is the release its test runs on."""
    version = pinned("safetensors")
    spec = requirements(setup_kwargs["install_requires"])["safetensors"].specifier
    assert spec.contains(version)
    assert not spec.contains("0.6.2")  # safe_open(framework="paddle"): "framework paddle is invalid"
    text = (ROOT / "constraints.txt").read_text()
    comment = text[: text.index(f"safetensors=={version}")].rsplit("\n\n", 1)[-1]
    assert "stride_kernels" in comment and "test_safetensors_needs_stride_kernels" in comment


def test_python_requires_stops_before_3_13(setup_kwargs):
    """numpy 1.26.4 (the constraints' numpy) has no wheels past CPython 3.12."""
    spec = SpecifierSet(setup_kwargs["python_requires"])
    assert [v for v in ("3.9", "3.10", "3.11", "3.12", "3.13") if spec.contains(v)] == ["3.10", "3.11", "3.12"]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_install_lines_name_the_cpu_extra(setup_kwargs):
    """The quickstart and the test line still install Paddle on a fresh CPU machine, through [cpu]."""
    quickstart = readme_section("Quickstart")
    installs = re.findall(r"pip install (-e \S+) -c constraints\.txt", quickstart)
    assert installs == ['-e ".[cpu]"', '-e ".[cpu,test]"'], installs
    for install in installs:
        extras = re.search(r"\[([\w,]+)\]", install).group(1).split(",")
        assert set(extras) <= setup_kwargs["extras_require"].keys(), install
    # The supported Pythons are stated, and they are python_requires' ones.
    assert "Python 3.10-3.12" in quickstart
    assert SpecifierSet(setup_kwargs["python_requires"]) == SpecifierSet(">=3.10,<3.13")


def test_readme_gpu_and_npu_installs_use_paddles_own_indexes():
    devices = readme_section("Devices")
    gpu = re.search(r"pip install paddlepaddle-gpu==([\d.]+) -i (\S+?)`", devices)
    assert gpu, "README Devices: no paddlepaddle-gpu install line"
    assert gpu.group(1) == pinned("paddlepaddle")
    assert re.fullmatch(r"https://www\.paddlepaddle\.org\.cn/packages/stable/cu\d{3}/", gpu.group(2)), gpu.group(2)
    npu = re.search(r"pip install paddle-custom-npu==([\d.]+) -i (\S+?)`", devices)
    assert npu and npu.group(1) == pinned("paddlepaddle")
    assert npu.group(2) == "https://www.paddlepaddle.org.cn/packages/stable/npu/"
    assert 'pip install -e . -c constraints.txt' in devices  # no [cpu] over the device's Paddle


def installed_from_this_tree() -> importlib.metadata.Distribution | None:
    """The installed paddle_medvl whose direct_url.json (PEP 610) names this tree, if any. (A bare
    paddle_medvl.egg-info in the tree, a by-product of building, records no install and is skipped.)"""
    for dist in importlib.metadata.distributions(name="paddle_medvl"):
        direct_url = dist.read_text("direct_url.json")
        if direct_url and json.loads(direct_url).get("url", "").rstrip("/") == ROOT.as_uri():
            return dist
    return None


def test_installed_metadata_matches_setup_py(setup_kwargs):
    """What pip recorded for this editable install (after `pip install -e .`) is what setup.py says."""
    dist = installed_from_this_tree()
    if dist is None:
        pytest.skip("paddle_medvl is not installed from this tree")
    recorded = {str(Requirement(r)) for r in dist.requires or []}
    expected = {str(Requirement(r)) for r in setup_kwargs["install_requires"]}
    for extra, lines in setup_kwargs["extras_require"].items():
        expected |= {str(Requirement(f'{r}; extra == "{extra}"')) for r in lines}
    assert recorded == expected, (
        "stale install metadata: pip install -e \".[cpu,test]\" -c constraints.txt --no-deps\n"
        f"only recorded: {sorted(recorded - expected)}\nonly in setup.py: {sorted(expected - recorded)}"
    )
    assert SpecifierSet(dist.metadata["Requires-Python"]) == SpecifierSet(setup_kwargs["python_requires"])
    assert not any(canonicalize_name(Requirement(r).name) in PADDLE_DISTRIBUTIONS and Requirement(r).marker is None
                   for r in dist.requires or [])


def test_a_missing_paddle_says_how_to_install_it():
    """Paddle is no hard requirement, so its absence must be a clear error at import, not a
    "No module named 'paddle'" deep inside the first command."""
    import subprocess
    import sys

    code = "import sys; sys.modules['paddle'] = None; import paddle_medvl"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert 'paddle_medvl needs PaddlePaddle, which is not installed: pip install -e ".[cpu]"' in proc.stderr
    assert "README's Devices section" in proc.stderr
