"""mupso_lite: width-scaled (muP) second-order optimization, small enough to read.

    import mupso_lite as ml
    ml.scaling_table()
    model = ml.MLP(d_in=64, d_out=10, width=1024, depth=3, base_width=64, param="mup")
    opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=0.1, param="mup")
    for record in ml.train(model, opt, ml.datasets.digits(), steps=200): ...

Imports flow one way, down this list: a module imports only from the lines above it and from
what comes before it on its own line (in parentheses: the helpers of the module before them).

    checks, losses, data (safe_pickle), version       nothing else of the package
    roles -> scaling                                   layer roles, then the exponent table
    models -> parametrize, optim (build, kfac, shampoo, muon, soap; capture, linalg, checkpoint)
    divergence -> train                                the training loop
    coord, sweep (results, executors)                  experiments
    dashboard (dashboard_runs, live), cli (plots)      on top: nothing below imports them

The one exception: executors imports the package only to hand its folder to Ray's workers.
The dashboard draws its own live figures (live.py); plots makes the figures of coordinate
checks and sweeps for the CLI and the notebooks. This module imports ``ml.Dashboard`` and
``ml.plots`` on first use only, so sweep workers never load widgets or plotly.
"""
from . import data as datasets
from .coord import CoordCheck, coord_check, fit_slope, theory_slopes
from .divergence import DivergenceRule
from .losses import cross_entropy, half_mse
from .models import CNN, MLP, init_weights, layer_roles, tag_roles
from .optim import KFAC, SOAP, MuAdam, MuSGD, Muon, Shampoo, make_optimizer
from .parametrize import parametrize
from .scaling import ROLES, Rule, layer_scales, rule, scaling_table
from .sweep import load_results, sweep
from .train import FeatureProbe, evaluate, resolve_device, run, train
from .version import __version__

__all__ = ["CNN", "CoordCheck", "Dashboard", "DivergenceRule", "FeatureProbe", "KFAC", "MLP", "MuAdam", "MuSGD", "Muon", "ROLES", "Rule",
           "SOAP", "Shampoo",
           "coord_check", "cross_entropy", "datasets", "evaluate", "fit_slope", "half_mse", "init_weights",
           "layer_roles", "layer_scales", "load_results", "make_optimizer", "parametrize", "plots", "resolve_device", "rule",
           "run", "scaling_table", "sweep", "tag_roles", "theory_slopes", "train"]


def __getattr__(name):
    """Import the plotting and widget layers only when asked for (sweep workers never need them)."""
    import importlib
    if name == "plots":
        return importlib.import_module(".plots", __name__)
    if name == "Dashboard":
        return importlib.import_module(".dashboard", __name__).Dashboard
    raise AttributeError(f"module 'mupso_lite' has no attribute {name!r}")
