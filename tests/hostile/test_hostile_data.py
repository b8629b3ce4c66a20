"""Hostile CIFAR-10 pickles and IDX files, each of which must be refused with the exact exception
type and a message that names the file and what was wrong.

The files are loaded in child processes with a capped address space, so a crash (negative return
code) or a multi-GB allocation (MemoryError) shows up as a failed case instead of hurting the machine.
One child loads many cases in turn (importing torch costs seconds) and reports each as it finishes;
when a child dies, the case it was loading is charged with the death and the rest go to a new child.
"""
import concurrent.futures
import io
import json
import pickle
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from mupso_lite import data

ROOT = Path(__file__).resolve().parents[2]
HEADROOM = 400 << 20   # address space a child may use beyond what importing mupso_lite took (~650 MB)

CHILD = f"""
import gc, json, resource, sys, time
from mupso_lite import data
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
base = max(int(status["VmPeak"].split()[0]), int(status["VmSize"].split()[0])) * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
cap = base + {HEADROOM}
resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
loader = getattr(data, sys.argv[1])
for folder in sys.argv[2:]:
    rss, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        loader(folder)
        out = {{"raised": None}}
    except BaseException as e:
        out = {{"raised": type(e).__name__, "message": str(e)[:4000]}}
    out.update(folder=folder, seconds=time.perf_counter() - start,
               rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024)
    print(json.dumps(out), flush=True)
    gc.collect()
"""

# ---------------------------------------------------------------- crafting pickles

RECONSTRUCT = np.empty(0).__reduce__()[0]
FROMBUFFER = np.arange(2).__reduce_ex__(5)[0]
SCALAR = np.int64(0).__reduce__()[0]
U1 = np.dtype("u1")


class Reduce:
    """Pickles as ``fn(*args)``, then ``BUILD`` with ``state`` when one is given."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def array_with_state(shape, dtype, raw, fortran=False):
    """An ndarray pickle (``_reconstruct`` + ``__setstate__``) with a hand-written state."""
    return Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, raw))


def call_global(module, name, arg="true"):
    """Protocol-2 pickle of ``module.name(arg)`` written opcode by opcode."""
    raw = arg.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(raw)) + raw
            + b"\x85R.")


def batch(data_=None, labels=None, n=2, **extra):
    x = np.zeros((n, 3072), np.uint8) if data_ is None else data_
    y = list(range(n)) if labels is None else labels
    return {b"data": x, b"labels": y, **extra}


def dumps(obj, protocol=4):
    return pickle.dumps(obj, protocol=protocol)


def shared_data_arrays(count):
    """``count`` arrays pickled from one memoized 6 KB string: 12 MB of arrays from a ~60 KB file."""
    shared = bytes(range(256)) * 24
    return [array_with_state((2, 3072), U1, shared) for _ in range(count)]


def nested_bomb(depth):
    inner = [0, 0]
    for _ in range(depth):
        inner = [inner, inner]
    return inner


# The first two are the files that hurt the old loader: a structured dtype whose only field is an
# object, with its "has objects" flags cleared, so raw file bytes become PyObject pointers; and an
# ndarray(shape, dtype, buffer, offset, strides) call that views one byte as 400000 x 3072 images.
OBJECT_FIELD_DTYPE = Reduce(np.dtype, ("V8", False, True),
                            (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
ZERO_STRIDE_N = 400_000

CIFAR_CASES = {
    # name: (pickle bytes, exception type, key word in the message)
    "object_field_dtype_segfault": (
        lambda: dumps(batch(labels=array_with_state((2,), OBJECT_FIELD_DTYPE, b"\x41" * 16))),
        "RefusedPickleError", "dtype 'V8'"),
    "object_field_dtype_protocol2": (  # the same file as Python 3 writes protocol 2 (bytes via _codecs)
        lambda: dumps(batch(labels=array_with_state((2,), OBJECT_FIELD_DTYPE, b"\x41" * 16)), 2),
        "RefusedPickleError", "dtype 'V8'"),
    "frombuffer_object_dtype": (
        lambda: dumps(batch(labels=Reduce(FROMBUFFER, (bytearray(16), np.dtype("O"), (2,), "C"))), 5),
        "RefusedPickleError", "dtype 'O8'"),
    "zero_stride_huge_view": (
        lambda: dumps(batch(data_=Reduce(np.ndarray, ((ZERO_STRIDE_N, 3072), U1, b"\0", 0, (0, 0))),
                    labels=Reduce(np.ndarray, ((ZERO_STRIDE_N,), U1, b"\0", 0, (0,))))),
        "RefusedPickleError", "numpy.ndarray"),
    "huge_shape_few_bytes": (
        lambda: dumps(batch(data_=array_with_state((1 << 40, 3072), U1, b"\0" * 64))),
        "RefusedPickleError", "needs exactly"),
    "object_dtype_labels": (lambda: dumps(batch(labels=np.array([1, 2], dtype=object))),
                            "RefusedPickleError", "dtype 'O8'"),
    "structured_dtype_labels": (lambda: dumps(batch(labels=np.zeros(2, dtype=[("a", "<u4"), ("b", "<u4")]))),
                                "RefusedPickleError", "dtype 'V8'"),
    "dtype_state_with_flags": (
        lambda: dumps(batch(labels=array_with_state((2,), Reduce(np.dtype, ("u8", False, True),
                                                         (3, "<", None, None, None, -1, -1, 0x3F)), b"\0" * 16))),
        "RefusedPickleError", "dtype state"),
    "float_labels_list": (lambda: dumps(batch(labels=[0.0, 1.0])), "ValueError", "integers"),
    "float_labels_array": (lambda: dumps(batch(labels=np.array([0.0, 1.0]))), "RefusedPickleError", "dtype 'f8'"),
    "float_scalar_labels": (lambda: dumps(batch(labels=[np.float64(0), np.float64(1)])), "RefusedPickleError",
                            "dtype 'f8'"),
    "scalar_object_dtype": (lambda: dumps(batch(labels=[Reduce(SCALAR, (np.dtype("O"), b"\0" * 8)), 1])),
                            "RefusedPickleError", "dtype 'O8'"),
    "scalar_short_bytes": (lambda: dumps(batch(labels=[Reduce(SCALAR, (np.dtype("i8"), b"\x01")), 1])),
                           "RefusedPickleError", "needs exactly"),
    "fortran_data_reconstruct": (lambda: dumps(batch(data_=np.asfortranarray(np.zeros((2, 3072), np.uint8)))),
                               "RefusedPickleError", "Fortran"),
    "fortran_data_frombuffer": (lambda: dumps(batch(data_=np.asfortranarray(np.zeros((2, 3072), np.uint8))), 5),
                               "RefusedPickleError", "order"),
    "wrong_shape_3071": (lambda: dumps(batch(data_=np.zeros((2, 3071), np.uint8))), "ValueError", "(n, 3072)"),
    "data_not_uint8": (lambda: dumps(batch(data_=np.zeros((2, 3072), np.int16))), "ValueError", "uint8"),
    "data_one_dimensional": (lambda: dumps(batch(data_=np.zeros(3072, np.uint8))), "ValueError", "(n, 3072)"),
    "global_os_system": (lambda: call_global("os", "system"), "UnsafePickleError", "os.system"),
    "global_builtins_eval": (lambda: call_global("builtins", "eval", "1+1"), "UnsafePickleError", "builtins.eval"),
    "global_numpy_load": (lambda: call_global("numpy", "load", "/dev/zero"), "UnsafePickleError", "numpy.load"),
    "codecs_encode_other_codec": (
        lambda: b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-7\x86R.",
        "RefusedPickleError", "expected (str, 'latin1')"),
    "reconstruct_other_class": (lambda: dumps(batch(data_=Reduce(RECONSTRUCT, (np.dtype, (0,), b"b")))),
                                "RefusedPickleError", "_reconstruct"),
    "nested_list_bomb": (lambda: dumps(batch(labels=[nested_bomb(40), 0])), "ValueError", "integers"),
    "labels_longer_than_data": (lambda: dumps(batch(labels=[0] * 1_000_000)), "ValueError", "expected 2 labels"),
    "memo_repeated_arrays": (lambda: dumps(batch(labels=shared_data_arrays(2000))), "RefusedPickleError",
                             "more bytes than"),
    "memo_index_bomb": (lambda: b"\x80\x02]r\x00\x00\x00\x10.", "RefusedPickleError", "memo index"),
    "bytes8_length_bomb": (lambda: b"\x80\x04\x8e" + struct.pack("<Q", 1 << 31) + b"abc.", "RefusedPickleError",
                           "not a complete pickle"),
    "not_a_dict": (lambda: dumps([np.zeros((2, 3072), np.uint8), [0, 1]]), "ValueError", "expected a dict"),
    "unexpected_key": (lambda: dumps(batch(extra=b"x")), "ValueError", "unexpected key"),
    "zero_images": (lambda: dumps(batch(n=0)), "ValueError", "n >= 1"),
    "truncated": (lambda: dumps(batch())[:-40], "RefusedPickleError", "not a complete pickle"),
    "empty_file": (lambda: b"", "RefusedPickleError", "not a complete pickle"),
    "random_bytes": (lambda: random.Random(0).randbytes(4096), "RefusedPickleError", "not a complete pickle"),
}


def write_cifar(folder, bad):
    """A CIFAR-10 folder of tiny valid batches with ``bad`` as data_batch_1; its path."""
    folder.mkdir(parents=True)
    for name in data.CIFAR_FILES:
        (folder / name).write_bytes(dumps(batch()))
    (folder / "data_batch_1").write_bytes(bad)
    return folder / "data_batch_1"


# ---------------------------------------------------------------- crafting IDX files


def idx(dims, payload=None, magic=None):
    """An unsigned-byte IDX file: header for ``dims`` then ``payload`` (zeros of the right size by default)."""
    head = (magic or bytes([0, 0, 8, len(dims)])) + struct.pack(f">{len(dims)}I", *dims)
    n = 1
    for d in dims:
        n *= d
    return head + (bytes(n) if payload is None else payload)


def gzip_bomb(head, zeros_mb=200):
    """``head`` then ``zeros_mb`` MB of zeros, gzip-compressed one MB at a time (about 200 KB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [z.compress(head)] + [z.compress(chunk) for _ in range(zeros_mb)]
    return b"".join(parts + [z.flush()])


def gz(raw):
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return z.compress(raw) + z.flush()


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
IDX_CASES = {
    # name: (file name, bytes, exception type, key word); the file replaces the valid one
    "huge_dims_tiny_file": (IMAGES, lambda: idx((1 << 31, 1 << 31, 1), b"\0" * 64), "ValueError", "header dims"),
    "huge_dims_tiny_gz": (IMAGES + ".gz", lambda: gz(idx((1 << 31, 1 << 31, 1), b"\0" * 64)), "ValueError",
                          "can hold at most"),
    "dims_overflow_int64": (IMAGES, lambda: idx((1 << 31, 1 << 31, 4), b""), "ValueError", "header dims"),
    "gzip_bomb": (IMAGES + ".gz", lambda: gzip_bomb(idx((6, 28, 28), b"")), "ValueError", "more than 4704"),
    "truncated_gzip": (IMAGES + ".gz", lambda: gz(idx((6, 28, 28)))[:-30], "ValueError", "cannot read gzip"),
    "gzip_trailing_garbage": (IMAGES + ".gz", lambda: gz(idx((6, 28, 28))) + b"junk", "ValueError",
                              "cannot read gzip"),
    "not_gzip": (IMAGES + ".gz", lambda: b"plain bytes, not gzip", "ValueError", "cannot read gzip"),
    "empty_gz": (IMAGES + ".gz", lambda: b"", "ValueError", "cannot read gzip"),
    "empty_file": (IMAGES, lambda: b"", "ValueError", "not an unsigned-byte IDX"),
    "wrong_magic": (IMAGES, lambda: idx((6, 28, 28), magic=b"\0\0\x0d\x03"), "ValueError",
                    "not an unsigned-byte IDX"),
    "ndim_mismatch": (IMAGES, lambda: idx((6, 784)), "ValueError", "3 dimension(s)"),
    "truncated_data": (IMAGES, lambda: idx((6, 28, 28))[:-5], "ValueError", "header dims"),
    "labels_above_9": (LABELS, lambda: idx((6,), bytes([1, 2, 3, 200, 4, 5])), "ValueError", "0..9"),
    "count_mismatch": (LABELS, lambda: idx((5,)), "ValueError", "one label per image"),
    "zero_examples": (IMAGES, lambda: idx((0, 28, 28)), "ValueError", "at least one"),
    "zero_size_images": (IMAGES, lambda: idx((6, 0, 28)), "ValueError", "at least one"),
}


def write_idx_folder(folder, name, raw):
    """A valid 6-train / 4-test MNIST folder with ``name`` replaced by ``raw``; the hostile file's path."""
    folder.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx((n, 28, 28)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx((n,)))
    (folder / name.removesuffix(".gz")).unlink()
    (folder / name).write_bytes(raw)
    return folder / name


# ---------------------------------------------------------------- running the children


def run_children(loader, folders):
    """{folder: result} for each folder, loaded in turn by ``loader`` in child processes."""
    results, pending = {}, list(folders)
    while pending:
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, loader, *map(str, pending)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=60 + 5 * len(pending))
            stdout, stderr, returncode = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            stderr, returncode = "timed out", "timeout"
        done = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        for out in done:
            results[out["folder"]] = {"returncode": returncode if len(done) == len(pending) else 0, "out": out,
                                      "stderr": stderr[-3000:]}
        if len(done) == len(pending):
            break
        results[str(pending[len(done)])] = {"returncode": returncode, "out": None, "stderr": stderr[-3000:]}
        pending = pending[len(done) + 1:]
    return results


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """{(kind, case): (hostile file, result)}: CIFAR cases in one child, IDX cases in another."""
    root = tmp_path_factory.mktemp("hostile")
    cifar = {name: write_cifar(root / f"cifar_{name}", make()) for name, (make, *_) in CIFAR_CASES.items()}
    idx_ = {name: write_idx_folder(root / f"idx_{name}", file_name, make())
            for name, (file_name, make, *_) in IDX_CASES.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = {kind: pool.submit(run_children, loader, [path.parent for path in paths.values()])
                for kind, loader, paths in (("cifar", "cifar10", cifar), ("idx", "mnist", idx_))}
        return {(kind, name): (path, runs[kind].result()[str(path.parent)])
                for kind, paths in (("cifar", cifar), ("idx", idx_)) for name, path in paths.items()}


def check_refused(result, path, exc_type, word):
    assert result["returncode"] == 0, (
        f"the child died (return code {result['returncode']}; negative = killed by a signal):\n{result['stderr']}")
    out = result["out"]
    assert out["raised"] == exc_type, f"expected {exc_type}, got {out['raised']}: {out.get('message')}"
    assert str(path) in out["message"], out["message"]
    assert word in out["message"], out["message"]
    assert out["seconds"] < 20 and out["rss_growth_mb"] < 300, out


@pytest.mark.parametrize("name", list(CIFAR_CASES))
def test_hostile_cifar_batch_is_refused(children, name):
    path, result = children[("cifar", name)]
    _, exc_type, word = CIFAR_CASES[name]
    check_refused(result, path, exc_type, word)


@pytest.mark.parametrize("name", list(IDX_CASES))
def test_hostile_idx_file_is_refused(children, name):
    path, result = children[("idx", name)]
    _, _, exc_type, word = IDX_CASES[name]
    check_refused(result, path, exc_type, word)


def test_refusal_types_are_value_or_unpickling_errors():
    assert issubclass(data.RefusedPickleError, ValueError)
    assert issubclass(data.UnsafePickleError, pickle.UnpicklingError)
    assert not issubclass(data.UnsafePickleError, ValueError)


# ---------------------------------------------------------------- what must keep loading


def numpy1_names(raw):
    """numpy 1.x wrote its rebuilders under numpy.core, not numpy._core."""
    return raw.replace(b"cnumpy._core.", b"cnumpy.core.")


WRITERS = {"protocol2": lambda obj: pickle.dumps(obj, protocol=2),
           "protocol2_numpy1_names": lambda obj: numpy1_names(pickle.dumps(obj, protocol=2)),
           "protocol5": lambda obj: pickle.dumps(obj, protocol=5)}
LABEL_FORMS = {"list_of_int": lambda y: [int(v) for v in y],
               "int64_array": lambda y: np.asarray(y, dtype=np.int64),
               "list_of_int64_scalars": lambda y: [np.int64(v) for v in y]}


@pytest.mark.parametrize("labels", list(LABEL_FORMS))
@pytest.mark.parametrize("writer", list(WRITERS))
def test_real_batches_keep_loading(tmp_path, writer, labels):
    rng = np.random.default_rng(1)
    expected = {}
    for i, name in enumerate(data.CIFAR_FILES):
        x = rng.integers(0, 256, (3 + i, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 3 + i)
        expected[name] = (x, y)
        obj = {b"batch_label": f"batch {i}".encode(), b"labels": LABEL_FORMS[labels](y), b"data": x,
               b"filenames": [f"img{j}.png".encode() for j in range(len(y))]}
        (tmp_path / name).write_bytes(WRITERS[writer](obj))
    for name, (x, y) in expected.items():
        got_x, got_y = data._read_cifar_batch(tmp_path / name, "layout")
        np.testing.assert_array_equal(got_x, x)
        assert got_y.dtype == np.int64 and got_y.tolist() == y.tolist()
    ds = data.cifar10(tmp_path)
    assert ds.x_train.shape == (3 + 4 + 5 + 6 + 7, 3072) and ds.x_test.shape == (8, 3072)
    assert ds.y_train.tolist() == np.concatenate([expected[f"data_batch_{i}"][1] for i in range(1, 6)]).tolist()


def test_restricted_unpickler_rebuilds_integer_arrays_of_every_protocol():
    for dtype in ("u1", "i2", ">i4", "<u8", "i8"):
        arr = np.arange(24, dtype=dtype).reshape(2, 3, 4)
        for protocol in (2, 3, 4, 5):
            got = data.BatchUnpickler(io.BytesIO(pickle.dumps({"a": arr, "b": [arr[0, 0, 1]]}, protocol))).load()
            np.testing.assert_array_equal(got["a"], arr)
            assert got["a"].dtype == arr.dtype and got["a"].flags.c_contiguous and got["a"].flags.writeable
            assert got["b"][0] == 1 and got["b"][0].dtype == arr[0, 0, 1].dtype
