"""Dockerfile.ascend cannot be built here (no Docker engine, no route to the Ascend registries):
check it statically against the rest of the project."""
from __future__ import annotations

import fnmatch
import re
import runpy
import shlex
import subprocess
from pathlib import Path

import pytest
import setuptools
from packaging.specifiers import SpecifierSet

from paddle_medvl.device import NPU_910B_PRESETS, NPU_PRESETS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.ascend"
PADDLE_CPU_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/cpu/"


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    rows = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(row.split(None, 1)) for row in rows]


def stages(instructions) -> dict[str | None, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (the image or stage it starts FROM, its instructions); None is the global scope,
    the unnamed last stage is "final"."""
    out: dict = {None: ("", [])}
    current = None
    for op, rest in instructions:
        if op == "FROM":
            source, _, name = rest.partition(" AS ")
            current = name.strip() or "final"
            out[current] = (source.strip(), [])
        else:
            out[current][1].append((op, rest))
    return out


def stage_args(instructions, stage: str | None) -> dict[str, str]:
    return dict(rest.split("=", 1) for op, rest in stages(instructions)[stage][1] if op == "ARG" and "=" in rest)


def env_of(instructions, stage: str | None = None) -> dict[str, str]:
    env = {}
    for name, (_, body) in stages(instructions).items():
        if stage is None or name == stage:
            for op, rest in body:
                if op == "ENV":
                    env.update(dict(pair.split("=", 1) for pair in rest.split()))
    return env


def runs(instructions, stage: str) -> str:
    return " ".join(rest for op, rest in stages(instructions)[stage][1] if op == "RUN")


def ancestry(instructions, stage: str) -> list[str]:
    """The stage and the named stages it is built FROM, nearest first."""
    all_stages = stages(instructions)
    chain = [stage]
    while all_stages[chain[-1]][0] in all_stages:
        chain.append(all_stages[chain[-1]][0])
    return chain


def expand(word: str, values: dict[str, str]) -> str:
    """The Dockerfile 1.7 expansions this file uses: $NAME, ${NAME}, ${NAME/pattern/replacement}."""

    def one(match: re.Match) -> str:
        name, pattern, replacement = match.group(1) or match.group(4), match.group(2), match.group(3)
        value = values.get(name, "")
        return value.replace(pattern, replacement, 1) if pattern is not None else value

    return re.sub(r"\$\{(\w+)(?:/([^/}]*)/([^}]*))?\}|\$(\w+)", one, word)


def global_args(instructions, build_args: dict[str, str]) -> dict[str, str]:
    """The global ARGs as BuildKit evaluates them: in order, --build-arg over the default, each
    default expanded with the ones before it (TARGETARCH comes from the target platform)."""
    values = {k: v for k, v in build_args.items() if k.startswith("TARGET")}
    for op, rest in stages(instructions)[None][1]:
        if op == "ARG":
            name, _, default = rest.partition("=")
            values[name] = build_args[name] if name in build_args else expand(default, values) if default else values.get(name, "")
    return values


def constraint(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def python_requires() -> SpecifierSet:
    captured: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
        mp.chdir(ROOT)
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return SpecifierSet(captured["python_requires"])


def test_structure(instructions):
    all_stages = stages(instructions)
    first_args = stage_args(instructions, None)
    assert first_args["CHIP"] in ("910A", "910B")  # CHIP chooses the stages
    assert all_stages["os-910A"][0] == "${BASE_910A}" and all_stages["os-910B"][0] == "${BASE_910B}"
    assert all_stages["python"][0] == "os-${CHIP}"
    assert all_stages["base-910A"][0] == all_stages["base-910B"][0] == "python"
    assert list(all_stages)[-1] == "final" and all_stages["final"][0] == "base-${CHIP}"
    assert "cann701" in first_args["BASE_910A"] and "cann800" in first_args["BASE_910B"]
    entry = [rest for op, rest in instructions if op == "ENTRYPOINT"]
    assert entry == ['["/opt/paddle_medvl/docker/entrypoint.sh"]']
    assert [rest for op, rest in instructions if op == "CMD"] == ['["python", "tools/env_check.py", "--device", "npu"]']


def test_syntax_directive_allows_the_arch_mapping():
    """${VAR/pattern/replacement} needs the Dockerfile 1.7 frontend, named on the first line."""
    first = DOCKERFILE.read_text().splitlines()[0]
    match = re.fullmatch(r"# syntax=docker/dockerfile:(\d+)\.(\d+)", first)
    assert match and (int(match.group(1)), int(match.group(2))) >= (1, 7), first


@pytest.mark.parametrize("targetarch, arch", [("amd64", "x86_64"), ("arm64", "aarch64")])
def test_arch_follows_the_target_platform(instructions, targetarch, arch):
    """No ARCH to remember: an aarch64 host (or --platform linux/arm64) gets the aarch64 images."""
    values = global_args(instructions, {"TARGETARCH": targetarch})
    assert values["ARCH"] == arch
    for chip in ("910A", "910B"):
        image = values[f"BASE_{chip}"]
        assert f"-{arch}-" in image and "$" not in image, image
        other = "aarch64" if arch == "x86_64" else "x86_64"
        assert other not in image


def test_arch_can_still_be_given(instructions):
    values = global_args(instructions, {"TARGETARCH": "amd64", "ARCH": "aarch64"})
    assert values["ARCH"] == "aarch64" and "-aarch64-" in values["BASE_910A"] and "-aarch64-" in values["BASE_910B"]


def header_build_lines() -> list[list[str]]:
    lines = []
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "docker build" in line:
            lines.append(shlex.split(line.lstrip("#"), comments=True))
    return lines


def test_header_build_lines_are_valid(instructions):
    declared = {rest.split("=", 1)[0] for op, rest in instructions if op == "ARG"}
    lines = header_build_lines()
    chips = set()
    for args in lines:
        assert args[:2] == ["docker", "build"], args
        assert args[args.index("-f") + 1] == "Dockerfile.ascend" and args[-1] == "." and "-t" in args, args
        build_args = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--build-arg")
        assert build_args.keys() <= declared, build_args.keys() - declared
        chips.add(build_args.get("CHIP", stage_args(instructions, None)["CHIP"]))
        for i, a in enumerate(args):
            if a == "--platform":
                assert args[i + 1] in ("linux/amd64", "linux/arm64")
    assert chips == {"910A", "910B"}


def test_python_3_10_or_newer_in_both_stages(instructions):
    """Both chips run paddle_medvl in a venv of a uv-installed CPython that setup.py accepts, not in
    the base image's Python (3.9 on the 910A image)."""
    supported = python_requires()
    for chip in ("910A", "910B"):
        chain = ancestry(instructions, f"base-{chip}")
        creators = [s for s in chain if "/opt/medvl" in runs(instructions, s) and " venv " in runs(instructions, s)]
        assert creators == ["python"], (chip, chain)
    python = runs(instructions, "python")
    assert "uv python install ${PYTHON_VERSION}" in python
    assert "uv venv --seed --python-preference only-managed --python ${PYTHON_VERSION} /opt/medvl" in python
    assert "-m venv" not in python  # never the image's interpreter
    assert supported.contains(stage_args(instructions, "python")["PYTHON_VERSION"])
    assert env_of(instructions, "python")["PATH"].startswith("/opt/medvl/bin:")
    assert "assert (3, 10) <= sys.version_info[:2] < (3, 13)" in python  # the build stops on a wrong Python
    assert SpecifierSet(">=3.10,<3.13") == supported


def test_run_commands_are_valid_shell(instructions):
    """Every RUN parses as /bin/sh (the base images' shell): no broken quoting or continuation."""
    for op, rest in instructions:
        if op == "RUN":
            result = subprocess.run(["sh", "-n", "-c", rest], capture_output=True, text=True)
            assert result.returncode == 0, (rest, result.stderr)


def test_entrypoint_sources_the_ascend_environment():
    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in script
    assert script.rstrip().endswith('exec "$@"')
    assert (ROOT / "docker" / "entrypoint.sh").stat().st_mode & 0o111, "entrypoint must be executable"


def test_versions_match_constraints(instructions):
    assert stage_args(instructions, "base-910B")["PADDLE_VERSION"] == constraint("paddlepaddle")
    a = stage_args(instructions, "base-910A")
    assert a["PADDLE_VERSION"] == "2.6.1" and a["CUSTOM_DEVICE_BRANCH"] == "release/2.6"
    assert "paddle-custom-npu==${PADDLE_VERSION}" in runs(instructions, "base-910B")  # plugin and framework move together
    assert "-c /tmp/constraints.txt" in runs(instructions, "final")


@pytest.mark.parametrize("chip", ["910A", "910B"])
def test_paddle_comes_from_paddles_index(instructions, chip):
    """PyPI no longer lists paddlepaddle 2.6.1 and has no aarch64 wheel of 3.3.1; Paddle's CPU index has both."""
    assert stage_args(instructions, f"base-{chip}")["PADDLE_INDEX_URL"] == PADDLE_CPU_INDEX
    assert "pip install --no-cache-dir paddlepaddle==${PADDLE_VERSION} --extra-index-url ${PADDLE_INDEX_URL}" in runs(
        instructions, f"base-{chip}"
    )


def test_final_install_keeps_the_chip_paddle(instructions):
    final = runs(instructions, "final")
    assert "pip install --no-cache-dir -e . " in final and "[cpu]" not in final
    assert "grep -v '^paddlepaddle=='" in runs(instructions, "python")


def test_environment_matches_the_device_layer(instructions):
    env = env_of(instructions)
    for key, value in NPU_PRESETS.items():
        assert env.get(key) == value, key
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert env_of(instructions, "base-910B").items() >= NPU_910B_PRESETS.items()
    assert "FLAGS_npu_jit_compile" not in env_of(instructions, "base-910A")


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins (`!` re-includes); a pattern that matches a
    folder excludes everything under it; `**` spans folders, `*` stays within one."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            patterns.append((negate, line.lstrip("!").strip("/")))
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", "data/demo/train/0001.png", "output/demo/caption_tiny/final/model.safetensors",
     ".git/HEAD", "paddle_medvl/__pycache__/config.cpython-311.pyc", "checkpoints/blip2_opt2.7b/model-00001.safetensors",
     "hf-venv/bin/python", "paddle_medvl.egg-info/PKG-INFO"],
)
def test_dockerignore_keeps_run_products_out(path):
    assert dockerignore_excludes(path), path


def test_dockerignore_keeps_the_source_in():
    """Everything the image needs, including paddle_medvl/data/ (not the top-level data/)."""
    wanted = ["setup.py", "constraints.txt", "README.md", "docker/entrypoint.sh"]
    for folder in ("paddle_medvl", "tools", "configs", "custom_device"):
        wanted += [str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and not fnmatch.fnmatch(p.name, "*.py[cod]")]
    assert any(w.startswith("paddle_medvl/data/") for w in wanted)
    kept_out = [w for w in wanted if dockerignore_excludes(w)]
    assert not kept_out, kept_out
