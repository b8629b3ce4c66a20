"""Coordinate checks beyond the MLP: a CNN with K-FAC, and FOOF on the MLP (step 1).

One-step theory (Ishikawa & Karakida 2024): with muP's table every layer's feature change is
Theta(1) in the width (slope 0). SP K-FAC with a fixed damping: dh ~ -lr delta, and SP's
delta is M^-1/2 per entry below the readout, so the input and hidden slopes are -1/2; SP FOOF
(dW = -lr G (A + rho I)^-1) gives the same -1/2. At these small widths the muP slopes measured
within +-0.14 (scripts/exp_cnn.py finds the CNN flat from 64 to 256 channels), the SP ones at
-0.40 to -0.66 (input, hidden).
"""
from functools import lru_cache

import mupso_lite as ml

DIGITS = ml.datasets.digits()
TEACHER = ml.datasets.teacher(n_train=256, n_test=64)


@lru_cache(maxsize=None)
def cnn_kfac_slopes(param):
    """Step-1 slopes of the CNN (channels 16..128) under K-FAC, table damping rho 0.1, lr 0.1."""
    cc = ml.coord_check(lambda w, seed=0: ml.CNN(DIGITS.image_shape, DIGITS.d_out, w, 3, base_width=16,
                                                 param=param, seed=seed),
                        "kfac", param, widths=(16, 32, 64, 128), steps=(1,), seeds=(0, 1), data=DIGITS,
                        lr=0.1, damping=0.1, device="cpu", damping_mode="table", inverse_interval=1)
    assert not cc.diverged
    return cc.slopes_by_role(1)


def test_mup_cnn_kfac_feature_change_is_flat_in_the_channels():
    s = cnn_kfac_slopes("mup")   # measured -0.12 / -0.08 / -0.14
    assert abs(s["hidden"]) < 0.15, s
    assert abs(s["input"]) < 0.2 and abs(s["output"]) < 0.2, s


def test_sp_cnn_kfac_freezes_the_input_and_hidden_layers():
    sp, mup = cnn_kfac_slopes("sp"), cnn_kfac_slopes("mup")   # SP measured -0.66 / -0.40 / -0.06
    assert sp["input"] < -0.4 and sp["hidden"] < -0.25, sp
    assert sp["input"] < mup["input"] - 0.3 and sp["hidden"] < mup["hidden"] - 0.2, (sp, mup)


def foof_slopes(param):
    cc = ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, 3, base_width=32, param=param, seed=seed),
                        "foof", param, widths=(32, 64, 128, 256), steps=(1,), seeds=(0, 1), data=TEACHER,
                        lr=0.1, damping=0.01, device="cpu")
    assert not cc.diverged
    return cc.slopes_by_role(1)


def test_mup_foof_is_flat_and_sp_foof_freezes():
    mup = foof_slopes("mup")   # measured -0.08 / -0.03 / -0.00
    for role in ("input", "hidden", "output"):
        assert abs(mup[role]) < 0.15, mup
    sp = foof_slopes("sp")     # measured -0.58 / -0.50 / +0.05
    assert sp["input"] < -0.3 and sp["hidden"] < -0.3, sp
