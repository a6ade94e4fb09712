"""Sphinx configuration for the indiserv documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "indiserv"
author = "the indiserv developers"
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
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


def setup(app):
    app.connect("autodoc-process-docstring", _epytext_to_rst)
