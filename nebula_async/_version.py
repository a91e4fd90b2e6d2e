"""The distribution's version, written here once: pyproject.toml reads it (hatch's dynamic version)."""

__version__ = "0.1.0"
