"""Small data sets that work offline, as flat float32 tensors with standardized inputs.

Built in: sklearn's ``digits``, a synthetic ``teacher`` task and ``mnist1d`` (generated
locally). MNIST, Fashion-MNIST (IDX files) and CIFAR-10 (python pickles, read with a
restricted unpickler) load from folders the user already has; nothing is downloaded.
``text`` is a character-level corpus for next-character prediction, built from text that
ships with Python (token ids instead of floats, one label per position).
"""
from __future__ import annotations

import math
import pickle
import random
import reprlib
import struct
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .checks import check_seed
from .safe_pickle import BatchUnpickler, RefusedPickleError, RestrictedUnpickler, UnsafePickleError  # noqa: F401

TASKS = ("classification", "regression")


@dataclass(repr=False)
class Dataset:
    """Train/test tensors: x float32 (n, d_in); y int64 (n,) labels or float32 (n, d_out).

    Sequences (``text``): x int64 (n, T) token ids, y int64 (n, T) the label of every position
    (the next token), task "classification", d_in = T, d_out = the vocabulary size. The loss
    is the mean over examples of the mean over positions.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str
    d_in: int
    d_out: int
    image_shape: tuple | None = None

    def __repr__(self) -> str:
        image = f", image_shape={self.image_shape}" if self.image_shape else ""
        return (f"Dataset({self.name!r}, {self.task}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"d_in={self.d_in}, d_out={self.d_out}{image})")


def _check_int(arg: str, value, minimum: int = 1, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg}: expected an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{arg}: expected an integer >= {minimum}, got {value!r}")
    return value


def _limits(limit, test_limit) -> tuple[int | None, int | None]:
    return _check_int("limit", limit, optional=True), _check_int("test_limit", test_limit, optional=True)


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature (x - mean) / std with the training set's statistics.

    A feature's std is clamped to at least 0.1 x the mean std over features, so constant
    or nearly constant features (image borders) stay Theta(1) on the test set too.
    """
    xtr = torch.from_numpy(np.array(x_train, dtype=np.float32).reshape(len(x_train), -1))
    xte = torch.from_numpy(np.array(x_test, dtype=np.float32).reshape(len(x_test), -1))
    std, mean = torch.std_mean(xtr, dim=0, correction=0)
    std = std.clamp_min(max(0.1 * std.mean().item(), 1e-8))
    return (xtr - mean) / std, (xte - mean) / std


def _classification(name, x_train, y_train, x_test, y_test, n_classes, image_shape=None) -> Dataset:
    xtr, xte = _standardize(x_train, x_test)
    ytr, yte = (torch.from_numpy(np.array(y, dtype=np.int64).reshape(-1)) for y in (y_train, y_test))
    return Dataset(name, xtr, ytr, xte, yte, "classification", xtr.shape[1], n_classes, image_shape)


# ---------------------------------------------------------------- built-in, offline
def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """sklearn's 8x8 digits (1797 images, 10 classes), split stratified by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=check_seed("seed", seed),
                                          stratify=y)
    return _classification("digits", xtr, ytr, xte, yte, 10, (1, 8, 8))


def teacher(n_train: int = 2048, n_test: int = 512, d_in: int = 16, d_out: int = 4,
            task: str = "classification", teacher_width: int = 64, noise: float = 0.0,
            seed: int = 0) -> Dataset:
    """x ~ N(0, I) through a random one-hidden-layer tanh teacher f(x) = W2 tanh(W1 x).

    Regression: y = f(x) + noise * N(0, I), float32 (n, d_out). Classification: the
    label is argmax of f(x) + noise * N(0, I), int64 (n,) with d_out classes.
    """
    for arg, value in [("n_train", n_train), ("n_test", n_test), ("d_in", d_in),
                       ("d_out", d_out), ("teacher_width", teacher_width)]:
        _check_int(arg, value)
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(map(repr, TASKS))}, got {task!r}")
    if task == "classification" and d_out < 2:
        raise ValueError(f"d_out: a classification teacher needs at least 2 classes, got {d_out!r}")
    if not noise >= 0:
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    w1 = torch.randn(teacher_width, d_in, generator=g) / d_in ** 0.5
    w2 = torch.randn(d_out, teacher_width, generator=g) / teacher_width ** 0.5
    x = torch.randn(n_train + n_test, d_in, generator=g)
    f = torch.tanh(x @ w1.T) @ w2.T + noise * torch.randn(n_train + n_test, d_out, generator=g)
    xtr, xte = _standardize(x[:n_train].numpy(), x[n_train:].numpy())
    y = f.argmax(dim=1) if task == "classification" else f.float()
    name = "teacher" if task == "classification" else "teacher_regression"
    return Dataset(name, xtr, y[:n_train], xte, y[n_train:], task, d_in, d_out, None)


def mnist1d(seed: int = 0, num_samples: int = 5000, train_split: float = 0.8) -> Dataset:
    """MNIST-1D (length-40 signals, 10 classes), generated locally by the ``mnist1d`` package."""
    check_seed("seed", seed)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("mnist1d() needs the 'mnist1d' package: pip install mnist1d") from e
    _check_int("num_samples", num_samples, minimum=10)
    if not 0 < train_split < 1:
        raise ValueError(f"train_split: expected a number in (0, 1), got {train_split!r}")
    args = get_dataset_args()
    args.seed, args.num_samples, args.train_split = seed, num_samples, train_split
    py_state, np_state = random.getstate(), np.random.get_state()  # make_dataset reseeds both
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _classification("mnist1d", data["x"], data["y"], data["x_test"], data["y_test"], 10)


# ---------------------------------------------------------------- text that ships with Python
# Modules whose docstrings are long English prose; the corpus is the Zen of Python followed by these.
TEXT_MODULES = ("re", "json", "argparse", "csv", "statistics", "heapq", "copy", "sched", "itertools",
                "collections", "random", "inspect", "subprocess", "doctest", "typing", "difflib", "pdb")
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))   # 96 characters: newline and printable ASCII


def corpus() -> str:
    """The Zen of Python (``this``) and the docstrings of ``TEXT_MODULES``, joined by blank lines;
    tabs become spaces and any character outside ``VOCAB`` becomes "?". The same text on every
    run of one Python version (docstrings can change between versions)."""
    import codecs
    import contextlib
    import importlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):   # importing ``this`` prints the Zen
        this = importlib.import_module("this")
    parts = [codecs.decode(this.s, "rot13")] + [importlib.import_module(m).__doc__ or "" for m in TEXT_MODULES]
    text = "\n\n".join(p.strip() for p in parts).replace("\t", "    ")
    return "".join(c if c in VOCAB else "?" for c in text)


def text(block: int = 32, stride: int | None = None, test_fraction: float = 0.1) -> Dataset:
    """Next-character prediction on ``corpus()``: windows of ``block`` characters.

    x[i] = ids[s_i : s_i + block], y[i] = ids[s_i + 1 : s_i + block + 1] (int64, ids index
    ``VOCAB``), with starts s_i every ``stride`` characters (default ``block``: each character is
    predicted once per epoch). The last ``test_fraction`` of the text is the test split.
    """
    _check_int("block", block)
    stride = _check_int("stride", block if stride is None else stride)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    ids = torch.tensor([VOCAB.index(c) for c in corpus()], dtype=torch.int64)
    cut = int(len(ids) * (1 - test_fraction))

    def windows(part):
        if len(part) <= block:
            raise ValueError(f"block: expected fewer characters than the split's {len(part)}, got {block}")
        starts = torch.arange(0, len(part) - block, stride)
        idx = starts[:, None] + torch.arange(block + 1)
        return part[idx[:, :-1]], part[idx[:, 1:]]

    (xtr, ytr), (xte, yte) = windows(ids[:cut]), windows(ids[cut:])
    return Dataset("text", xtr, ytr, xte, yte, "classification", block, len(VOCAB), None)


# ---------------------------------------------------------------- MNIST-style IDX files
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_LAYOUT = ", ".join(IDX_FILES) + " (each plain or with .gz)"
_GZIP_MAX_RATIO = 1032      # deflate never expands data more than ~1032-fold
_GZIP_CHUNK = 1 << 20


def _gunzip(raw: bytes, limit: int) -> bytearray:
    """The gzip members in ``raw``, decompressed piece by piece; stops after ``limit + 1`` bytes,
    so a bomb is never expanded. Raises zlib.error / EOFError on corrupt or truncated data."""
    out = bytearray()
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        tail = raw
        while not d.eof:
            piece = d.decompress(tail, min(_GZIP_CHUNK, limit + 1 - len(out)))
            out += piece
            if len(out) > limit:
                return out
            if not piece and not d.eof and len(d.unconsumed_tail) == len(tail):
                raise EOFError("compressed data ends before the end of the gzip stream")
            tail = d.unconsumed_tail
        raw = d.unused_data.lstrip(b"\0")     # further members; trailing zero padding is allowed
        if not raw:
            return out


def _read_idx(folder: Path, stem: str, ndim: int) -> tuple[np.ndarray, Path]:
    """(uint8 array of the header's dims, path) of one unsigned-byte IDX file, plain or .gz.

    The header (magic 0x0000 08 ndim, ndim big-endian uint32 dims) is checked against the file's
    size before the data is read or decompressed; a .gz file is never expanded past its header's size.
    """
    layout = f"expected {folder} to hold {IDX_LAYOUT}"
    path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"missing IDX file {folder / stem}[.gz]; {layout}")
    start, gz = 4 + 4 * ndim, path.suffix == ".gz"
    try:
        raw = path.read_bytes()
        head = bytes(_gunzip(raw, start)[:start]) if gz else raw[:start]
        if len(head) < start or head[:3] != b"\0\0\x08" or head[3] != ndim:
            raise ValueError(f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) (magic "
                             f"0x{0x800 + ndim:08x}, got header {head[:4].hex() or 'nothing'}); {layout}")
        dims = struct.unpack(f">{ndim}I", head[4:])
        size = math.prod(dims)
        most = _GZIP_MAX_RATIO * len(raw) if gz else len(raw) - start
        if size > most:
            raise ValueError(f"{path}: header dims {dims} need {size} bytes of data, the file "
                             f"{'can hold at most' if gz else 'holds'} {most}")
        body = _gunzip(raw, start + size) if gz else raw
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot read {'gzip data' if gz else 'the file'} ({e}); {layout}") from e
    if len(body) != start + size:
        got = len(body) - start
        raise ValueError(f"{path}: header dims {dims} need {size} bytes of data, the file holds "
                         f"{f'more than {size}' if gz and got > size else got}")
    return np.frombuffer(body, dtype=np.uint8, offset=start).reshape(dims), path


def _idx_dataset(name: str, path, limit, test_limit) -> Dataset:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: no folder {folder}; expected it to hold {IDX_LAYOUT}")
    limit, test_limit = _limits(limit, test_limit)
    splits = []
    for prefix, n in (("train", limit), ("t10k", test_limit)):
        images, images_path = _read_idx(folder, f"{prefix}-images-idx3-ubyte", 3)
        labels, labels_path = _read_idx(folder, f"{prefix}-labels-idx1-ubyte", 1)
        if len(images) == 0 or images[0].size == 0:
            raise ValueError(f"{images_path}: holds images of shape {images.shape}; expected at least one "
                             "non-empty image (a model cannot train or be tested on none)")
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                             f"{len(labels)} labels; expected one label per image")
        if labels.max() > 9:
            raise ValueError(f"{labels_path}: {prefix} labels must be 0..9, found {int(labels.max())}")
        splits += [images[:n], labels[:n]]
    shape, test_shape = splits[0].shape[1:], splits[2].shape[1:]
    if shape != test_shape:
        raise ValueError(f"{folder}: train images are {shape}, test images {test_shape}")
    return _classification(name, *splits, 10, (1, *shape))


def mnist(path, limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """MNIST from the four IDX files in folder ``path``; optionally the first ``limit`` /
    ``test_limit`` examples. x: (n, 784) standardized, y: int64 labels 0..9."""
    return _idx_dataset("mnist", path, limit, test_limit)


def fashion_mnist(path, limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """Fashion-MNIST from the four IDX files in folder ``path`` (same layout as ``mnist``)."""
    return _idx_dataset("fashion_mnist", path, limit, test_limit)


# ---------------------------------------------------------------- CIFAR-10 python pickles
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_BATCH_KEYS = ("data", "labels", "batch_label", "filenames")


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        odd = next((v for v in value if type(v) is not int and not isinstance(v, np.integer)), None)
        held = "" if odd is None else f" holding {_describe(odd)}"
        return f"a {type(value).__name__} of {len(value)}{held}"
    return "nothing" if value is None else f"a {type(value).__name__}"


def _cifar_labels(path: Path, labels, n: int) -> np.ndarray:
    """int64 (n,) labels from n ints 0..9: a list/tuple of ints or numpy integer scalars, or a 1-d int array."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        ok = len(labels) == n and bool(np.all((labels >= 0) & (labels <= 9)))
    elif isinstance(labels, (list, tuple)) and all(type(v) is int or isinstance(v, np.integer) for v in labels):
        ok = len(labels) == n and all(0 <= v <= 9 for v in labels)
    else:
        raise ValueError(f"{path}: expected b'labels' to be {n} integers 0..9 (a list, or a 1-d integer "
                         f"array), got {_describe(labels)}")
    if not ok:
        shown = sorted({int(v) for v in labels[:n + 1]})[:12]
        raise ValueError(f"{path}: expected {n} labels in 0..9, got {len(labels)} with values {shown}")
    return np.array(labels, dtype=np.int64)


def _read_cifar_batch(path: Path, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (n, 3072), labels int64 (n,)) of one pickled batch.

    Accepted: a dict with b'data' (or 'data'), a C-ordered uint8 array of shape (n, 3072) with
    n >= 1, and b'labels', n integers in 0..9 (list of ints or numpy integer scalars, or an integer
    array); b'batch_label' and b'filenames' are allowed and ignored. The pickle is read with
    ``safe_pickle.BatchUnpickler``, which builds nothing but integer arrays and scalars.
    """
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, source=str(path)).load()
    except (UnsafePickleError, RefusedPickleError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            OverflowError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({e}); {layout}") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    unexpected = [k for k in batch if (k.decode("latin-1") if isinstance(k, bytes) else k) not in _BATCH_KEYS]
    if unexpected:
        raise ValueError(f"{path}: unexpected key(s) {reprlib.repr(unexpected)}; expected a dict with "
                         f"only b'data', b'labels', b'batch_label', b'filenames'")
    data, labels = (batch.get(key, batch.get(key.decode())) for key in (b"data", b"labels"))  # bytes or str keys
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[0] > 0 and data.shape[1] == 3072 and data.flags.c_contiguous):
        raise ValueError(f"{path}: expected b'data' to be a C-ordered uint8 array of shape (n, 3072) with "
                         f"n >= 1 and b'labels', got {_describe(data)}; {layout}")
    return data, _cifar_labels(path, labels, len(data))


def cifar10(path, limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """CIFAR-10 from the python-version folder ``path``; optionally the first ``limit`` /
    ``test_limit`` examples. x: (n, 3072) standardized (channel-major 3x32x32), y: int64 0..9."""
    folder = Path(path).expanduser()
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    layout = f"expected {folder} (or a cifar-10-batches-py folder in it) to hold " + ", ".join(CIFAR_FILES)
    if not folder.is_dir():
        raise FileNotFoundError(f"cifar10: no folder {folder}; {layout}")
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"cifar10: missing {', '.join(missing)} in {folder}; {layout}")
    limit, test_limit = _limits(limit, test_limit)
    xs, ys = [], []
    for name in CIFAR_FILES[:-1]:
        if limit is not None and sum(map(len, ys)) >= limit:
            break
        x, y = _read_cifar_batch(folder / name, layout)
        xs, ys = xs + [x], ys + [y]
    x_test, y_test = _read_cifar_batch(folder / "test_batch", layout)
    x_train, y_train = np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]
    return _classification("cifar10", x_train, y_train, x_test[:test_limit], y_test[:test_limit],
                           10, (3, 32, 32))


# ---------------------------------------------------------------- by name
_LOADERS = {
    "digits": digits,
    "teacher": teacher,
    "teacher_regression": partial(teacher, task="regression"),
    "mnist1d": mnist1d,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
}


def available() -> list[str]:
    """Names ``load`` accepts (mnist, fashion_mnist and cifar10 need a ``path``; ``text`` is
    called directly: ``ml.datasets.text(block=32)``)."""
    return list(_LOADERS)


def load(name: str, **kwargs) -> Dataset:
    """The Dataset called ``name`` (see ``available()``), built with ``kwargs``."""
    if name not in _LOADERS:
        raise ValueError(f"name: expected one of {', '.join(map(repr, _LOADERS))}, got {name!r}")
    return _LOADERS[name](**kwargs)
