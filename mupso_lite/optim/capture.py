"""Capture each layer's inputs and output gradients with module and tensor hooks.

For a weight layer we keep, from the last forward/backward with gradients enabled:

    x     (R x in)   the layer inputs, one row per example (and per spatial location for a
                     Conv2d: the unfolded patches), with a trailing 1 when the layer has a bias;
    gout  (R x out)  the gradient of the *mean* batch loss w.r.t. the layer output rows.

so the weight gradient (bias as the last column) is exactly G = gout^T x. The per-example
gradient of each example's own loss is delta = N * gout (N = batch size), which is what
K-FAC's factor B = E[delta delta^T] needs.

A layer used twice in one forward pass (weight sharing) would make these factors silently
wrong: when one backward pass reaches the same layer twice, ``ready`` raises an error.
"""
from __future__ import annotations

import weakref
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class LayerCapture:
    """Hooks on ``layers`` (dict name -> nn.Linear / nn.Conv2d / nn.Embedding) of ``model``.

    Every grad-enabled call of a layer is recorded since the last root-model forward (or
    ``clear``); the tensor hook on its output fills in that call's output gradient.

    No reference cycles: the module hooks hold this object only weakly (the optimizer owns
    it), and a tensor hook holds neither its tensor nor this object, only a small slot for
    the gradient. A cycle through a tensor's own hook is one Python's garbage collector
    cannot free, and it would keep every step's activations alive. ``remove()`` detaches
    the hooks; the owning optimizer calls it when it is deleted.
    """

    def __init__(self, model: nn.Module, layers: dict):
        for name, module in layers.items():
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ValueError(f"model: layer {name!r} is a grouped Conv2d (groups={module.groups}); "
                                 "K-FAC/Shampoo capture supports groups=1 only")
        self.layers = layers
        self.calls: dict = {name: [] for name in layers}
        self.enabled = True
        self.grad_target = "gout"  # where tensor hooks store: "gout" or "ignore"
        me = weakref.ref(self)
        self._handles = [model.register_forward_pre_hook(partial(_clear_hook, me))]
        for name, module in layers.items():
            self._handles.append(module.register_forward_hook(partial(_record_hook, me, name)))

    def record(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> None:
        """Keep one call's inputs and output; a hook on the output fills in its gradient."""
        if not (self.enabled and torch.is_grad_enabled() and output.requires_grad):
            return
        x = x.detach()
        slot = _GradSlot(weakref.ref(self), isinstance(module, nn.Conv2d))
        self.calls[name].append({"x": layer_inputs(module, x), "n": x.shape[0], "out": output, "slot": slot})
        output.register_hook(slot)

    def _backpropagated(self, name: str) -> dict | None:
        done = [c for c in self.calls[name] if c["slot"].gout is not None]
        if len(done) > 1:
            raise RuntimeError(f"layer {name!r} was called twice in one forward pass; K-FAC and "
                               "Shampoo factors assume each weight layer is used once")
        return done[0] if done else None

    def check_single_use(self) -> None:
        """Raise (before an optimizer changes anything) if any layer was called twice."""
        for name in self.layers:
            self._backpropagated(name)

    def ready(self, name: str) -> bool:
        """True when the layer's inputs and output gradient of one forward/backward are here."""
        return self._backpropagated(name) is not None

    def x(self, name: str) -> torch.Tensor:
        return self._backpropagated(name)["x"]

    def gout(self, name: str) -> torch.Tensor:
        return self._backpropagated(name)["slot"].gout

    def batch_size(self, name: str) -> int:
        return self._backpropagated(name)["n"]

    def outputs(self) -> dict:
        """The layer outputs of the last forward (still attached to the graph)."""
        return {name: calls[-1]["out"] for name, calls in self.calls.items() if calls}

    def clear(self):
        self.calls = {name: [] for name in self.layers}

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()


def _clear_hook(capture_ref, module, inputs):
    capture = capture_ref()
    if capture is not None:
        capture.clear()


def _record_hook(capture_ref, name, module, inputs, output):
    capture = capture_ref()
    if capture is not None:
        capture.record(name, module, inputs[0], output)


class _GradSlot:
    """The tensor hook of one layer call: stores that call's output-gradient rows."""

    __slots__ = ("capture_ref", "conv", "gout")

    def __init__(self, capture_ref, conv: bool):
        self.capture_ref, self.conv, self.gout = capture_ref, conv, None

    def __call__(self, g: torch.Tensor) -> None:
        capture = self.capture_ref()
        if capture is not None and capture.grad_target == "gout":
            self.gout = gradient_rows(g.detach(), self.conv)


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of layer inputs: x for Linear (leading dims flattened: a sequence's positions are
    rows too), unfolded patches for Conv2d, the flat token indices for Embedding; a column of
    ones appended when the layer has a bias (the homogeneous coordinate)."""
    if isinstance(module, nn.Embedding):   # the token indices: x is one-hot, kept as indices
        return x.reshape(-1)
    ones = module.bias is not None
    if isinstance(module, nn.Conv2d):
        return conv_patches(module, x, ones=ones)
    x = x.reshape(-1, x.shape[-1])
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1) if ones else x


def conv_patches(module: nn.Conv2d, x: torch.Tensor, ones: bool = False) -> torch.Tensor:
    """(N H' W') x (C kh kw) patch rows, in the order of ``weight.reshape(out, -1)``, so that
    ``conv_patches(m, x) @ m.weight.reshape(out, -1).T`` is the layer's output (bias aside);
    ``ones`` appends a column of ones.

    The input is padded as the layer pads it (zeros, or its ``padding_mode``); then, for each
    of the kh kw kernel offsets, the strided window of the input it sees (N x C x H' x W', a
    view) is copied into that offset's columns of the result. kh kw copies of whole images
    run 2x faster on a CPU than one gather through a six-dimensional view, and 3x faster than
    ``F.unfold`` plus a transpose. padding="same" is refused.
    """
    if isinstance(module.padding, str) and module.padding != "valid":
        raise ValueError(f"K-FAC capture: padding={module.padding!r} is not supported; use numbers")
    (kh, kw), (sy, sx), (dy, dx) = module.kernel_size, module.stride, module.dilation
    ph, pw = (0, 0) if isinstance(module.padding, str) else module.padding
    if ph or pw:
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, (pw, pw, ph, ph), mode=mode)
    n, c, hp, wp = x.shape
    ho, wo = (hp - dy * (kh - 1) - 1) // sy + 1, (wp - dx * (kw - 1) - 1) // sx + 1
    width = c * kh * kw
    out = x.new_empty(n * ho * wo, width + int(ones))
    cols = out[:, :width].view(n, ho, wo, c, kh, kw)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i * dy: i * dy + sy * (ho - 1) + 1: sy, j * dx: j * dx + sx * (wo - 1) + 1: sx]
            cols[..., i, j].copy_(window.permute(0, 2, 3, 1))
    if ones:
        out[:, width] = 1
    return out


def output_rows(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Rows of output gradients matching ``layer_inputs``: (N*H'*W') x out for Conv2d."""
    return gradient_rows(g, isinstance(module, nn.Conv2d))


def gradient_rows(g: torch.Tensor, conv: bool) -> torch.Tensor:
    if conv:
        return g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


def gradient_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight gradient as out x in, the bias gradient appended as the last column."""
    w = module.weight.grad.reshape(module.weight.shape[0], -1)
    if module.bias is not None:
        b = module.bias.grad
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b
        w = torch.cat([w, b.reshape(-1, 1)], dim=1)
    return w
