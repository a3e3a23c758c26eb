"""disco: Dead Simple COnfiguration management for Linux."""

__version__ = "0.1.0"
