"""keygate: a reverse-proxy API-key authentication gateway (the proxy side)."""

__version__ = "0.1.0"
