"""mvssl_core: entropy and reconstruction in multi-view self-supervised learning.

Exact estimators (``special``, ``entropy``), reconstruction terms and MI bounds (``reconstruction``,
``bounds``), distributions with known mutual information (``synthetic``) and the distributed
primitive (``dist``). Every entropy, bound and log-likelihood is in nats.
"""

__version__ = "0.1.0"
