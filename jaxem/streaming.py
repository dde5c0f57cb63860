"""Data that does not fit in memory: out-of-core exact EM and online (stepwise) EM.

The drivers live in :mod:`jaxem.drivers.stream` and :mod:`jaxem.drivers.online`, the online kernel
in :mod:`jaxem.core.online`; this module gathers their public names.
"""

from jaxem.core.online import OnlineEM, OnlineState
from jaxem.drivers.online import fit_online
from jaxem.drivers.stream import fit_stream

__all__ = ["OnlineEM", "OnlineState", "fit_online", "fit_stream"]
