"""A pickle reader for files that hold plain integer numpy arrays and nothing else.

Accepted: dicts, lists, tuples, str, bytes, numbers, and integer numpy arrays pickled the usual
way (``_reconstruct`` + ``ndarray.__setstate__``, or protocol 5's in-band ``_frombuffer``).
Numpy's own ``_reconstruct``, ``ndarray`` and ``dtype`` never see the file: the unpickler maps
those globals to stand-ins that check their arguments and then build the array themselves with
``np.frombuffer(raw, dtype).reshape(shape).copy()``:

* a dtype is ``i1 i2 i4 i8 u1 u2 u4 u8`` in either byte order, with numpy's plain pickled state
  (no fields, sub-arrays, flags or metadata), so no object, float or structured dtypes;
* an array's state is ``(1, shape, dtype, False, raw)``: shape a tuple of ints >= 0, C order,
  ``raw`` exactly ``prod(shape) * itemsize`` bytes; no strides, offsets or shared buffers;
* all arrays together hold at most as many bytes as the pickle itself.

The whole stream is read and its opcodes are walked (``pickletools.genops``) before anything is
built, so a length or memo index that points past the end of the file is refused before the C
unpickler could allocate for it. Refusals raise ``UnsafePickleError`` (a global that is not
allowed) or ``RefusedPickleError`` (a ``ValueError``: anything else), naming the source.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
import reprlib

import numpy as np

INT_DTYPES = tuple(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8))
_BYTE_ORDERS = ("<", ">", "|", "=")
_MAX_NDIM = 32
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxtuple = 2, 40, 40, 4, 9
_short = _REPR.repr


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the unpickler's allow-list."""


class RefusedPickleError(ValueError):
    """A pickle is incomplete, or its array pieces are not plain integer arrays."""


def _text(value, what: str) -> str:
    if isinstance(value, bytes) and value.isascii():
        value = value.decode("ascii")
    if not isinstance(value, str):
        raise RefusedPickleError(f"{what}: expected a short string, got {_short(value)}")
    return value


def _is(values: tuple, expected: tuple) -> bool:
    """``values == expected`` item by item with the same types (no array or bool standing in for an int)."""
    return len(values) == len(expected) and all(type(v) is type(e) and v == e for v, e in zip(values, expected))


def _shape(shape) -> tuple[int, ...]:
    if not (type(shape) in (tuple, list) and len(shape) <= _MAX_NDIM
            and all(type(d) is int and 0 <= d < 1 << 63 for d in shape)):
        raise RefusedPickleError(f"refusing array shape {_short(shape)}: expected a tuple of at most "
                                 f"{_MAX_NDIM} integers in 0..2**63-1")
    return tuple(shape)


class _Dtype:
    """Stand-in for a pickled ``numpy.dtype``: integer codes and numpy's plain state only."""

    __slots__ = ("dtype",)

    def __init__(self, code, align=False, copy=True):
        code = _text(code, "dtype")
        if code not in INT_DTYPES or type(align) not in (bool, int) or align or type(copy) not in (bool, int):
            raise RefusedPickleError(f"refusing dtype {_short(code)}: only integer dtypes "
                                     f"({', '.join(INT_DTYPES)}) are allowed")
        self.dtype = np.dtype(code)

    def __setstate__(self, state):
        plain = (3, None, None, None, -1, -1, 0)        # all but the byte order; version 4 adds metadata
        if not (type(state) is tuple and len(state) in (8, 9) and type(state[1]) in (str, bytes)
                and _is(state[:1] + state[2:], plain if len(state) == 8 else (4, *plain[1:], None))
                and _text(state[1], "byte order") in _BYTE_ORDERS):
            raise RefusedPickleError(f"refusing dtype state {_short(state)}: expected numpy's plain "
                                     "(3, byteorder, None, None, None, -1, -1, 0)")
        order = _text(state[1], "byte order")
        self.dtype = self.dtype.newbyteorder(order) if order in "<>" else self.dtype


class _PendingArray:
    """What the ``_reconstruct`` stand-in returns; ``__setstate__`` checks the state and builds."""

    __slots__ = ("_unpickler", "array")

    def __init__(self, unpickler):
        self._unpickler, self.array = unpickler, None

    def __setstate__(self, state):
        if self.array is not None or not (type(state) is tuple and len(state) == 5 and _is(state[:1], (1,))):
            raise RefusedPickleError(f"refusing array state {_short(state)}: expected numpy's "
                                     "(1, shape, dtype, False, raw bytes), set once")
        _, shape, dtype, fortran, raw = state
        if type(fortran) not in (bool, int) or fortran:
            raise RefusedPickleError("refusing a Fortran-ordered array: only C order is allowed")
        self.array = self._unpickler._array(raw, dtype, shape)


class _Global:
    """A callable that stands in for one allowed global; it cannot be built or given a state."""

    __slots__ = ("name", "_fn")

    def __init__(self, name: str, fn):
        self.name, self._fn = name, fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise RefusedPickleError(f"refusing to set the state of {self.name}")


def _scan(raw: bytes) -> None:
    """Walk the opcodes: every counted length must fit in ``raw``, memo indices stay small."""
    try:
        for count, (opcode, arg, pos) in enumerate(pickletools.genops(raw), 1):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg < count:
                raise RefusedPickleError(f"memo index {arg} at byte {pos} is larger than the pickle so far")
            if opcode.name == "FRAME" and arg > len(raw) - pos:
                raise RefusedPickleError(f"not a complete pickle (a frame of {arg} bytes at byte {pos} "
                                         "runs past its end)")
    except RefusedPickleError:
        raise
    except (ValueError, EOFError, OverflowError) as e:
        raise RefusedPickleError(f"not a complete pickle ({e})") from None


def _resolve(obj, depth: int = 2, done: dict | None = None):
    """``obj`` with pending arrays replaced by their arrays (containers up to ``depth`` deep, once each)."""
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise RefusedPickleError("an array was never given its state")
        return obj.array
    if depth == 0 or type(obj) not in (dict, list, tuple):
        return obj
    done = {} if done is None else done
    if id(obj) not in done:
        if type(obj) is dict:
            done[id(obj)] = {k: _resolve(v, depth - 1, done) for k, v in obj.items()}
        else:
            done[id(obj)] = type(obj)(_resolve(v, depth - 1, done) for v in obj)
    return done[id(obj)]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds integer numpy arrays (through checked stand-ins) and nothing else.

    ``file`` is read to the end at construction; ``source`` (a path) prefixes every refusal.
    """

    ALLOWED = ("ndarray", "dtype", "_reconstruct", "_frombuffer")

    def __init__(self, file, source: str = "pickle"):
        self._raw = bytes(file.read())
        super().__init__(io.BytesIO(self._raw), encoding="bytes")
        self.source = source
        self._left = {"array": len(self._raw), "text": len(self._raw)}   # bytes still allowed to be built
        ndarray = _Global("numpy.ndarray", self._not_callable)
        self._globals = {}
        for numpy in ("numpy.core", "numpy._core"):
            self._globals[(f"{numpy}.multiarray", "_reconstruct")] = _Global("_reconstruct", self._reconstruct)
            self._globals[(f"{numpy}.numeric", "_frombuffer")] = _Global("_frombuffer", self._frombuffer)
            self._globals[(f"{numpy}.multiarray", "scalar")] = _Global("scalar", self._scalar)
        self._globals[("numpy", "ndarray")] = ndarray
        self._globals[("numpy", "dtype")] = _Global("numpy.dtype", _Dtype)
        self._globals[("_codecs", "encode")] = _Global("_codecs.encode", self._encode)
        for builtins in ("builtins", "__builtin__"):
            self._globals[(builtins, "bytes")] = _Global("bytes", self._empty_bytes)
        self._ndarray = ndarray

    def find_class(self, module: str, name: str):
        if name in self.ALLOWED and (module, name) in self._globals:
            return self._globals[(module, name)]
        raise UnsafePickleError(f"{self.source}: refusing to load global {module}.{name}; only numpy array "
                                f"pieces ({', '.join(self.ALLOWED)}) are allowed")

    def load(self):
        try:
            _scan(self._raw)
            return _resolve(super().load())
        except RefusedPickleError as e:
            raise RefusedPickleError(f"{self.source}: {e}") from None
        except (TypeError, ValueError) as e:  # e.g. a stand-in called with the wrong arguments
            raise RefusedPickleError(f"{self.source}: refusing malformed pickle contents ({e})") from None

    # ------------------------------------------------------------ stand-ins
    def _array(self, raw, dtype, shape) -> np.ndarray:
        if not isinstance(dtype, _Dtype):
            raise RefusedPickleError(f"refusing array dtype {_short(dtype)}: expected a pickled integer dtype")
        shape = _shape(shape)
        if not isinstance(raw, (bytes, bytearray)):
            raise RefusedPickleError(f"refusing array data {_short(raw)}: expected raw bytes")
        nbytes = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != nbytes:
            raise RefusedPickleError(f"refusing array data of {len(raw)} bytes: shape {shape} of "
                                     f"{dtype.dtype} needs exactly {nbytes}")
        self._spend("array", nbytes, f"array of shape {shape}")
        return np.frombuffer(raw, dtype.dtype).reshape(shape).copy()

    def _spend(self, kind: str, nbytes: int, what: str) -> None:
        if nbytes > self._left[kind]:
            raise RefusedPickleError(f"refusing {what}: the {kind}s built would hold more bytes than the "
                                     f"{len(self._raw)}-byte pickle")
        self._left[kind] -= nbytes

    def _not_callable(self, *args):
        raise RefusedPickleError("refusing to call numpy.ndarray: it is allowed only as _reconstruct's class")

    def _reconstruct(self, cls, shape, typecode):
        if cls is not self._ndarray or _shape(shape) != (0,) or type(typecode) not in (bytes, str) \
                or typecode not in (b"b", "b"):
            raise RefusedPickleError(f"refusing _reconstruct{_short((cls, shape, typecode))}: expected "
                                     "(numpy.ndarray, (0,), b'b')")
        return _PendingArray(self)

    def _frombuffer(self, buf, dtype, shape, order):
        if type(order) not in (str, bytes) or order not in ("C", b"C"):
            raise RefusedPickleError(f"refusing _frombuffer order {_short(order)}: only 'C' is allowed")
        return self._array(buf, dtype, shape)

    def _scalar(self, dtype, raw):
        return self._array(raw, dtype, (1,))[0]

    def _empty_bytes(self, *args):
        if args:
            raise RefusedPickleError(f"refusing bytes{_short(args)}: only bytes() is allowed")
        return b""

    def _encode(self, text, encoding):
        if type(text) is not str or type(encoding) is not str or encoding not in ("latin1", "latin-1"):
            raise RefusedPickleError(f"refusing _codecs.encode{_short((text, encoding))}: "
                                     "expected (str, 'latin1')")
        self._spend("text", len(text), "a latin-1 byte string")
        return text.encode("latin-1")


class BatchUnpickler(RestrictedUnpickler):
    """``RestrictedUnpickler`` that also allows integer numpy scalars (``scalar``) and the byte
    strings of Python 3 protocol-2 pickles (``_codecs.encode(str, 'latin1')`` and ``bytes()``)."""

    ALLOWED = RestrictedUnpickler.ALLOWED + ("scalar", "encode", "bytes")
