"""The package version (one place: the package, the results files and pyproject.toml agree)."""
__version__ = "0.1.0"
