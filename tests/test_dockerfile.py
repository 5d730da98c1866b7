"""Dockerfile.ascend cannot be built here (no Docker engine, no route to the Ascend registries):
check it statically against the rest of the project."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from paddle_medvl.device import NPU_910B_PRESETS, NPU_PRESETS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile.ascend").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    rows = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(row.split(None, 1)) for row in rows]


def stage_args(instructions, stage: str) -> dict[str, str]:
    args, current = {}, None
    for op, rest in instructions:
        if op == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        elif op == "ARG" and current == stage and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    return args


def env_of(instructions, stage: str | None = None) -> dict[str, str]:
    env, current = {}, None
    for op, rest in instructions:
        if op == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        elif op == "ENV" and (stage is None or current == stage):
            env.update(dict(pair.split("=", 1) for pair in rest.split()))
    return env


def constraint(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_structure(instructions):
    ops = [op for op, _ in instructions]
    assert ops.count("FROM") == 3 and ops.index("ARG") < ops.index("FROM")  # CHIP chooses the stage
    first_args = dict(rest.split("=", 1) for op, rest in instructions[: ops.index("FROM")] if op == "ARG")
    assert first_args["CHIP"] in ("910A", "910B")
    assert instructions[[i for i, op in enumerate(ops) if op == "FROM"][-1]][1] == "base-${CHIP}"
    assert "cann701" in first_args["BASE_910A"] and "cann800" in first_args["BASE_910B"]
    entry = [rest for op, rest in instructions if op == "ENTRYPOINT"]
    assert entry == ['["/opt/paddle_medvl/docker/entrypoint.sh"]']
    assert [rest for op, rest in instructions if op == "CMD"] == ['["python", "tools/env_check.py", "--device", "npu"]']


def test_entrypoint_sources_the_ascend_environment():
    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in script
    assert script.rstrip().endswith('exec "$@"')
    assert (ROOT / "docker" / "entrypoint.sh").stat().st_mode & 0o111, "entrypoint must be executable"


def test_versions_match_constraints(instructions):
    assert stage_args(instructions, "base-910B")["PADDLE_VERSION"] == constraint("paddlepaddle")
    a = stage_args(instructions, "base-910A")
    assert a["PADDLE_VERSION"] == "2.6.1" and a["CUSTOM_DEVICE_BRANCH"] == "release/2.6"
    installs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "paddle-custom-npu==${PADDLE_VERSION}" in installs  # plugin and framework move together
    assert "-c /tmp/constraints.txt" in installs


def test_environment_matches_the_device_layer(instructions):
    env = env_of(instructions)
    for key, value in NPU_PRESETS.items():
        assert env.get(key) == value, key
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert env_of(instructions, "base-910B").items() >= NPU_910B_PRESETS.items()
    assert "FLAGS_npu_jit_compile" not in env_of(instructions, "base-910A")
