"""
indiserv: an INDI server on Twisted.

INDI (Instrument Neutral Distributed Interface) is how astronomy software
talks to telescopes, cameras, focusers and domes.  indiserv routes INDI
messages between drivers and clients, as indilib's indiserver does.
"""

# First: the modules imported below read it while this one is being imported.
__version__ = "0.1.0"

from indiserv.service import IndiServer  # noqa: E402

__all__ = ["IndiServer", "__version__"]
