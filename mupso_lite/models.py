"""Width-parametrized models whose weight layers know their role (input, hidden, output).

``MLP`` and ``CNN`` tag their layers with roles (``roles.py``) and initialize them from the
scaling table; ``init_weights`` does the same for a user's own model tagged with
``tag_roles``. Constructors count their parameters from the sizes first and refuse sizes whose
parameters would not fit in memory (``param_memory``), before allocating anything.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import warnings

import torch
from torch import nn

from .checks import check_choice, check_positive, check_seed
from .roles import WEIGHT_LAYERS, layer_roles, model_widths, tag_roles  # noqa: F401 (re-exported)
from .scaling import OPTIMIZERS, layer_scales

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@torch.no_grad()
def init_weights(model: nn.Module, param: str = "mup", optimizer: str = "sgd", sigma: float = 1.0,
                 zero_readout: bool = False, generator: torch.Generator | None = None) -> nn.Module:
    """Draw every tagged weight from N(0, std^2) with std from the scaling table; biases = 0.

    ``zero_readout`` sets the output layer to zero (b_L -> infinity; notebook 02 shows why
    K-FAC then learns through the last layer only).
    """
    scales = {s.name: s for s in layer_scales(model, param, optimizer, sigma=sigma)}
    for name, module, role in layer_roles(model):
        std = 0.0 if (zero_readout and role == "output") else scales[name].init_std
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()   # as nn.Embedding.reset_parameters: the padding row is 0
    return model


def check_image_shape(image_shape) -> tuple[int, int, int]:
    """(channels, height, width) as three positive integers (numpy integers accepted), else ValueError.
    The models here keep the spatial size (stride 1, padding k // 2), so any H, W >= 1 works."""
    if not (isinstance(image_shape, (tuple, list)) and len(image_shape) == 3) or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in image_shape):
        raise ValueError(f"image_shape: expected (channels, height, width) as three positive integers, "
                         f"got {image_shape!r}")
    return tuple(int(s) for s in image_shape)


def available_memory() -> int | None:
    """Bytes of memory available now (psutil), else the machine's physical memory, else None."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if n < 1e6 else f"{n:.2e} {unit}"
        n /= 1024


@contextlib.contextmanager
def param_memory(what: str, sizes: dict, n_params: int):
    """Allocate a model's parameters inside this block. Before: refuse (ValueError) when
    bytes = n_params x the default dtype's element size exceeds the available memory; during:
    turn an allocation failure into a MemoryError with the same sizes. ``sizes`` are the
    constructor's size arguments ({arg: value}, an image_shape counts by its channels); the
    error names the largest."""
    nbytes = n_params * torch.empty((), dtype=torch.get_default_dtype()).element_size()
    arg = max(sizes, key=lambda k: sizes[k][0] if isinstance(sizes[k], tuple) else sizes[k])
    avail = available_memory()
    need = (f"{what}({', '.join(f'{k}={v}' for k, v in sizes.items())}) has {n_params:,} parameters, "
            f"{_bytes(nbytes)} as {str(torch.get_default_dtype()).replace('torch.', '')}"
            + ("" if avail is None else f", and {_bytes(avail)} of memory is available"))
    if avail is not None and nbytes > avail:
        raise ValueError(f"{arg}: expected a size whose parameters fit in memory, got {arg}={sizes[arg]}: "
                         f"{need}; choose a smaller {arg}")
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not any(w in str(e).lower() for w in ("alloc", "out of memory")):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MemoryError(f"{arg}: could not allocate the parameters for {arg}={sizes[arg]}: {need}; "
                          f"choose a smaller {arg} (torch: {first})") from None


def _check_common(width, base_width, depth, param, optimizer, activation, d_in, d_out, sigma):
    if optimizer is not None:
        check_choice("optimizer", optimizer, OPTIMIZERS)
        warnings.warn("optimizer= changes nothing and will be removed: the muP init is the same for every "
                      "optimizer (only learning rates and damping differ, and ml.make_optimizer sets those); "
                      "drop the argument", FutureWarning, stacklevel=3)
    check_positive("sigma", sigma)
    check_positive("width", width, integer=True)
    check_positive("base_width", base_width, integer=True)
    check_positive("d_in", d_in, integer=True)
    check_positive("d_out", d_out, integer=True)
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth: expected an integer >= 2 (number of weight layers), got {depth!r}")
    if depth < 2:
        raise ValueError(f"depth: expected an integer >= 2 (number of weight layers), got {depth}")
    check_choice("param", param, ("sp", "mup"))
    check_choice("activation", activation, tuple(ACTIVATIONS))


class MLP(nn.Module):
    """``depth`` weight layers: d_in -> width -> ... -> width -> d_out, with roles.

    h_1 = W_1 x,  h_l = W_l phi(h_{l-1}),  f = h_L.  Initialized from the scaling table for
    ``param`` at ``width`` relative to ``base_width`` (default: width, i.e. SP = muP). The init
    is the same for every optimizer; ``optimizer=`` is deprecated and ignored.
    """

    def __init__(self, d_in: int, d_out: int, width: int, depth: int = 3, base_width: int | None = None,
                 param: str = "mup", optimizer: str | None = None, activation: str = "tanh", bias: bool = False,
                 sigma: float = 1.0, zero_readout: bool = False, seed: int | None = 0):
        super().__init__()
        base_width = width if base_width is None else base_width
        _check_common(width, base_width, depth, param, optimizer, activation, d_in, d_out, sigma)
        self.param = check_choice("param", param, ("sp", "mup"))
        sizes = [d_in] + [width] * (depth - 1) + [d_out]
        n = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))   # parameters
        gen = torch.Generator().manual_seed(check_seed("seed", seed)) if seed is not None else None
        with param_memory("MLP", dict(d_in=d_in, d_out=d_out, width=width, depth=depth), n):
            self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))
            self.act = ACTIVATIONS[activation.lower()]()
            tag_roles(self, width, base_width)
            init_weights(self, param, sigma=sigma, zero_readout=zero_readout, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else self.act(x))
        return x


class CNN(nn.Module):
    """A small CNN whose width is its channel count: conv (input) -> convs (hidden) ->
    global average pool -> linear readout (output).

    Flat inputs are reshaped to ``image_shape`` = (channels, height, width); ``ml.train``
    refuses data whose images have another shape.
    """

    def __init__(self, image_shape: tuple = (1, 8, 8), d_out: int = 10, width: int = 32, depth: int = 3,
                 base_width: int | None = None, param: str = "mup", optimizer: str | None = None,
                 activation: str = "relu", bias: bool = False, kernel_size: int = 3, sigma: float = 1.0,
                 zero_readout: bool = False, seed: int | None = 0):
        super().__init__()
        base_width = width if base_width is None else base_width
        image_shape = check_image_shape(image_shape)
        _check_common(width, base_width, depth, param, optimizer, activation, image_shape[0], d_out, sigma)
        check_positive("kernel_size", kernel_size, integer=True)
        self.param = check_choice("param", param, ("sp", "mup"))
        self.image_shape = image_shape
        chans = [self.image_shape[0]] + [width] * (depth - 1)
        n = sum(a * b * kernel_size ** 2 + (b if bias else 0) for a, b in zip(chans[:-1], chans[1:]))  # params
        n += width * d_out + (d_out if bias else 0)
        gen = torch.Generator().manual_seed(check_seed("seed", seed)) if seed is not None else None
        sizes = dict(image_shape=image_shape, d_out=d_out, width=width, depth=depth, kernel_size=kernel_size)
        with param_memory("CNN", sizes, n):
            self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2, bias=bias)
                                       for a, b in zip(chans[:-1], chans[1:]))
            self.readout = nn.Linear(width, d_out, bias=bias)
            self.act = ACTIVATIONS[activation.lower()]()
            tag_roles(self, width, base_width)
            init_weights(self, param, sigma=sigma, zero_readout=zero_readout, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(x.shape[0], *self.image_shape)
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else self.act(x))
        return self.readout(self.act(x).mean(dim=(2, 3)))
