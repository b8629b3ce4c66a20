"""Coordinate check on the teacher task against the theory's width exponents.

Widths 64..2048, 3 seeds, steps 1..3, base width 64. muP: the slope of log feature change
against log width is ~0 in every layer for SGD, Adam, K-FAC and Shampoo. SP with a fixed lr:
features and outputs grow with width. K-FAC with unscaled damping: features freeze.
The bounds are the theory's predictions with a margin for 3 seeds, not fitted to pass.
"""
import pytest

import mupso_lite as ml
from mupso_lite.coord import STABLE   # the one width-stability threshold (README, verdicts)

WIDTHS = (64, 128, 256, 512, 1024, 2048)
DATA = ml.datasets.teacher()


def check(param, optimizer, lr, damping=None, **options):
    def model_fn(width, seed=0):
        return ml.MLP(DATA.d_in, DATA.d_out, width, depth=3, base_width=64, param=param, seed=seed)
    cc = ml.coord_check(model_fn, optimizer, param, widths=WIDTHS, steps=3, seeds=(0, 1, 2), data=DATA,
                        lr=lr, damping=damping, device="cpu", **options)
    return {step: cc.slopes_by_role(step) for step in (1, 2, 3)}


@pytest.mark.parametrize("optimizer, lr, damping", [
    ("sgd", 0.5, None), ("adam", 0.01, None), ("kfac", 0.1, 0.1), ("shampoo", 0.1, 1e-4)])
def test_mup_feature_change_is_width_stable(optimizer, lr, damping):
    slopes = check("mup", optimizer, lr, damping)
    for step, by_role in slopes.items():
        for role in ("input", "hidden", "output", "f"):
            assert abs(by_role[role]) < STABLE, (step, role, by_role)


def test_sp_with_fixed_lr_blows_up_with_width():
    slopes = check("sp", "sgd", 0.5)
    for by_role in slopes.values():
        assert by_role["output"] > 0.5 and by_role["hidden"] > 0.2, by_role   # theory: output ~ M^1


def test_kfac_with_unscaled_damping_freezes_features():
    slopes = check("mup", "kfac", 0.1, 0.1, damping_mode="fixed")
    # one step: rho_B fixed while |delta|^2 ~ 1/M => K-FAC degrades to FOOF, delta h ~ 1/M
    assert slopes[1]["input"] < -0.5 and slopes[1]["hidden"] < -0.5, slopes[1]


def test_trace_rescaled_damping_is_width_stable_and_pi_freezes_the_input_layer():
    trace = check("mup", "kfac", 0.1, 0.1, damping_mode="trace")
    assert all(abs(v) < STABLE for v in trace[1].values()), trace[1]
    pi = check("mup", "kfac", 0.1, 0.1, damping_mode="pi")
    assert pi[1]["input"] < -0.5 and abs(pi[1]["hidden"]) < STABLE, pi[1]
