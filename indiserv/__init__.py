"""
indiserv: an INDI server on Twisted.

INDI (Instrument Neutral Distributed Interface) is how astronomy software
talks to telescopes, cameras, focusers and domes.  indiserv routes INDI
messages between drivers and clients, as indilib's indiserver does.
"""

from indiserv.service import IndiServer

__all__ = ["IndiServer", "__version__"]

__version__ = "0.1.0"
