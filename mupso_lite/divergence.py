"""What "diverged" means, in one place: ``train``, sweeps, the CLI and the dashboard all use it.

A run has **diverged** at step k when

* its training loss is not finite (NaN or Inf), or a feature change is not finite; or
* its training loss has stayed above ``factor`` × the starting loss L0 for ``patience``
  consecutive steps (L0: the loss of the first batch, before any update).

The second rule catches the blow-ups that stay finite: an lr of 100 on digits takes the
cross-entropy from 2.3 to 90 ... 4e8 without ever producing a NaN. The defaults, 10× for
5 steps, leave room for the noisy early steps of a healthy run (its loss stays near or
below L0: a 10-class cross-entropy starts at about log 10 = 2.3 and a loss of 23 means
confidently wrong predictions on most of the batch), and catch a blow-up within a few
steps of its start. Pass ``divergence=DivergenceRule(factor, patience)`` to ``ml.train``
to change them, or ``divergence=None`` to flag only non-finite losses.

A run that has not diverged but whose loss rose above ``spike`` × L0 (3× by default) at
some step (the step of its highest loss) is **unstable**: it may recover, but it often ends far worse than a stable run
(K-FAC on digits at width 256, lr 0.1, damping 1e-4: the loss spiked from 2.4 to 25 at
step 6 and the run ended at test accuracy 0.46, against 0.97 at damping 0.1). Healthy runs
on digits stay below 2× their start. ``train`` then carries a ``warning`` on every later
record, with the same hint as a divergence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

HINT_SECOND_ORDER = "raise the damping or lower the learning rate"
HINT_FIRST_ORDER = "lower the learning rate"
HINT_SOAP = "raise the damping (SOAP's eps) or lower the learning rate"
# by optimizer name, for records that carry a name but no hint (Muon: no damping, its step has norm lr)
HINTS = {"sgd": HINT_FIRST_ORDER, "adam": HINT_FIRST_ORDER, "muon": HINT_FIRST_ORDER, "kfac": HINT_SECOND_ORDER,
         "foof": HINT_SECOND_ORDER, "shampoo": HINT_SECOND_ORDER, "soap": HINT_SOAP}


@dataclass
class DivergenceRule:
    """Tracks one run's losses; ``check(step, loss)`` returns a message once it has diverged."""

    factor: float = 10.0
    patience: int = 5
    spike: float = 3.0
    start_loss: float | None = field(default=None, init=False)
    _above: int = field(default=0, init=False, repr=False)
    _peak: tuple[float, int] | None = field(default=None, init=False, repr=False)   # (loss, step)

    def __post_init__(self):
        from .checks import check_positive
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) \
                or math.isnan(self.factor) or self.factor <= 1:
            raise ValueError(f"divergence.factor: expected a number > 1 (inf: only non-finite losses "
                             f"diverge), got {self.factor!r}")
        check_positive("divergence.patience", self.patience, integer=True)
        if isinstance(self.spike, bool) or not isinstance(self.spike, (int, float)) \
                or math.isnan(self.spike) or self.spike <= 1:
            raise ValueError(f"divergence.spike: expected a number > 1 (inf: never warn), got {self.spike!r}")

    def check(self, step: int, loss: float) -> str | None:
        """None while the run is healthy; a one-line message at the step it diverges."""
        if not math.isfinite(loss):
            return f"diverged at step {step}: the loss is {loss}"
        if self.start_loss is None:
            self.start_loss = loss
        if self._peak is None or loss > self._peak[0]:
            self._peak = (loss, step)
        limit = self.factor * self.start_loss
        self._above = self._above + 1 if loss > limit and loss > 0 else 0
        if self._above >= self.patience:
            rise = loss / self.start_loss if self.start_loss > 0 else math.inf
            return (f"diverged at step {step}: the loss rose {format_factor(rise)}, from {self.start_loss:.3g} to "
                    f"{loss:.3g}, and stayed above {format_factor(self.factor)} its start for {self.patience} steps")
        return None

    @property
    def warning(self) -> str:
        """"" while the loss has stayed below ``spike`` × its start; else what happened."""
        if self._peak is None or not self.start_loss or self.start_loss <= 0:
            return ""
        peak, step = self._peak
        if peak <= self.spike * self.start_loss:
            return ""
        return (f"unstable: the loss spiked {format_factor(peak / self.start_loss)}, from {self.start_loss:.3g} "
                f"to {peak:.3g} at step {step}")

    @property
    def peak_step(self) -> int | None:
        """The step of the highest loss so far (the step the warning names); None before the first."""
        return None if self._peak is None else self._peak[1]


def format_factor(factor: float) -> str:
    """A factor as the messages write it: at most 3 significant digits, no exponent, and the ×
    sign: 1089.7 -> "1090×", 29.71 -> "29.7×", 6.0 -> "6×" (inf -> "inf×")."""
    if not math.isfinite(factor):
        return f"{factor}×"
    if factor == 0:
        return "0×"
    decimals = 2 - math.floor(math.log10(abs(factor)))
    rounded = round(factor, decimals)
    if decimals <= 0:
        return f"{int(rounded)}×"
    return f"{rounded:.{decimals}f}".rstrip("0").rstrip(".") + "×"


def hint_for(optimizer) -> str:
    """What to change after a divergence: K-FAC, FOOF and Shampoo (or any optimizer whose groups
    carry a damping) get both knobs, SOAP its eps (the ``damping`` of ``make_optimizer``) and the
    learning rate; first-order optimizers and Muon (no damping) get the learning rate."""
    from .optim import KFAC, SOAP, Muon, Shampoo   # local: the optimizers do not need this module
    if isinstance(optimizer, SOAP):
        return HINT_SOAP
    if isinstance(optimizer, Muon):
        return HINT_FIRST_ORDER
    groups = getattr(optimizer, "param_groups", None) or []
    damped = isinstance(optimizer, (KFAC, Shampoo)) or any("damping" in g for g in groups)
    return HINT_SECOND_ORDER if damped else HINT_FIRST_ORDER


def hint_for_name(name) -> str:
    """The hint of the optimizer called ``name`` ("kfac", "soap", ...): a results file's row
    written before hints existed; an unknown name gets the learning rate."""
    return HINTS.get(name, HINT_FIRST_ORDER)
