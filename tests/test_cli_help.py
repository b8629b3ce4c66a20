"""mupso-lite --help: every subcommand shows its defaults and explains --plotlyjs."""
import pytest

from mupso_lite import plots
from mupso_lite.cli import PLOTLYJS, main


def help_of(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # the text as one line, wherever argparse wraps it


@pytest.mark.parametrize("command, shown", [
    ("coord-check", ["--optimizer {sgd,adam,kfac,shampoo,foof,muon,soap} optimizer (default: kfac)",
                     "parametrization (default: mup)", "(default: 64,128,256,512,1024)",
                     "steps at which to record (default: 1,3)", "seeds, comma-separated (default: 0,1)",
                     "dataset (default: teacher)", "(default: 0.1)", "base damping (default: the optimizer's)",
                     "number of weight layers (default: 3)", "output folder (default: results/coord)",
                     "(default: inline)", "--no-progress no progress bar"]),
    ("sweep", ["(default: 64, or what --grid sets)", "(default: 0.1, or what --grid sets)",
               "(default: kfac, or what --grid sets)", "(default: mup, or what --grid sets)",
               "(default: 0, or what --grid sets)", "(default: digits, or what --grid sets)",
               "training steps per run (default: 100)", "batch size (default: 64)",
               "(default: results/sweep.jsonl)", "(default: local)", "parallel runs (default: CPU count)"]),
    ("report", ["output folder (default: results/report)", "(default: inline)"]),
])
def test_help_shows_the_defaults(command, shown, capsys):
    text = help_of(command, capsys)
    for piece in shown:
        assert piece in text, piece
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("command", ["coord-check", "report"])
def test_help_explains_each_plotlyjs_choice(command, capsys):
    text = help_of(command, capsys)
    assert "--plotlyjs {inline,cdn,directory}" in text
    for piece in ("'inline' puts it inside every file (~4.8 MB each, opens offline)",
                  "'directory' writes one shared plotly.min.js next to the HTML files",
                  "'cdn' makes small files that load plotly.js from the internet"):
        assert piece in text, piece


def test_the_cli_offers_what_save_html_accepts():
    assert PLOTLYJS == plots.PLOTLYJS and PLOTLYJS[0] == "inline"
