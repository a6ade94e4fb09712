"""Sphinx configuration for the indiserv documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import indiserv  # noqa: E402

project = "indiserv"
author = "the indiserv developers"
copyright = "2026, the indiserv developers (LGPL-2.1-or-later)"
version = release = indiserv.__version__
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
# Defaults as written in the source (128 * MiB), not as evaluated.
autodoc_preserve_defaults = True
exclude_patterns = ["_build"]
html_theme = "alabaster"

# The code's docstrings use Twisted's epytext markup; turn its fields and
# inline markup into reStructuredText for autodoc.
import re

_FIELD = re.compile(r"^(\s*)@(ivar|param|type|return|returns|raise|rtype)\b")
_INLINE = re.compile(r"[LCIB]\{([^}]*)\}")


def _epytext_to_rst(app, what, name, obj, options, lines):
    for index, line in enumerate(lines):
        line = _FIELD.sub(lambda m: f"{m.group(1)}:{'raises' if m.group(2) == 'raise' else m.group(2)}", line)
        lines[index] = _INLINE.sub(r"``\1``", line)


# zope.interface interfaces are not classes: signatures would show them as
# their repr, <InterfaceClass twisted.internet.interfaces.IReactorTime>.
_INTERFACE = re.compile(r"<InterfaceClass (?:[\w]+\.)*(\w+)>")


def _interfaces_by_name(app, what, name, obj, options, signature, return_annotation):
    if signature is not None:
        signature = _INTERFACE.sub(r"\1", signature)
    if return_annotation is not None:
        return_annotation = _INTERFACE.sub(r"\1", return_annotation)
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-docstring", _epytext_to_rst)
    app.connect("autodoc-process-signature", _interfaces_by_name)
