"""oklog: a coordination-free, grep-style log cluster."""

__version__ = "0.1.0"
