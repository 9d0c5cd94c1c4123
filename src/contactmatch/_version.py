"""Single source of the package version (read by hatchling and ``contactmatch.__version__``)."""

__version__ = "0.3.0"
