"""The allow-list reader of pickled checkpoints: torch zip files and paddle.save pickles.

No torch here: torch zips are the committed fixture written by torch 2.13
(tests/fixtures/lavis_tiny/views.pth, see tests/parity/make_lavis_fixture.py) or assembled below
from pickle opcodes (the helpers are shared with test_convert_lavis.py), which is also how the
malicious payloads are made.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from paddle_medvl.convert import safe_pickle
from paddle_medvl.convert.safe_pickle import (
    CheckpointFormatError,
    TorchZip,
    UnsafePickleError,
    iter_torch_zip,
    load_paddle_pickle,
    load_torch_zip,
    open_torch_zip,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "lavis_tiny"

# ---------------------------------------------------------------------------- a tiny pickle assembler (protocol 2)


def op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def op_list(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"  # MARK ... LIST


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def op_call(function: bytes, *args: bytes) -> bytes:
    return function + op_tuple(*args) + b"R"  # REDUCE


def op_dict(pairs: dict[str, bytes], ordered: bool = False) -> bytes:
    start = op_call(op_global("collections", "OrderedDict")) if ordered else b"}"
    if not pairs:
        return start
    return start + b"(" + b"".join(op_str(k) + v for k, v in pairs.items()) + b"u"  # MARK ... SETITEMS


STORAGE_TYPES = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                 "int64": "LongStorage", "int32": "IntStorage", "bool": "BoolStorage", "uint8": "ByteStorage"}


def op_tensor(key: str, storage: str, numel: int, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """``torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())``."""
    pid = op_tuple(op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"), op_int(numel)) + b"Q"
    return op_call(op_global("torch._utils", "_rebuild_tensor_v2"), pid, op_int(offset),
                   op_tuple(*map(op_int, shape)), op_tuple(*map(op_int, stride)), b"\x89",
                   op_call(op_global("collections", "OrderedDict")))


def pickled(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def payload(module: str, name: str, marker: Path) -> bytes:
    """The opcodes of ``module.name(<command that creates marker>)``: what a crafted checkpoint runs."""
    if name == "Popen":
        return op_call(op_global(module, name), op_list(op_str("touch"), op_str(str(marker))))
    if name == "eval":
        return op_call(op_global(module, name), op_str(f"__import__('os').system('touch {marker}')"))
    return op_call(op_global(module, name), op_str(f"touch {marker}"))


def write_torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes], byteorder: str = "little",
                    compress: bool = False, archive: str = "archive") -> Path:
    """The layout torch.save writes: <archive>/data.pkl, <archive>/data/<key>, byteorder, version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data_pkl)
        z.writestr(f"{archive}/byteorder", byteorder)
        for key, data in records.items():
            z.writestr(f"{archive}/data/{key}", data)
        z.writestr(f"{archive}/version", "3\n")
    return path


def save_state_dict(path: Path, tensors: dict[str, np.ndarray], entry: str | None = "model",
                    tied: dict[str, str] | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """A torch zip state dict of contiguous numpy arrays, one storage each (``tied``: name -> the name
    whose storage it shares), as ``{entry: state_dict, **extra}`` or bare when ``entry`` is None."""
    records: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    items: dict[str, bytes] = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        key = keys[tied[name]] if tied and name in tied else str(len(records))
        keys[name] = key
        records.setdefault(key, array.astype(array.dtype.newbyteorder("<")).tobytes())
        stride = tuple(s // array.itemsize for s in array.strides)
        items[name] = op_tensor(key, STORAGE_TYPES[array.dtype.name], array.size, 0, array.shape, stride)
    state = op_dict(items, ordered=True)
    body = state if entry is None else op_dict({entry: state, **(extra or {})})
    return write_torch_zip(path, pickled(body), records)


# ---------------------------------------------------------------------------- torch zip files


def test_real_torch_file_views_dtypes_and_shared_storage():
    """views.pth was written by torch.save (2.13): every layout a reader must get right."""
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    with open_torch_zip(FIX / "views.pth") as archive:
        refs = archive.state_dict()
        assert {k: (r.dtype, list(r.shape)) for k, r in refs.items()} == {
            "base": ("float32", [4, 6]), "transposed": ("float32", [6, 4]), "sliced": ("float32", [3, 3]),
            "expanded": ("int64", [2, 3]), "bf16": ("bfloat16", [4]), "fp16": ("float16", [3]),
            "mask": ("bool", [3]), "scalar": ("float32", []), "param": ("float32", [4]),
            "head": ("float64", [4]), "tail": ("float64", [4])}
        assert refs["sliced"].offset == 6 and refs["sliced"].stride == (6, 2)  # a view, as saved
        assert refs["head"].storage is refs["tail"].storage and refs["tail"].offset == 6
        np.testing.assert_array_equal(refs["bf16"].read_bits(), np.array([0x3F80, 0xC020, 0x4049, 0x477F], np.uint16))
    arrays = load_torch_zip(FIX / "views.pth")
    np.testing.assert_array_equal(arrays["base"], base)
    np.testing.assert_array_equal(arrays["transposed"], base.T)
    np.testing.assert_array_equal(arrays["sliced"], base[1:, ::2])
    assert arrays["transposed"].flags.c_contiguous and arrays["sliced"].flags.c_contiguous
    np.testing.assert_array_equal(arrays["expanded"], np.array([[0, 1, 2], [0, 1, 2]]))
    assert arrays["bf16"].dtype == np.float32  # widened, exactly
    np.testing.assert_array_equal(arrays["bf16"], np.array([1.0, -2.5, 3.140625, 65280.0], np.float32))
    np.testing.assert_array_equal(arrays["fp16"], np.array([0.5, -1.0, 6.1e-5], np.float16))
    np.testing.assert_array_equal(arrays["mask"], [True, False, True])
    assert arrays["scalar"].shape == () and float(arrays["scalar"]) == 7.25
    np.testing.assert_array_equal(arrays["param"], np.arange(4, dtype=np.float32))  # nn.Parameter -> its tensor
    np.testing.assert_array_equal(arrays["head"], np.arange(4.0))
    np.testing.assert_array_equal(arrays["tail"], np.arange(6.0, 10.0))


def test_lavis_fixture_structure_around_the_state_dict():
    """The non-tensor parts of a LAVIS runner checkpoint (optimizer, config, scaler) read as plain data."""
    with open_torch_zip(FIX / "blip2_opt_tiny_lavis.pth") as archive:
        root = archive.root
        assert sorted(root) == ["config", "epoch", "model", "optimizer", "scaler"] and root["epoch"] == 3
        assert root["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
        assert float(root["optimizer"]["state"][0]["step"].read()) == 1.0
        assert root["optimizer"]["state"][0]["exp_avg"].shape == (1, 8, 32)
        assert root["model"]._metadata[""] == {"version": 1}  # the state dict's attribute (a BUILD on OrderedDict)
        model = archive.state_dict("model")
        assert len(model) == 71
        assert model["Qformer.cls.predictions.decoder.weight"].same_data(model["Qformer.bert.embeddings.word_embeddings.weight"])
        with pytest.raises(CheckpointFormatError, match=r"not a state dict of tensors: model \(OrderedDict\).*entry='model'"):
            archive.state_dict()
        with pytest.raises(CheckpointFormatError, match=r"has no entry 'state_dict'"):
            archive.state_dict("state_dict")


def hand_made(tmp_path: Path, byteorder: str = "little", compress: bool = False) -> Path:
    """One float32 storage of 24 elements with three views into it, and an int64 expanded view."""
    base = np.arange(24, dtype=np.float32)
    dtype = ">f4" if byteorder == "big" else "<f4"
    state = op_dict({
        "whole": op_tensor("0", "FloatStorage", 24, 0, (4, 6), (6, 1)),
        "transposed": op_tensor("0", "FloatStorage", 24, 0, (6, 4), (1, 6)),
        "window": op_tensor("0", "FloatStorage", 24, 7, (2, 2), (6, 3)),  # offset 7, rows 6 apart, step 3
        "expanded": op_tensor("1", "LongStorage", 3, 0, (2, 3), (0, 1)),
    }, ordered=True)
    records = {"0": base.astype(dtype).tobytes(), "1": np.arange(3, dtype=">i8" if byteorder == "big" else "<i8").tobytes()}
    return write_torch_zip(tmp_path / f"hand_{byteorder}_{compress}.pth", pickled(state), records, byteorder, compress)


@pytest.mark.parametrize("byteorder, compress", [("little", False), ("big", False), ("little", True)])
def test_hand_made_torch_zip_round_trips(tmp_path, byteorder, compress):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = load_torch_zip(hand_made(tmp_path, byteorder, compress))
    np.testing.assert_array_equal(arrays["whole"], base)
    np.testing.assert_array_equal(arrays["transposed"], base.T)
    np.testing.assert_array_equal(arrays["window"], np.array([[7.0, 10.0], [13.0, 16.0]], np.float32))
    np.testing.assert_array_equal(arrays["expanded"], [[0, 1, 2], [0, 1, 2]])
    assert all(a.dtype.isnative for a in arrays.values())


def test_streaming_reads_one_tensor_and_only_its_bytes(tmp_path, monkeypatch):
    """Listing reads no tensor data; a view reads just the span from its first to its last element."""
    calls: list[tuple[int, int]] = []
    original = TorchZip._read_bytes

    def counting(self, info, start, size):
        calls.append((start, size))
        return original(self, info, start, size)

    monkeypatch.setattr(TorchZip, "_read_bytes", counting)
    with open_torch_zip(hand_made(tmp_path)) as archive:
        refs = archive.state_dict()
        assert {k: r.nbytes for k, r in refs.items()} == {"whole": 96, "transposed": 96, "window": 16, "expanded": 48}
        assert calls == []
        refs["window"].read()
        assert calls == [(7 * 4, (1 + 6 + 3) * 4)]  # elements 7 .. 16 of the storage
    assert [name for name, _ in iter_torch_zip(tmp_path / "hand_little_False.pth")] == ["whole", "transposed",
                                                                                         "window", "expanded"]
    with pytest.raises(ValueError, match="closed"):
        refs["whole"].read()


DANGEROUS = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "eval"),
             ("subprocess", "Popen")]


def test_the_payload_is_live(tmp_path):
    """The control: plain pickle.loads does run the crafted bytes (so the refusals below mean something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickled(payload("os", "system", marker)))
    assert marker.exists()


@pytest.mark.parametrize("module, name", DANGEROUS)
def test_payload_in_a_torch_zip_is_refused_and_never_runs(tmp_path, module, name):
    marker = tmp_path / "ran"
    tensor = op_tensor("0", "FloatStorage", 2, 0, (2,), (1,))
    body = op_dict({"model": op_dict({"w": tensor}, ordered=True), "config": payload(module, name, marker)})
    path = write_torch_zip(tmp_path / "evil.pth", pickled(body), {"0": np.ones(2, np.float32).tobytes()})
    shown = "builtins" if module == "__builtin__" else module
    with pytest.raises(UnsafePickleError, match=rf"evil\.pth: refused {shown}\.{name}:"):
        load_torch_zip(path, "model")
    with pytest.raises(UnsafePickleError, match=rf"refused {shown}\.{name}"):
        open_torch_zip(path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", DANGEROUS)
def test_payload_in_a_paddle_pickle_is_refused_and_never_runs(tmp_path, module, name):
    marker = tmp_path / "ran"
    path = tmp_path / "optimizer.pdopt"
    path.write_bytes(pickled(op_dict({"lr": b"G" + struct.pack(">d", 0.1), "evil": payload(module, name, marker)})))
    shown = "builtins" if module == "__builtin__" else module
    with pytest.raises(UnsafePickleError, match=rf"optimizer\.pdopt: refused {shown}\.{name}:"):
        load_paddle_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("argparse", "Namespace"), ("omegaconf.dictconfig", "DictConfig"),
                                          ("lavis.models.blip2_models.blip2_opt", "Blip2OPT")])
def test_config_objects_are_refused_by_name(tmp_path, module, name):
    """A checkpoint holding an argparse.Namespace or an omegaconf config is refused, naming it."""
    obj = op_call(op_global(module, name)) + b"}" + b"b"  # name() then BUILD with an empty state
    body = op_dict({"model": op_dict({}, ordered=True), "args": obj})
    path = write_torch_zip(tmp_path / "ckpt.pth", pickled(body), {})
    with pytest.raises(UnsafePickleError, match=rf"refused {module}\.{name}"):
        load_torch_zip(path, "model")


def test_refused_persistent_ids_builds_and_dtypes(tmp_path):
    # a storage whose type is not a storage class; an id that is no storage; any id in a paddle pickle
    bad_type = op_tuple(op_str("storage"), op_global("torch", "Tensor"), op_str("0"), op_str("cpu"), op_int(1)) + b"Q"
    for pid, message in ((bad_type, r"refused torch\.Tensor"),
                         (op_tuple(op_str("module"), op_str("os")) + b"Q", r"refused persistent id \('module', 'os'\)")):
        path = write_torch_zip(tmp_path / "pid.pth", pickled(op_dict({"w": pid})), {"0": b"\0" * 4})
        with pytest.raises(UnsafePickleError, match=message):
            load_torch_zip(path)
    plain = tmp_path / "state.pdparams"
    plain.write_bytes(pickled(op_str("0") + b"Q"))
    with pytest.raises(UnsafePickleError, match="refused persistent id '0'"):
        load_paddle_pickle(plain)
    # BUILD on an allowed callable would set attributes on our objects
    plain.write_bytes(pickled(op_global("collections", "OrderedDict") + op_dict({"__call__": op_str("x")}) + b"b"))
    with pytest.raises(UnsafePickleError, match="refused: BUILD"):
        load_paddle_pickle(plain)
    # numpy object arrays hold pickled Python objects: refused at their dtype
    plain.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"refused: numpy\.dtype\('O8'\)"):
        load_paddle_pickle(plain)


def test_malformed_files(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")  # torch < 1.6 starts so
    with pytest.raises(CheckpointFormatError, match=r"legacy \(pre-1\.6, non-zip\) format, which is not read"):
        load_torch_zip(legacy)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(CheckpointFormatError, match="not a torch checkpoint"):
        load_torch_zip(junk)
    with pytest.raises(FileNotFoundError, match="nowhere.pth: no such file"):
        load_torch_zip(tmp_path / "nowhere.pth")
    too_far = op_dict({"w": op_tensor("0", "FloatStorage", 4, 2, (3,), (1,))})  # elements 2..4 of 4
    with pytest.raises(CheckpointFormatError, match=r"reaches element 4 of storage 0, which holds 4"):
        load_torch_zip(write_torch_zip(tmp_path / "far.pth", pickled(too_far), {"0": b"\0" * 16}))
    short = op_dict({"w": op_tensor("0", "FloatStorage", 4, 0, (4,), (1,))})
    with pytest.raises(CheckpointFormatError, match=r"storage 0 holds 8 bytes, fewer than its 4 float32 elements"):
        load_torch_zip(write_torch_zip(tmp_path / "short.pth", pickled(short), {"0": b"\0" * 8}))
    damaged = bytearray(hand_made(tmp_path).read_bytes())
    at = damaged.index(b"X\x05\x00\x00\x00whole")  # inside archive/data.pkl: its CRC no longer matches
    damaged[at + 5] ^= 0x20
    (tmp_path / "damaged.pth").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointFormatError, match=r"damaged\.pth: a damaged zip file \(BadZipFile: Bad CRC-32"):
        load_torch_zip(tmp_path / "damaged.pth")
    truncated = tmp_path / "truncated.pdparams"
    truncated.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4)[:-6])
    with pytest.raises(CheckpointFormatError, match=r"truncated\.pdparams: not a readable pickle"):
        load_paddle_pickle(truncated)
    with pytest.raises(CheckpointFormatError, match="a zip file"):
        load_paddle_pickle(hand_made(tmp_path))


# ---------------------------------------------------------------------------- paddle.save pickles


@pytest.mark.parametrize("protocol", [4, 2])
def test_real_paddle_save_round_trips(tmp_path, protocol):
    import paddle

    state = {"a": paddle.to_tensor([1.5, -2.0]), "b": 1, "c": {"d": paddle.ones([2, 3], dtype="bfloat16"),
                                                               "e": paddle.arange(4)},
             "f": [0.25, (2, 3)], "g": "text", "h": np.float32(2.5), "i": paddle.to_tensor([1.0], dtype="float16")}
    path = tmp_path / "state.pdparams"
    paddle.save(state, str(path), protocol=protocol)
    got = load_paddle_pickle(path)
    assert sorted(got) == sorted(state) and got["b"] == 1 and got["g"] == "text" and got["f"] == [0.25, (2, 3)]
    np.testing.assert_array_equal(got["a"], np.array([1.5, -2.0], np.float32))
    assert got["c"]["d"].dtype == np.uint16 and got["c"]["d"].shape == (2, 3)  # Paddle's bfloat16 as numpy
    np.testing.assert_array_equal(safe_pickle.bfloat16_bits_to_float32(got["c"]["d"]), np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(got["c"]["e"], np.arange(4))
    assert got["h"] == np.float32(2.5) and got["h"].dtype == np.float32
    assert got["i"].dtype == np.float16


def test_optimizer_and_scheduler_state_match_paddle_load(tmp_path):
    """What paddlenlp writes as optimizer.pdopt: the same numbers paddle.load gives, without running it."""
    import paddle

    layer = paddle.nn.Linear(3, 2)
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(1e-3, 10)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=layer.parameters())
    layer(paddle.ones([4, 3])).sum().backward()
    optimizer.step()
    schedule.step()
    paddle.save(optimizer.state_dict(), str(tmp_path / "optimizer.pdopt"))
    paddle.save(schedule.state_dict(), str(tmp_path / "scheduler.pdparams"))
    ours = load_paddle_pickle(tmp_path / "optimizer.pdopt")
    theirs = paddle.load(str(tmp_path / "optimizer.pdopt"), return_numpy=True)
    # paddle.load drops the name table paddle.save adds to an optimizer state; the file holds it
    assert sorted(set(ours) - {"StructuredToParameterName@@"}) == sorted(theirs)
    for key, value in theirs.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(ours[key], value, err_msg=key)
        else:
            assert ours[key] == value, key
    assert load_paddle_pickle(tmp_path / "scheduler.pdparams") == schedule.state_dict()


def test_paddle_rng_state_is_refused_by_name(tmp_path):
    """paddlenlp's rng_state.pth holds Paddle's C++ GeneratorState, which only its own code can rebuild."""
    import paddle

    path = tmp_path / "rng_state.pth"
    paddle.save({"cpu": paddle.framework.core.default_cpu_generator().get_state(), "n": 1}, str(path))
    with pytest.raises(UnsafePickleError, match=r"rng_state\.pth: refused paddle\.base\.libpaddle\.GeneratorState"):
        load_paddle_pickle(path)


def test_plain_structures_and_cycles(tmp_path):
    path = tmp_path / "plain.pkl"
    cyclic: list = [1]
    cyclic.append(cyclic)
    obj = {"set": {1, 2}, "frozen": frozenset({3}), "bytes": b"\x00\xff", "complex": 1 + 2j, "ordered": OrderedDict(a=1),
           "nested": [np.arange(3, dtype=np.int16), (np.zeros((2, 2), dtype=">f8"), "s")], "cyclic": cyclic,
           "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "text": np.array(["ab", "c"])}
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        got = load_paddle_pickle(path)
        assert got["set"] == {1, 2} and got["frozen"] == frozenset({3}) and got["bytes"] == b"\x00\xff"
        assert got["complex"] == 1 + 2j and got["ordered"] == OrderedDict(a=1)
        np.testing.assert_array_equal(got["nested"][0], np.arange(3, dtype=np.int16))
        assert got["nested"][1][0].dtype == np.float64 and got["nested"][1][0].dtype.isnative
        assert got["cyclic"][1] is got["cyclic"]
        np.testing.assert_array_equal(got["fortran"], np.arange(6.0).reshape(2, 3))
        np.testing.assert_array_equal(got["text"], np.array(["ab", "c"]))
