"""train(): a stream of per-step records, and the feature-change probe.

Feature change of layer l at step t, on a fixed probe batch (the first ``probe_size``
training examples):

    rms(h_l(t) - h_l(0)) = |h_l(t) - h_l(0)| / sqrt(numel)

with h_l the output of the l-th role-tagged weight layer (its pre-activation). The output
change is rms(f(t) - f(0)). This is ``mup``'s coordinate check: under muP these stay Theta(1)
as the width grows.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import torch
from torch import nn

from .losses import loss_function
from .models import layer_roles
from .scaling import check_positive


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; anything else as torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
          device: str = "auto", callback: Callable | None = None, stop=None) -> Iterator[dict]:
    """Train ``model`` with ``optimizer`` and yield one record (a dict) per step:

    step, loss, accuracy (training batch; classification only), feature_change
    ({layer: rms}), output_change, seconds (since start), test_loss / test_accuracy (every
    ``eval_every`` steps and at the last step), diverged, message.

    Stops early when ``callback(record)`` returns True or ``stop`` (a threading.Event or a
    callable) is set. A non-finite loss yields a last record with ``diverged=True`` and
    ``message="diverged at step k"``; it does not raise.
    """
    check_positive("steps", steps, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    check_positive("probe_size", probe_size, integer=True)
    if eval_every is not None:
        check_positive("eval_every", eval_every, integer=True)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    data = _resolve_data(data)
    layer_roles(model)  # a clear error for a model without roles, before any work
    dev = resolve_device(device)
    dtype = next(model.parameters()).dtype
    model.to(dev)
    loss_name = "cross_entropy" if data.task == "classification" else "mse"
    loss_fn = loss_function(loss_name)
    classify = data.task == "classification"
    x_all, y_all = data.x_train.to(dev, dtype), data.y_train.to(dev)
    if not classify:
        y_all = y_all.to(dtype)
    n = x_all.shape[0]
    torch.manual_seed(seed)  # the MC Fisher samples from the global generator
    gen = torch.Generator().manual_seed(seed)
    probe = FeatureProbe(model, x_all[: min(probe_size, n)])
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
        record = {"step": step, "loss": float(loss.detach()), "diverged": False, "message": ""}
        if not math.isfinite(record["loss"]):
            record.update(diverged=True, message=f"diverged at step {step}",
                          seconds=time.perf_counter() - start)
            yield record
            return
        optimizer.zero_grad(set_to_none=True)
        if hasattr(optimizer, "sample_fisher"):
            optimizer.sample_fisher(out, loss=loss_name)
        loss.backward()
        optimizer.step()
        if classify:
            record["accuracy"] = float((out.argmax(1) == y).float().mean())
        record["feature_change"], record["output_change"] = probe.change()
        if not all(map(math.isfinite, [record["output_change"], *record["feature_change"].values()])):
            record.update(diverged=True, message=f"diverged at step {step}")
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
    x = data.x_test.to(device or p.device, dtype or p.dtype)
    y = data.y_test.to(x.device)
    was_training = model.training
    model.eval()
    out = model(x)
    model.train(was_training)
    res = {"test_loss": float(loss_fn(out, y if classify else y.to(x.dtype)))}
    if classify:
        res["test_accuracy"] = float((out.argmax(1) == y).float().mean())
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
