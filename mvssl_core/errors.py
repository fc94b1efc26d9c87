"""The configuration error, in a module of its own: :mod:`mvssl_core.config` raises it (and exports it as
``mvssl_core.config.ConfigError``), and so do modules below it, such as :mod:`mvssl_core.dist` (a bad
``MVSSL_DIST_TIMEOUT_S``, device or precision), which must not import :mod:`mvssl_core.config`: the
configuration checks its method names against :mod:`mvssl_core.methods`, whose losses import
:mod:`mvssl_core.dist`, and the package has no import circle (``tests/test_import_graph.py``).
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration key or value that is unknown, of the wrong type, or out of range."""
