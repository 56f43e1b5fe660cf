"""The torch-free `.pth` reader: both formats, every storage type, views, and refusals."""
import json
import os
import pickle

import ml_dtypes
import numpy as np
import pytest

import pth_writer as pw
from jaxdissect.errors import UserError
from jaxdissect.io.pth import load, load_state_dict

FORMATS = {"legacy": pw.legacy_bytes, "zip": pw.zip_bytes}


def write(tmp_path, data, name="model.pth"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def small_file(fixtures_dir, name):
    return os.path.join(fixtures_dir, "proggan", "small", name)


def assert_one_line_error(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    assert path in message
    for fragment in fragments:
        assert fragment in message, message


def brute_force_view(flat, offset, shape, stride):
    """Element (i, j, ...) of a strided tensor is flat[offset + i*stride0 + j*stride1 + ...]."""
    out = np.empty(shape, flat.dtype)
    for index in np.ndindex(*shape):
        out[index] = flat[offset + sum(i * s for i, s in zip(index, stride))]
    return out


# ---------------------------------------------------------------- the fixture files

def test_fixture_files_hold_the_same_weights(fixtures_dir):
    with open(small_file(fixtures_dir, "small_config.json")) as f:
        expected = [(key, tuple(shape)) for key, shape in json.load(f)["state_dict_keys"]]
    legacy = load_state_dict(small_file(fixtures_dir, "small_layer_names_legacy.pth"))
    wrapped = load_state_dict(small_file(fixtures_dir, "small_wrapped.pth"))
    old_names = load_state_dict(small_file(fixtures_dir, "small_old_names_zip.pth"))
    assert [(k, v.shape) for k, v in legacy.items()] == expected
    assert list(wrapped) == list(legacy)
    assert len(old_names) == len(legacy)
    for (key, value), wrapped_value, old_value in zip(legacy.items(), wrapped.values(),
                                                       old_names.values()):
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, wrapped_value, err_msg=key)
        np.testing.assert_array_equal(value, old_value, err_msg=key)
    # The seeded weights are randn and 0.1*randn: a misread would not look like that.
    assert 0.9 < legacy["layer2.conv.weight"].std() < 1.1
    assert 0.05 < legacy["layer2.wscale.b"].std() < 0.2


def test_load_keeps_the_wrapper(fixtures_dir):
    obj = load(small_file(fixtures_dir, "small_wrapped.pth"))
    assert list(obj) == ["state_dict"]
    assert obj["state_dict"]["output_32x32.conv.weight"].shape == (3, 16, 1, 1)


# ---------------------------------------------------------------- hand-written files

@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_storage_strided_and_offset_views(tmp_path, fmt):
    flat = np.random.default_rng(0).standard_normal(60).astype(np.float32)
    storage = pw.Storage("94475482658416", flat)
    views = {
        "whole": (0, (60,), (1,)),
        "matrix": (0, (3, 4), (4, 1)),
        "transposed_at_offset": (5, (4, 3), (1, 4)),
        "gapped": (7, (2, 3), (10, 3)),
        "broadcast_row": (2, (3, 5), (0, 1)),
        "scalar": (59, (), ()),
        "empty": (0, (0, 4), (4, 1)),
    }
    obj = pw.OrderedDict({name: pw.Tensor(storage, *view) for name, view in views.items()})
    path = write(tmp_path, FORMATS[fmt](obj))
    got = load_state_dict(path)
    assert list(got) == list(views)
    for name, (offset, shape, stride) in views.items():
        assert got[name].shape == shape
        np.testing.assert_array_equal(got[name], brute_force_view(flat, offset, shape, stride),
                                      err_msg=name)
    got["whole"][:] = 0  # tensors sharing a storage come back as independent copies
    assert np.array_equal(got["matrix"], flat[:12].reshape(3, 4))


def test_legacy_storage_views(tmp_path):
    """Very old torch wrote slices of a storage as (view key, offset, numel) in the persistent id."""
    flat = np.arange(10, dtype=np.float32)
    storage = pw.Storage("root", flat)
    obj = {"w": pw.Tensor(storage, 1, (2,), (2,), view=("view", 4, 5)),
           "whole": pw.Tensor(storage, 0, (10,), (1,))}
    path = write(tmp_path, pw.legacy_bytes(obj))
    np.testing.assert_array_equal(load_state_dict(path)["w"], [5, 7])
    obj["w"] = pw.Tensor(storage, 1, (3,), (2,), view=("view", 4, 5))  # 4 + 1 + 4 = 9 > view end 8
    path = write(tmp_path, pw.legacy_bytes(obj), "outside.pth")
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "outside its storage root")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_storage_type(tmp_path, fmt):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(24) * 100
    arrays = {dtype: values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
              for dtype in pw.STORAGE_TYPES}
    arrays["bool"] = values > 0
    arrays["uint8"] = (np.abs(values) % 256).astype(np.uint8)
    shaped = {dtype: a.reshape(2, 3, 4) for dtype, a in arrays.items()}
    path = write(tmp_path, FORMATS[fmt](pw.state_dict(shaped)))
    got = load_state_dict(path)
    for dtype, array in shaped.items():
        assert got[dtype].dtype == array.dtype, dtype
        np.testing.assert_array_equal(got[dtype], array, err_msg=dtype)


def test_untyped_storage_is_bytes(tmp_path):
    raw = np.arange(8, dtype=np.uint8)
    obj = {"w": pw.Tensor(pw.Storage("0", raw, "UntypedStorage"), 2, (2, 3), (3, 1))}
    got = load_state_dict(write(tmp_path, pw.zip_bytes(obj)))["w"]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, [[2, 3, 4], [5, 6, 7]])
    # A storage saved on its own (not inside a tensor) comes back as its flat data.
    pid = ("storage", pw.Global("torch", "UntypedStorage"), "0", "cpu", 8)
    data = pw.zip_bytes({"w": obj["w"], "bare": pw.PersistentId(pid)})
    np.testing.assert_array_equal(load(write(tmp_path, data, "bare.pth"))["bare"], raw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_metadata_scalars_and_wrapper(tmp_path, fmt):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    inner = pw.Build(pw.OrderedDict({
        "conv.weight": pw.Tensor(pw.Storage("0", weight.reshape(-1)), 0, (2, 3), (3, 1), parameter=True),
        "bn.num_batches_tracked": pw.contiguous("1", np.array(7, np.int64)),
    }), {"_metadata": pw.OrderedDict({"": {"version": 1}, "bn": {"version": 2}})})
    path = write(tmp_path, FORMATS[fmt]({"epoch": 3, "state_dict": inner, "note": [1.5, None]}))
    got = load_state_dict(path)
    assert list(got) == ["conv.weight", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(got["conv.weight"], weight)
    assert got["bn.num_batches_tracked"].shape == () and got["bn.num_batches_tracked"] == 7
    whole = load(path)
    assert whole["epoch"] == 3 and whole["note"] == [1.5, None]


def test_zip_archive_name_is_free(tmp_path):
    obj = pw.state_dict({"w": np.ones((2, 2), np.float32)})
    path = write(tmp_path, pw.zip_bytes(obj, name="some_other_stem"))
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.ones((2, 2)))


# ---------------------------------------------------------------- refusals

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "no such file")


@pytest.mark.parametrize("name", ["small_layer_names_legacy.pth", "small_wrapped.pth"])
def test_truncated_fixture(fixtures_dir, tmp_path, name):
    data = open(small_file(fixtures_dir, name), "rb").read()
    for cut in [0, 1, 7, 30, 200, 3000, len(data) // 2, len(data) - 100, len(data) - 1]:
        path = write(tmp_path, data[:cut], f"cut{cut}.pth")
        with pytest.raises(UserError) as e:
            load_state_dict(path)
        assert_one_line_error(e, path)


def test_random_bytes_and_text(tmp_path):
    rng = np.random.default_rng(2)
    blobs = [rng.bytes(n) for n in (1, 10, 1000, 100_000)]
    blobs += [b"\x80\x02" + rng.bytes(500) for _ in range(5)]  # a pickle header, then noise
    blobs += [b"just some text\n", b"PK\x03\x04" + rng.bytes(100)]
    for i, blob in enumerate(blobs):
        path = write(tmp_path, blob, f"blob{i}.pth")
        with pytest.raises(UserError) as e:
            load_state_dict(path)
        assert_one_line_error(e, path)


def payloads(marker):
    """Pickle objects that would create `marker` (or run a shell) if their globals resolved."""
    return {
        "os.system": pw.Call(pw.Global("os", "system"), (f"touch {marker}",)),
        "posix.system": pw.Call(pw.Global("posix", "system"), (f"touch {marker}",)),
        "builtins.eval": pw.Call(pw.Global("builtins", "eval"), (f"open({str(marker)!r}, 'w').close()",)),
        "torch._utils._rebuild_qtensor": pw.Call(pw.Global("torch._utils", "_rebuild_qtensor"), ()),
    }


def test_the_eval_payload_is_live_under_plain_pickle(tmp_path):
    """Guards the next test: stdlib pickle really runs this payload, our reader must not."""
    marker = tmp_path / "ran"
    pickle.loads(pw.pickle_bytes(payloads(marker)["builtins.eval"]))
    assert marker.exists()


@pytest.mark.parametrize("where", ["zip object", "legacy object", "legacy header",
                                   "tensor argument", "storage type"])
def test_forbidden_globals_are_refused_and_never_run(tmp_path, where):
    marker = tmp_path / "ran"
    for name, payload in payloads(marker).items():
        tensor = pw.contiguous("0", np.zeros(3, np.float32))
        if where == "zip object":
            data = pw.zip_bytes({"state_dict": {"w": tensor, "x": payload}})
        elif where == "legacy object":
            data = pw.legacy_bytes(pw.OrderedDict({"w": tensor, "x": payload}))
        elif where == "legacy header":
            data = pw.pickle_bytes(payload) + pw.legacy_bytes({"w": tensor})
        elif where == "tensor argument":
            tensor.offset = payload
            data = pw.zip_bytes({"w": tensor})
        else:
            pid = ("storage", payload, "0", "cpu", 3)
            data = pw.zip_bytes({"w": pw.PersistentId(pid)})
        path = write(tmp_path, data, "evil.pth")
        with pytest.raises(UserError) as e:
            load_state_dict(path)
        assert_one_line_error(e, path, "refusing", name)
        assert not marker.exists()


def test_wrong_magic_number(tmp_path):
    data = pw.legacy_bytes(pw.state_dict({"w": np.zeros(2, np.float32)}))
    good_magic = pickle.dumps(pw.LEGACY_MAGIC, protocol=2)
    path = write(tmp_path, pickle.dumps(pw.LEGACY_MAGIC + 1, protocol=2) + data[len(good_magic):])
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "magic number")


def test_missing_and_short_zip_records(tmp_path):
    obj = pw.state_dict({"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)})
    path = write(tmp_path, pw.zip_bytes(obj, replace_records={"1": None}), "missing.pth")
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "missing record archive/data/1")
    path = write(tmp_path, pw.zip_bytes(obj, replace_records={"1": b"\0" * 15}), "short.pth")
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "storage 1 needs 16 bytes", "only 15")


@pytest.mark.parametrize("fmt", FORMATS)
def test_view_outside_its_storage(tmp_path, fmt):
    storage = pw.Storage("0", np.zeros(10, np.float32))
    obj = {"w": pw.Tensor(storage, 8, (3,), (1,))}
    path = write(tmp_path, FORMATS[fmt](obj))
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "outside its storage")
    for layout in [(-1, (3,), (1,)), (0, (-3,), (1,)), (9, (3,), (-1,)), (0, (3, 1), (1,))]:
        path = write(tmp_path, FORMATS[fmt]({"w": pw.Tensor(storage, *layout)}), "layout.pth")
        with pytest.raises(UserError) as e:
            load_state_dict(path)
        assert_one_line_error(e, path, "bad tensor layout")


def test_state_dict_must_hold_only_tensors(tmp_path):
    path = write(tmp_path, pw.zip_bytes({"w": pw.contiguous("0", np.zeros(2, np.float32)), "step": 5}))
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "'step'", "int")
    path = write(tmp_path, pw.zip_bytes([pw.contiguous("0", np.zeros(2, np.float32))]), "list.pth")
    with pytest.raises(UserError) as e:
        load_state_dict(path)
    assert_one_line_error(e, path, "not a state dict")
    assert load(path)[0].shape == (2,)
