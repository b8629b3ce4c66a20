"""``pytest`` runs the notebooks in this folder through nbval (``--nbval-lax``: every cell must run
without error; each notebook's Checks cell asserts its lesson's claims) at their small sizes:
``MUPSO_SIZE=ci``, which each notebook's ``parameters`` cell reads. Set ``MUPSO_SIZE=class`` to
run them at the lesson sizes instead (minutes per notebook)."""
import os

os.environ.setdefault("MUPSO_SIZE", "ci")
