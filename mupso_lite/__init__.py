"""mupso_lite: width-scaled (muP) second-order optimization, small enough to read.

    import mupso_lite as ml
    ml.scaling_table()
    model = ml.MLP(d_in=64, d_out=10, width=1024, depth=3, base_width=64, param="mup", optimizer="kfac")
    opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=1e-3, param="mup")
    for record in ml.train(model, opt, ml.datasets.digits(), steps=200): ...
"""
from . import data as datasets
from .losses import cross_entropy, half_mse
from .models import CNN, MLP, init_weights, layer_roles, tag_roles
from .optim import KFAC, Shampoo, make_optimizer
from .scaling import ROLES, Rule, layer_scales, rule, scaling_table
from .coord import CoordCheck, coord_check, fit_slope
from .train import FeatureProbe, evaluate, resolve_device, run, train

__version__ = "0.1.0"

__all__ = ["CNN", "CoordCheck", "coord_check", "fit_slope", "FeatureProbe", "KFAC", "MLP", "ROLES", "Rule", "Shampoo", "cross_entropy", "datasets",
           "evaluate", "half_mse", "init_weights", "layer_roles", "layer_scales", "make_optimizer",
           "resolve_device", "rule", "run", "scaling_table", "tag_roles", "train"]
from . import plots
from .sweep import load_results, sweep

__all__ += ["load_results", "plots", "sweep"]
