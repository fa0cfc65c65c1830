"""keygate: a reverse-proxy API-key authentication gateway.

The distribution installs one import name, ``keygate``, whose subpackages are
the repository's top-level folders: ``keygate.gateway`` (``gateway/``: the
proxy, its stores, services and CLI), ``keygate.admin`` (``admin/``: the admin
sub-app) and ``keygate.config`` (``config/``: typed settings and their
loading). docs/architecture.md draws the tree.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keygate")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
