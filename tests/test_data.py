"""Data loaders: built-in sets, IDX and CIFAR-10 files made here, the restricted unpickler."""
import gzip
import io
import os
import pickle
import random
import struct
import sys

import numpy as np
import pytest
import torch

from mupso_lite import data

# ---------------------------------------------------------------- file writers


def write_idx(path, array, gz=False):
    """An unsigned-byte IDX file: magic 0x0000 08 ndim, big-endian uint32 dims, the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def make_idx_folder(folder, n_train=6, n_test=4, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
              "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    for prefix, (images, labels) in arrays.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Protocol 2 with str and bytes written as Python 2 byte strings, as in the real CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_string


def py2_dumps(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (the files' writer) named the array rebuilder numpy.core.multiarray
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


WRITERS = {"python2": py2_dumps,
           "protocol4": lambda obj: pickle.dumps(obj, protocol=4),
           "protocol5": lambda obj: pickle.dumps(obj, protocol=5)}


def make_cifar_folder(folder, n=4, dumps=py2_dumps, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in data.CIFAR_FILES:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        batches[name] = (x, y)
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x,
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(dumps(batch))
    return batches


def standardized(x_train, x_test):
    """Reference: numpy float64 standardization with the same std floor as the loader."""
    x_train, x_test = x_train.reshape(len(x_train), -1).astype(np.float64), x_test.reshape(len(x_test), -1)
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.maximum(std, 0.1 * std.mean())
    return (x_train - mean) / std, (x_test - mean) / std


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("loader", [data.mnist, data.fashion_mnist])
def test_idx_loads_shapes_labels_and_standardizes(tmp_path, gz, loader):
    arrays = make_idx_folder(tmp_path, gz=gz)
    ds = loader(tmp_path)
    assert ds.name == loader.__name__ and ds.task == "classification"
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (4, 784)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert (ds.d_in, ds.d_out, ds.image_shape) == (784, 10, (1, 28, 28))
    assert ds.y_train.tolist() == arrays["train"][1].tolist()
    assert ds.y_test.tolist() == arrays["t10k"][1].tolist()
    ref_train, ref_test = standardized(arrays["train"][0], arrays["t10k"][0])
    np.testing.assert_allclose(ds.x_train.numpy(), ref_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ds.x_test.numpy(), ref_test, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.mean(0).numpy(), 0, atol=1e-4)


def test_idx_mixed_plain_and_gz_and_limits(tmp_path):
    arrays = make_idx_folder(tmp_path, n_train=8, n_test=5)
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).unlink()
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(raw))
    ds = data.load("mnist", path=str(tmp_path), limit=3, test_limit=2)
    assert ds.x_train.shape == (3, 784) and ds.x_test.shape == (2, 784)
    assert ds.y_train.tolist() == arrays["train"][1][:3].tolist()
    assert ds.y_test.tolist() == arrays["t10k"][1][:2].tolist()
    with pytest.raises(ValueError, match="limit"):
        data.mnist(tmp_path, limit=0)


def test_idx_missing_folder_and_file_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    assert all(name in str(err.value) for name in data.IDX_FILES)
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as err:
        data.fashion_mnist(tmp_path)
    assert str(tmp_path) in str(err.value)


def _corrupt(folder, name, raw):
    (folder / name).write_bytes(raw)
    return folder / name


@pytest.mark.parametrize("case", ["magic", "wrong_ndim", "truncated", "bad_gzip", "count", "label_range"])
def test_idx_malformed_files_raise_value_error_naming_the_path(tmp_path, case):
    arrays = make_idx_folder(tmp_path)
    images = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    path = tmp_path / "train-images-idx3-ubyte"
    if case == "magic":
        _corrupt(tmp_path, path.name, b"\x00\x00\x09\x03" + images[4:])
    elif case == "wrong_ndim":
        write_idx(path, arrays["train"][0].reshape(6, 784))
    elif case == "truncated":
        _corrupt(tmp_path, path.name, images[:-10])
    elif case == "bad_gzip":
        path.unlink()
        path = _corrupt(tmp_path, path.name + ".gz", b"this is not gzip data")
    elif case == "count":
        path = write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train"][1][:5])
    elif case == "label_range":
        path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(6, 12))
    with pytest.raises(ValueError) as err:
        data.mnist(tmp_path)
    assert str(path if case not in ("count", "label_range") else tmp_path) in str(err.value)


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("subfolder", [False, True])
def test_cifar_loads_batches(tmp_path, writer, subfolder):
    folder = tmp_path / "cifar-10-batches-py" if subfolder else tmp_path
    batches = make_cifar_folder(folder, dumps=WRITERS[writer])
    ds = data.cifar10(tmp_path)
    assert (ds.name, ds.d_in, ds.d_out, ds.image_shape) == ("cifar10", 3072, 10, (3, 32, 32))
    assert ds.x_train.shape == (20, 3072) and ds.x_test.shape == (4, 3072)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    x_train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_train = [label for i in range(1, 6) for label in batches[f"data_batch_{i}"][1]]
    assert ds.y_train.tolist() == y_train and ds.y_test.tolist() == batches["test_batch"][1]
    ref_train, ref_test = standardized(x_train, batches["test_batch"][0])
    np.testing.assert_allclose(ds.x_train.numpy(), ref_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ds.x_test.numpy(), ref_test, rtol=1e-4, atol=1e-4)


def test_cifar_limit_reads_only_the_batches_it_needs(tmp_path):
    batches = make_cifar_folder(tmp_path)
    for i in (3, 4, 5):
        (tmp_path / f"data_batch_{i}").write_bytes(b"not a pickle")
    ds = data.cifar10(tmp_path, limit=6, test_limit=3)
    assert ds.x_train.shape == (6, 3072) and ds.x_test.shape == (3, 3072)
    assert ds.y_train.tolist() == batches["data_batch_1"][1] + batches["data_batch_2"][1][:2]
    with pytest.raises(ValueError, match="data_batch_3"):
        data.cifar10(tmp_path)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["bare", "inside_batch", "builtins_eval"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    make_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    evil = Evil(marker)
    if payload == "bare":
        raw = pickle.dumps(evil)
    elif payload == "inside_batch":
        raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": evil})
    else:
        raw = b"cbuiltins\neval\n(V__import__('pathlib').Path(%s).touch()\ntR." % repr(str(marker)).encode()
    (tmp_path / "data_batch_1").write_bytes(raw)
    with pytest.raises(pickle.UnpicklingError, match="refusing") as err:
        data.cifar10(tmp_path)
    assert str(tmp_path / "data_batch_1") in str(err.value)
    assert not marker.exists()
    assert not isinstance(err.value, ValueError)


def test_restricted_unpickler_allows_only_numpy_array_pieces():
    for module, name in [("os", "system"), ("builtins", "eval"), ("numpy", "load"), ("_codecs", "encode"),
                         ("numpy.core.multiarray", "scalar"), ("subprocess", "Popen")]:
        with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
            data.RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    for protocol in (2, 3, 4, 5):
        raw = pickle.dumps(arr, protocol=protocol) if protocol > 2 else py2_dumps(arr)
        np.testing.assert_array_equal(data.RestrictedUnpickler(io.BytesIO(raw)).load(), arr)


@pytest.mark.parametrize("case", ["truncated", "not_dict", "no_data", "wrong_width", "float_data",
                                  "label_count", "label_range"])
def test_cifar_malformed_batches_raise_value_error_naming_the_path(tmp_path, case):
    make_cifar_folder(tmp_path)
    x, y = np.zeros((3, 3072), np.uint8), [1, 2, 3]
    raw = {"truncated": pickle.dumps({b"data": x, b"labels": y})[:-20],
           "not_dict": pickle.dumps([x, y]),
           "no_data": pickle.dumps({b"labels": y}),
           "wrong_width": pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": y}),
           "float_data": pickle.dumps({b"data": x.astype(np.float64), b"labels": y}),
           "label_count": pickle.dumps({b"data": x, b"labels": [1, 2]}),
           "label_range": pickle.dumps({b"data": x, b"labels": [1, 2, 10]})}[case]
    (tmp_path / "test_batch").write_bytes(raw)
    with pytest.raises(ValueError) as err:
        data.cifar10(tmp_path)
    assert str(tmp_path / "test_batch") in str(err.value)


def test_cifar_str_keys_are_accepted(tmp_path):
    make_cifar_folder(tmp_path)
    x = np.full((2, 3072), 7, np.uint8)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": x, "labels": [3, 4]}))
    assert data.cifar10(tmp_path).y_test.tolist() == [3, 4]


def test_cifar_missing_folder_or_file_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.cifar10(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    assert all(name in str(err.value) for name in data.CIFAR_FILES)
    make_cifar_folder(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch") as err:
        data.load("cifar10", path=tmp_path)
    assert str(tmp_path) in str(err.value)


# ---------------------------------------------------------------- built-in sets


def test_digits_shapes_split_and_determinism():
    ds = data.digits()
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert (ds.d_in, ds.d_out, ds.image_shape, ds.task) == (64, 10, (1, 8, 8), "classification")
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert sorted(ds.y_train.unique().tolist()) == list(range(10))
    np.testing.assert_allclose(ds.x_train.mean(0).numpy(), 0, atol=1e-5)
    assert 0.5 < ds.x_train.std().item() < 1.5 and ds.x_test.abs().max() < 50
    again, other = data.digits(seed=0), data.digits(seed=1)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    assert not torch.equal(ds.y_train, other.y_train)
    assert data.digits(test_fraction=0.5).x_test.shape[0] in (898, 899)
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits(test_fraction=1.0)


def test_teacher_classification_and_regression():
    ds = data.teacher(n_train=300, n_test=100, d_in=8, d_out=3, seed=1)
    assert ds.x_train.shape == (300, 8) and ds.x_test.shape == (100, 8) and ds.y_train.shape == (300,)
    assert ds.y_train.dtype == torch.int64 and set(ds.y_train.tolist()) == {0, 1, 2}
    assert (ds.task, ds.d_in, ds.d_out, ds.image_shape) == ("classification", 8, 3, None)
    again, other = data.teacher(n_train=300, n_test=100, d_in=8, d_out=3, seed=1), data.teacher(d_in=8, seed=2)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    assert not torch.equal(ds.x_train, other.x_train[:300])
    reg = data.load("teacher_regression", n_train=300, n_test=100, d_in=8, d_out=3, seed=1)
    assert reg.task == "regression" and reg.name == "teacher_regression"
    assert reg.y_train.shape == (300, 3) and reg.y_train.dtype == torch.float32
    assert torch.equal(reg.x_train, ds.x_train)
    assert torch.equal(reg.y_train.argmax(1), ds.y_train)  # same teacher, noise-free
    noisy = data.teacher(n_train=300, n_test=100, d_in=8, d_out=3, seed=1, task="regression", noise=0.5)
    assert 0.3 < (noisy.y_train - reg.y_train).std().item() < 0.7


@pytest.mark.parametrize("kwargs,arg", [({"task": "ranking"}, "task"), ({"n_train": 0}, "n_train"),
                                        ({"d_out": 1}, "d_out"), ({"noise": -1.0}, "noise"),
                                        ({"teacher_width": 2.5}, "teacher_width")])
def test_teacher_rejects_bad_arguments(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        data.teacher(**kwargs)


def test_mnist1d_generated_locally_and_leaves_global_rngs_alone():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    ds = data.mnist1d(num_samples=500)
    assert (np.random.rand(), random.random()) == expected
    assert ds.x_train.shape == (400, 40) and ds.x_test.shape == (100, 40)
    assert (ds.d_in, ds.d_out, ds.image_shape) == (40, 10, None)
    assert ds.y_train.dtype == torch.int64 and set(ds.y_train.tolist()) <= set(range(10))
    again, other = data.load("mnist1d", num_samples=500), data.mnist1d(num_samples=500, seed=1)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_train, again.y_train)
    assert not torch.equal(ds.x_train, other.x_train)


def test_mnist1d_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match="pip install mnist1d"):
        data.mnist1d()


def test_load_available_and_unknown_names():
    assert data.available() == ["digits", "teacher", "teacher_regression", "mnist1d",
                                "mnist", "fashion_mnist", "cifar10"]
    assert torch.equal(data.load("digits", seed=3).x_train, data.digits(seed=3).x_train)
    with pytest.raises(ValueError) as err:
        data.load("imagenet")
    msg = str(err.value)
    assert "name" in msg and "'imagenet'" in msg and all(repr(n) in msg for n in data.available())


def test_repr_is_short():
    text = repr(data.teacher(n_train=10, n_test=5))
    assert text == "Dataset('teacher', classification, train=10, test=5, d_in=16, d_out=4)"
    assert "image_shape=(1, 8, 8)" in repr(data.digits())
