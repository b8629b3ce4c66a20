"""Three models to bring to ``ml.parametrize``: plain torch modules, built by width.

Nothing here knows about muP or the optimizers; each model is what you would write anyway.
The whole user flow is three calls:

    model = TinyGPT(vocab=96, width=1024)            # the model you want
    base = TinyGPT(vocab=96, width=64)               # the same architecture at the base width
    ml.parametrize(model, base)                      # roles from shapes, then the muP init
    opt = ml.make_optimizer(model, "kfac", lr=0.1)   # per-layer lr and damping from the table

(``build`` below does the first three in one line.) What a model needs for its roles to be
read from shapes: every weight is an nn.Linear, nn.Conv2d or nn.Embedding; every hidden size
grows by the same factor (the MLP of a transformer block keeps 4 x width); attention is
written with nn.Linear projections q, k, v, o.

One thing the shapes cannot tell: **attention logits**. With a fixed number of heads the head
dimension d grows with the width. After a few steps q and k are correlated, so q . k grows
like d, and softmax(q k^T / sqrt(d)) sharpens with width; muP divides by d instead
(Yang et al. 2022). ``TinyGPT(attention="mup")`` uses ``attn_mult / d``, with ``attn_mult`` =
sqrt(d at the base width) so that it equals the standard 1/sqrt(d) there (SP = muP at M0).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_positive
from .models import check_image_shape, param_memory
from .parametrize import parametrize

__all__ = ["ResidualMLP", "ResNetCNN", "TinyGPT", "build"]


# ---------------------------------------------------------------- 1. a residual MLP
class ResidualMLP(nn.Module):
    """x -> Linear -> ``depth`` blocks h + fc2(relu(fc1(LayerNorm(h)))) -> LayerNorm -> readout."""

    def __init__(self, d_in: int, d_out: int, width: int, depth: int = 2):
        super().__init__()
        for arg, v in (("d_in", d_in), ("d_out", d_out), ("width", width), ("depth", depth)):
            check_positive(arg, v, integer=True)
        # parameters: embed, depth x (LayerNorm + fc1 + fc2), final LayerNorm, readout
        n = (d_in + 1) * width + depth * (2 * width + 2 * (width + 1) * width) + 2 * width + (width + 1) * d_out
        with param_memory("ResidualMLP", dict(d_in=d_in, d_out=d_out, width=width, depth=depth), n):
            self.embed = nn.Linear(d_in, width)
            self.blocks = nn.ModuleList(nn.ModuleDict({"norm": nn.LayerNorm(width), "fc1": nn.Linear(width, width),
                                                       "fc2": nn.Linear(width, width)}) for _ in range(depth))
            self.norm = nn.LayerNorm(width)
            self.readout = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1))
        for b in self.blocks:
            h = h + b["fc2"](F.relu(b["fc1"](b["norm"](h))))
        return self.readout(self.norm(h))


# ---------------------------------------------------------------- 2. a small ResNet
class ResNetCNN(nn.Module):
    """conv stem -> 2 residual blocks relu(h + BN(conv(relu(BN(conv(h)))))) -> global average
    pool -> readout. Width = channels; flat inputs are reshaped to ``image_shape`` (C, H, W)
    (``ml.train`` refuses data whose images have another shape).

    BatchNorm always normalizes with the current batch's statistics (``track_running_stats=False``),
    in evaluation too: running averages would make the probe's features at step t differ from
    step 0 by the running-statistics update as well, not by learning alone.
    """

    def __init__(self, image_shape: tuple = (1, 8, 8), d_out: int = 10, width: int = 32, blocks: int = 2):
        super().__init__()
        check_positive("width", width, integer=True)
        check_positive("d_out", d_out, integer=True)
        check_positive("blocks", blocks, integer=True)
        self.image_shape = check_image_shape(image_shape)   # 3x3 convs, padding 1: no downsampling
        conv = lambda a, b: nn.Conv2d(a, b, 3, padding=1, bias=False)  # noqa: E731
        norm = lambda: nn.BatchNorm2d(width, track_running_stats=False)  # noqa: E731
        # parameters: stem conv + BN, blocks x (2 convs 3x3 + 2 BN), readout
        n = 9 * self.image_shape[0] * width + 2 * width + blocks * (18 * width ** 2 + 4 * width) + (width + 1) * d_out
        sizes = dict(image_shape=self.image_shape, d_out=d_out, width=width, blocks=blocks)
        with param_memory("ResNetCNN", sizes, n):
            self.stem, self.stem_norm = conv(self.image_shape[0], width), norm()
            self.blocks = nn.ModuleList(nn.ModuleDict({"conv1": conv(width, width), "bn1": norm(),
                                                       "conv2": conv(width, width), "bn2": norm()})
                                        for _ in range(blocks))
            self.readout = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(x.shape[0], *self.image_shape)
        h = F.relu(self.stem_norm(self.stem(x)))
        for b in self.blocks:
            h = F.relu(h + b["bn2"](b["conv2"](F.relu(b["bn1"](b["conv1"](h))))))
        return self.readout(h.mean(dim=(2, 3)))


# ---------------------------------------------------------------- 3. a tiny GPT
class CausalSelfAttention(nn.Module):
    """softmax(q k^T * scale + causal mask) v, per head, then the output projection o.

    scale = attn_mult / d (``attention="mup"``) or 1 / sqrt(d) (``"sp"``), d = width / n_head.
    """

    def __init__(self, width: int, n_head: int, attention: str = "mup", attn_mult: float = 4.0):
        super().__init__()
        if width % n_head:
            raise ValueError(f"width: expected a multiple of n_head={n_head}, got {width}")
        self.n_head, self.attention, self.attn_mult = n_head, attention, attn_mult
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, m = x.shape
        d = m // self.n_head
        heads = lambda z: z.view(n, t, self.n_head, d).transpose(1, 2)  # noqa: E731  (n, heads, t, d)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scale = self.attn_mult / d if self.attention == "mup" else 1 / math.sqrt(d)
        logits = (q @ k.transpose(-2, -1)) * scale
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        y = logits.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(n, t, m))


class TinyGPT(nn.Module):
    """Token + position embeddings -> ``n_layer`` pre-LayerNorm blocks (causal self-attention,
    then an MLP width -> 4 width -> width, GELU, each added to the residual stream) ->
    LayerNorm -> readout to the vocabulary. Input: int64 token ids (n, T), T <= ``block``;
    output: logits (n, T, vocab). ``n_head`` is fixed, so the head dimension grows with width.
    """

    def __init__(self, vocab: int = 96, width: int = 64, n_layer: int = 2, n_head: int = 4, block: int = 32,
                 attention: str = "mup", attn_mult: float = 4.0):
        super().__init__()
        for arg, v in (("vocab", vocab), ("width", width), ("n_layer", n_layer), ("n_head", n_head),
                       ("block", block)):
            check_positive(arg, v, integer=True)
        check_choice("attention", attention, ("mup", "sp"))
        if width % n_head:
            raise ValueError(f"width: expected a multiple of n_head={n_head}, got {width}")
        self.vocab, self.block = vocab, block   # ids in 0..vocab-1, sequences of at most block tokens
        # parameters per block: 2 LayerNorms, q k v o, fc (width -> 4 width), proj (4 width -> width)
        per_layer = 4 * width + 4 * (width + 1) * width + (width + 1) * 4 * width + (4 * width + 1) * width
        n = (vocab + block) * width + n_layer * per_layer + 2 * width + (width + 1) * vocab
        sizes = dict(vocab=vocab, width=width, n_layer=n_layer, n_head=n_head, block=block)
        with param_memory("TinyGPT", sizes, n):
            self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(block, width)
            self.blocks = nn.ModuleList(nn.ModuleDict({
                "ln1": nn.LayerNorm(width), "attn": CausalSelfAttention(width, n_head, attention, attn_mult),
                "ln2": nn.LayerNorm(width), "fc": nn.Linear(width, 4 * width), "proj": nn.Linear(4 * width, width),
            }) for _ in range(n_layer))
            self.norm = nn.LayerNorm(width)
            self.readout = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            h = h + b["attn"](b["ln1"](h))
            h = h + b["proj"](F.gelu(b["fc"](b["ln2"](h))))
        return self.readout(self.norm(h))


# ---------------------------------------------------------------- the three calls in one
def build(make: Callable[[int], nn.Module], width: int, base_width: int = 64, param: str = "mup",
          seed: int = 0) -> nn.Module:
    """``ml.parametrize(make(width), make(base_width), param, seed=seed)``: ``make`` builds the
    architecture at a given width (e.g. ``lambda w: TinyGPT(96, w)``). At ``width == base_width``
    a model at twice the base width tells ``parametrize`` which dimensions grow."""
    check_positive("width", width, integer=True)
    check_positive("base_width", base_width, integer=True)
    delta = make(2 * base_width) if width == base_width else None
    return parametrize(make(width), make(base_width), param=param, delta_model=delta, seed=seed)
