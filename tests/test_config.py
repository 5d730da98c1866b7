"""Config files: inheritance, overrides, types, and errors that name the key and the file."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from paddle_medvl.config import Config, ConfigError, GlobalConfig, add_config_args, load_config, to_dict


@dataclass
class TrainSection:
    lr: float = 1e-4
    epochs: int = 1
    amp: bool = False
    stages: list[str] = field(default_factory=list)
    warmup: int | None = None


@dataclass
class Schema:
    Global: GlobalConfig = field(default_factory=GlobalConfig)
    Train: TrainSection = field(default_factory=TrainSection)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.Global.device == "auto"


def test_base_inheritance_chain_and_relative_paths(tmp_path):
    write(tmp_path / "base" / "root.yaml", "Global: {device: cpu, seed: 1}\nTrain: {lr: 0.1, epochs: 5, stages: [a, b]}\n")
    write(tmp_path / "base" / "mid.yaml", "_base_: root.yaml\nTrain: {epochs: 7}\n")
    leaf = write(tmp_path / "exp" / "leaf.yaml", "_base_: ../base/mid.yaml\nGlobal: {seed: 3}\n")
    cfg = load_config(leaf, schema=Schema)
    assert cfg.Global.device == "cpu" and cfg.Global.seed == 3
    assert cfg.Train.lr == 0.1 and cfg.Train.epochs == 7 and cfg.Train.stages == ["a", "b"]


def test_multiple_bases_later_wins(tmp_path):
    write(tmp_path / "a.yaml", "Train: {lr: 0.1, epochs: 2}\n")
    write(tmp_path / "b.yaml", "Train: {lr: 0.2}\n")
    leaf = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    cfg = load_config(leaf, schema=Schema)
    assert (cfg.Train.lr, cfg.Train.epochs) == (0.2, 2)


def test_overrides_are_typed(tmp_path):
    leaf = write(tmp_path / "c.yaml", "Train: {lr: 0.1}\n")
    cfg = load_config(
        leaf,
        ["Global.device=npu:3", "Train.lr=1e-5", "Train.epochs=20", "Train.amp=true", "Train.stages=[x, y]", "Train.warmup=null"],
        schema=Schema,
    )
    assert cfg.Global.device == "npu:3"
    assert cfg.Train.lr == pytest.approx(1e-5) and isinstance(cfg.Train.lr, float)
    assert cfg.Train.epochs == 20 and cfg.Train.amp is True and cfg.Train.stages == ["x", "y"]
    assert cfg.Train.warmup is None
    assert load_config(leaf, ["Train.warmup=1000"], schema=Schema).Train.warmup == 1000


def test_overrides_inside_a_free_form_mapping_are_yaml(tmp_path):
    """``Model.language.config`` is a plain mapping (no annotation to type a value by): ``-o`` values
    in it are read as YAML, so a new LLM gets 2 layers, not the string "2"."""
    from paddle_medvl.config import Config

    leaf = write(tmp_path / "c.yaml", "Model:\n  language:\n    config: {hidden_size: 32, act: relu}\n")
    cfg = load_config(leaf, ["Model.language.config.num_hidden_layers=2", "Model.language.config.act=gelu",
                             "Model.language.config.rope={theta: 1.5}"])
    assert cfg.Model.language.config == {"hidden_size": 32, "act": "gelu", "num_hidden_layers": 2, "rope": {"theta": 1.5}}
    assert isinstance(load_config(leaf, schema=Config).Model.language.config["hidden_size"], int)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-5` as a string; a float field must still take it.
    leaf = write(tmp_path / "c.yaml", "Train: {lr: 1e-5, epochs: 3}\n")
    assert load_config(leaf, schema=Schema).Train.lr == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "text, override, message",
    [
        ("Global: {devcie: cpu}\n", None, r"c\.yaml: unknown key 'Global\.devcie' \(did you mean Global\.device\?\)"),
        ("Globl: {device: cpu}\n", None, r"c\.yaml: unknown key 'Globl' \(did you mean Global\?\)"),
        ("Train: {epochs: 2.5}\n", None, r"c\.yaml: Train\.epochs: expected an integer, got 2\.5"),
        ("Train: {lr: fast}\n", None, r"c\.yaml: Train\.lr: expected a number, got 'fast'"),
        ("Train: {amp: 3}\n", None, r"c\.yaml: Train\.amp: expected true or false"),
        ("Train: {stages: abc}\n", None, r"c\.yaml: Train\.stages: expected a list"),
        ("Global: {device: 3}\n", None, r"c\.yaml: Global\.device: expected a string, got 3"),
        ("Train: 5\n", None, r"c\.yaml: Train: expected a section"),
        ("Train: {}\n", "Train.epochs=many", r"-o Train\.epochs=many: Train\.epochs: expected an integer"),
        ("Train: {}\n", "Train.lrr=1", r"-o Train\.lrr=1: unknown key 'Train\.lrr' \(did you mean Train\.lr\?\)"),
        ("Train: {}\n", "Train.lr", r"-o Train\.lr: an override is Section\.key=value"),
        ("Train: {lr: 0.1}\n", "Train.lr.x=1", r"-o Train\.lr\.x=1: .Train\.lr. is a value, not a section"),
        ("Train: {}\n", "Train.lr.x=1", r"-o Train\.lr\.x=1: Train\.lr: expected a number"),
        ("Train: [1, 2\n", None, r"c\.yaml: not valid YAML"),
        ("- a\n- b\n", None, r"c\.yaml: a config file must be a mapping"),
        ("_base_: missing.yaml\n", None, r"c\.yaml: _base_ file 'missing\.yaml' not found"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path, text, override, message):
    leaf = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_config(leaf, [override] if override else [], schema=Schema)


def test_unknown_key_in_a_base_names_the_base(tmp_path):
    write(tmp_path / "root.yaml", "Train: {lrate: 1}\n")
    write(tmp_path / "mid.yaml", "_base_: root.yaml\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: mid.yaml\nTrain: {lr: 0.5}\n")
    with pytest.raises(ConfigError, match=r"root\.yaml: unknown key 'Train\.lrate'"):
        load_config(leaf, schema=Schema)


def test_inheritance_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(tmp_path / "a.yaml", schema=Schema)


def test_unsafe_yaml_tags_are_refused(tmp_path):
    leaf = write(tmp_path / "c.yaml", "Global: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(leaf)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_command_line_habit(tmp_path):
    leaf = write(tmp_path / "c.yaml", "Global: {device: cpu}\n")
    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(["-c", str(leaf), "-o", "Global.seed=7", "-o", "Global.device=gpu:1"])
    cfg = load_config(args.config, args.override)
    assert to_dict(cfg)["Global"] == {"device": "gpu:1", "seed": 7, "resume": ""}


@pytest.mark.parametrize("text, message", [
    ("Train:\n  lr: 0.1\nGlobal:\n  seed: 1\nTrain:\n  epochs: 3\n", r"a.yaml:5: key 'Train' written twice \(first on line 1\)"),
    ("Train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", r"a.yaml:4: key 'lr' written twice \(first on line 2\)"),
])
def test_a_key_written_twice_is_an_error(tmp_path, text, message):
    """safe_load keeps the last silently: a second Train section would drop the first one's lr."""
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path / "a.yaml", text), schema=Schema)

