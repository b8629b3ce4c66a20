"""train(): a stream of per-step records, and the feature-change probe.

Feature change of layer l at step t, on a fixed probe batch (the first ``probe_size``
training examples):

    rms(h_l(t) - h_l(0)) = |h_l(t) - h_l(0)| / sqrt(numel)

with h_l the output of the l-th role-tagged weight layer (its pre-activation). The output
change is rms(f(t) - f(0)). This is ``mup``'s coordinate check: under muP these stay Theta(1)
as the width grows.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import time
from typing import Callable, Iterator

import torch
from torch import nn

from .divergence import DivergenceRule, hint_for
from .losses import loss_function
from .checks import check_positive, check_seed
from .roles import layer_roles


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; anything else as torch.device, checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: got {device!r}, but no CUDA device is available here; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: got {device!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    return dev


class FeatureProbe:
    """Records every tagged layer's output on a fixed probe batch; ``change()`` compares to t = 0."""

    def __init__(self, model: nn.Module, x_probe: torch.Tensor):
        self.model, self.x = model, x_probe
        self.names = [name for name, _, _ in layer_roles(model)]
        self.h0, self.f0 = self.features()

    @torch.no_grad()
    def features(self) -> tuple[dict, torch.Tensor]:
        store, handles = {}, []
        for name, module, _ in layer_roles(self.model):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: store.__setitem__(name, o.detach().clone())))
        try:
            was_training = self.model.training
            self.model.eval()
            f = self.model(self.x).detach().clone()
            self.model.train(was_training)
        finally:
            for h in handles:
                h.remove()
        return store, f

    def change(self) -> tuple[dict, float]:
        """({layer: rms(h_l - h_l(0))}, rms(f - f(0)))."""
        h, f = self.features()
        rms = lambda a, b: float((a - b).pow(2).mean().sqrt())  # noqa: E731
        return {n: rms(h[n], self.h0[n]) for n in self.names}, rms(f, self.f0)


def check_training_inputs(model: nn.Module, optimizer: torch.optim.Optimizer, data) -> None:
    """Raise a clear error, before any work, when model, optimizer and data do not fit together:
    empty or non-finite data, labels that do not match the inputs (in the training and the test
    split alike), an optimizer built for another model, or a model whose input/output size
    differs from the data's d_in/d_out (or from its image shape or sequence length, where the
    model declares ``image_shape`` or ``block``).
    Token sequences (``is_tokens``: int64 x of shape (n, T) with one label per position) are
    accepted as inputs too."""
    layer_roles(model)  # a model without roles
    tokens = _check_split(data, "train", tokens=None)
    _check_split(data, "test", tokens=tokens)   # now, not after the training: evaluate() reads it
    _check_model_input(model, data, tokens)
    x, y = data.x_train, data.y_train
    own = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
    if foreign:
        raise ValueError(f"optimizer: expected an optimizer over this model's parameters, got one holding "
                         f"{foreign} parameter(s) of another model; build it with ml.make_optimizer(model, ...)")
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    probe = x[:2]
    if tokens:   # and the windows holding the largest token ids: an id past the embedding's size fails here
        probe = torch.cat([probe] + [t[t.amax(1).argmax()][None] for t in (x, data.x_test) if len(t)])
    try:
        with torch.no_grad():
            out = model(_inputs(probe, p.device, p.dtype))
    except (RuntimeError, IndexError) as e:
        raise ValueError(f"data: its inputs (d_in={data.d_in}, shape {tuple(x.shape[1:])}) do not fit the "
                         f"model's input layer ({str(e).splitlines()[0]})") from None
    finally:
        model.train(was_training)
    want = data.d_out if data.task == "classification" else (y.shape[1] if y.dim() == 2 else 1)
    if out.shape[-1] != want:
        raise ValueError(f"data: expected a model with {want} outputs (d_out of {data.name!r}), "
                         f"got a model with {out.shape[-1]}")


def _check_split(data, split: str, tokens) -> bool:
    """Check one split's inputs and labels (``split`` "train" or "test"); the test split must look
    like the training split (same input shape and kind, same label kind and range) and may be
    empty. Returns whether the data are token sequences (decided by the training split)."""
    xa, ya = f"data.x_{split}", f"data.y_{split}"
    x, y = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
    for arg, t in ((xa, x), (ya, y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg}: expected a torch.Tensor, got {type(t).__name__}")
    if split == "train":
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"{xa}: expected a non-empty (n, d_in) tensor, got shape {tuple(x.shape)}")
        tokens = is_tokens(data)
        if not tokens and data.task == "classification" and x.dim() == 2 and tuple(y.shape) == tuple(x.shape):
            # one label per position: token sequences, one of the two of the wrong kind
            wrong, arg, want = (x, xa, "int64 token ids") if x.dtype != torch.int64 else (y, ya, "integer labels")
            raise TypeError(f"{arg}: expected {want} ({ya} has one label per position of {xa}, shape "
                            f"{tuple(x.shape)}: token sequences), got {wrong.dtype}")
        if not tokens:
            _check_image_shape(data, x)
    else:
        train_x = data.x_train
        if tuple(x.shape[1:]) != tuple(train_x.shape[1:]) or x.dtype.is_floating_point != train_x.dtype.is_floating_point:
            raise ValueError(f"{xa}: expected inputs shaped and typed like data.x_train's ({tuple(train_x.shape[1:])}, "
                             f"{train_x.dtype}), got {tuple(x.shape[1:])}, {x.dtype}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{ya}: expected {x.shape[0]} targets (one per input), got {y.shape[0]}")
    if x.shape[0] == 0:
        return tokens
    if tokens and int(x.min()) < 0:
        raise ValueError(f"{xa}: expected token ids >= 0, got {int(x.min())}")
    if not tokens and (not x.is_floating_point() or not bool(torch.isfinite(x).all())):
        raise ValueError(f"{xa}: expected finite floating-point inputs (or int64 token ids of shape "
                         "(n, T) with one label per token), got "
                         f"{'non-finite values (NaN or Inf)' if x.is_floating_point() else x.dtype}")
    if data.task == "classification":
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or (y.dim() != 1 and not tokens) \
                or (tokens and tuple(y.shape) != tuple(x.shape)):
            raise TypeError(f"{ya}: expected integer class labels of shape (n,) for classification "
                            f"(or (n, T) for token inputs), got {y.dtype} of shape {tuple(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= data.d_out:
            raise ValueError(f"{ya}: expected labels in 0..{data.d_out - 1} (d_out={data.d_out}), "
                             f"got labels in {int(y.min())}..{int(y.max())}")
    elif not y.is_floating_point() or not bool(torch.isfinite(y).all()) \
            or (split == "test" and tuple(y.shape[1:]) != tuple(data.y_train.shape[1:])):
        raise ValueError(f"{ya}: expected finite float regression targets"
                         + ("" if split == "train" else f" shaped like data.y_train's {tuple(data.y_train.shape[1:])}")
                         + f", got {y.dtype} of shape {tuple(y.shape)}"
                         + ("" if not y.is_floating_point() or bool(torch.isfinite(y).all()) else " with NaN or Inf"))
    return tokens


def _check_image_shape(data, x: torch.Tensor) -> None:
    """``data.image_shape`` (C, H, W), when given, must describe x: C*H*W features of a flat
    (n, d) x, or x's shape (n, C, H, W) itself."""
    shape = getattr(data, "image_shape", None)
    if shape is None:
        return
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 3) or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape):
        raise ValueError(f"data.image_shape: expected (channels, height, width) as three positive integers "
                         f"or None, got {shape!r}")
    feats = tuple(x.shape[1:])
    if len(feats) == 1 and feats[0] != math.prod(shape):
        raise ValueError(f"data.image_shape: expected (C, H, W) with C*H*W = {feats[0]} (data.x_train's "
                         f"features), got {tuple(shape)}")
    if len(feats) > 1 and feats != tuple(shape):
        raise ValueError(f"data.image_shape: expected data.x_train's image shape {feats}, got {tuple(shape)}")


def _check_model_input(model: nn.Module, data, tokens: bool) -> None:
    """The inputs against the input shape the model declares, if it declares one:
    ``model.image_shape`` (C, H, W) for an image model (x of shape (n, C*H*W) or (n, C, H, W);
    a flat x is reshaped, so C*H*W features alone would pass with the wrong H and W), and an
    int ``model.block`` for a token model (sequences of at most ``block`` positions)."""
    x, want = data.x_train, getattr(model, "image_shape", None)
    if not tokens and isinstance(want, (tuple, list, torch.Size)):
        want = tuple(want)
        got = tuple(x.shape[1:]) if x.dim() > 2 else getattr(data, "image_shape", None)
        if got is not None and tuple(got) != want:
            raise ValueError(f"data: expected images of shape {want} (the model's image_shape), got images of "
                             f"shape {tuple(got)} in {getattr(data, 'name', 'data')!r}; build the model with "
                             f"image_shape={tuple(got)}")
        if got is None and x.shape[1] != math.prod(want):
            raise ValueError(f"data: expected inputs with C*H*W = {math.prod(want)} features (the model's "
                             f"image_shape={want}), got {x.shape[1]} features")
    block = getattr(model, "block", None)
    if tokens and isinstance(block, int) and not isinstance(block, bool) and x.shape[1] > block:
        raise ValueError(f"data: expected sequences of at most {block} tokens (the model's block), got "
                         f"sequences of {x.shape[1]}; build the model with block >= {x.shape[1]}")


def is_tokens(data) -> bool:
    """Token sequences: int64 inputs (n, T) with integer labels of the same shape (one per position)."""
    x, y = data.x_train, data.y_train
    return (data.task == "classification" and x.dtype == torch.int64 and x.dim() == 2
            and tuple(y.shape) == tuple(x.shape) and not y.is_floating_point())


def _inputs(x: torch.Tensor, device, dtype) -> torch.Tensor:
    """Inputs on ``device``: floats in the model's dtype, token ids kept as integers."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)


def _resolve_data(data):
    if isinstance(data, str):
        from .data import load
        return load(data)
    for attr in ("x_train", "y_train", "task"):
        if not hasattr(data, attr):
            raise TypeError(f"data: expected an ml.datasets Dataset or a dataset name, "
                            f"got {type(data).__name__} without {attr!r}")
    return data


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data="digits", steps: int = 100,
          batch_size: int = 64, probe_size: int = 64, eval_every: int | None = None, seed: int = 0,
          device: str = "auto", callback: Callable | None = None, stop=None,
          divergence: DivergenceRule | None = DivergenceRule()) -> Iterator[dict]:
    """Train ``model`` with ``optimizer`` and yield one record (a dict) per step:

    step, loss, accuracy (training batch; classification only), feature_change
    ({layer: rms}), output_change, seconds (since start), test_loss / test_accuracy (every
    ``eval_every`` steps and at the last step), diverged, message, warning, hint.

    Stops early when ``callback(record)`` returns True or ``stop`` (a threading.Event or a
    callable) is set. A run that diverges (``mupso_lite.divergence``: a non-finite loss, or
    a loss above 10x its start for 5 steps) yields a last record with ``diverged=True``,
    ``message="diverged at step k: ..."`` and ``hint`` (what to change); it does not raise,
    and no update is taken on the diverged loss. ``divergence=None`` flags only non-finite
    losses. A run whose loss spiked above 3x its start but did not diverge carries
    ``warning="unstable: the loss spiked ..."`` and the ``hint`` on every record from the
    spike on. Bad arguments raise before the first step.
    """
    check_positive("steps", steps, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    check_positive("probe_size", probe_size, integer=True)
    check_seed("seed", seed)
    if eval_every is not None:
        check_positive("eval_every", eval_every, integer=True)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if divergence is not None and not isinstance(divergence, DivergenceRule):
        raise TypeError(f"divergence: expected an ml.DivergenceRule or None, got {type(divergence).__name__}")
    rule = dataclasses.replace(divergence if divergence is not None else DivergenceRule(math.inf, 1, math.inf))
    data = _resolve_data(data)
    check_training_inputs(model, optimizer, data)
    dev = resolve_device(device)
    dtype = next(model.parameters()).dtype
    model.to(dev)
    loss_name = "cross_entropy" if data.task == "classification" else "mse"
    loss_fn = loss_function(loss_name)
    classify = data.task == "classification"
    x_all, y_all = _inputs(data.x_train, dev, dtype), data.y_train.to(dev)
    if not classify:
        y_all = y_all.to(dtype)
    n = x_all.shape[0]
    torch.manual_seed(seed)  # the MC Fisher samples from the global generator
    gen = torch.Generator().manual_seed(seed)
    probe = FeatureProbe(model, x_all[: min(probe_size, n)])
    hint = hint_for(optimizer)   # what to change if the run diverges or spikes
    order, pos = torch.randperm(n, generator=gen), 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if _stopped(stop):
            return
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos: pos + batch_size].to(dev)
        pos += batch_size
        x, y = x_all[idx], y_all[idx]
        model.train()
        out = model(x)
        loss = loss_fn(out, y)
        record = {"step": step, "loss": float(loss.detach()), "diverged": False, "message": "", "hint": ""}
        message = rule.check(step, record["loss"])
        record["warning"] = rule.warning
        if record["warning"]:
            record["hint"] = hint
        if message is not None:   # stop before an update on a diverged loss
            record.update(diverged=True, message=message, hint=hint,
                          seconds=time.perf_counter() - start)
            yield record
            return
        optimizer.zero_grad(set_to_none=True)
        if hasattr(optimizer, "sample_fisher"):
            optimizer.sample_fisher(out, loss=loss_name)
        loss.backward()
        optimizer.step()
        if classify:
            record["accuracy"] = float((out.argmax(-1) == y).float().mean())
        record["feature_change"], record["output_change"] = probe.change()
        if not all(map(math.isfinite, [record["output_change"], *record["feature_change"].values()])):
            record.update(diverged=True, message=f"diverged at step {step}: a feature change is not finite",
                          hint=hint)
        if (eval_every and step % eval_every == 0) or step == steps:
            record.update(evaluate(model, data, loss_fn, dev, dtype))
        record["seconds"] = time.perf_counter() - start
        yield record
        if record["diverged"] or (callback is not None and callback(record) is True):
            return


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn=None, device=None, dtype=None) -> dict:
    """{"test_loss", "test_accuracy" (classification)} on the dataset's test split."""
    if getattr(data, "x_test", None) is None or len(data.x_test) == 0:
        return {}
    classify = data.task == "classification"
    loss_fn = loss_fn or loss_function("cross_entropy" if classify else "mse")
    p = next(model.parameters())
    x = _inputs(data.x_test, device or p.device, dtype or p.dtype)
    y = data.y_test.to(x.device)
    was_training = model.training
    model.eval()
    out = model(x)
    model.train(was_training)
    res = {"test_loss": float(loss_fn(out, y if classify else y.to(out.dtype)))}
    if classify:
        res["test_accuracy"] = float((out.argmax(-1) == y).float().mean())
    return res


def _stopped(stop) -> bool:
    if stop is None:
        return False
    if hasattr(stop, "is_set"):
        return stop.is_set()
    return bool(stop())


def run(model, optimizer, data="digits", steps: int = 100, **kwargs) -> list[dict]:
    """All records of ``train(...)`` as a list (convenience for scripts and tests)."""
    return list(train(model, optimizer, data, steps, **kwargs))
