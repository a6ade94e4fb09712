"""
The Sphinx documentation in docs/ builds without warnings.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from .support import PACKAGE_ROOT, REQUIRE_INTEROP


class DocsTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_docs_build(self):
        """sphinx-build -W turns docs/ into HTML with no warning."""
        try:
            import sphinx  # noqa: F401
        except ImportError:
            if REQUIRE_INTEROP:
                raise AssertionError("CI must install sphinx (the test extra)")
            raise SkipTest("needs sphinx (pip install '.[test]')")
        docs = os.path.join(PACKAGE_ROOT, "docs")
        if not os.path.isdir(docs):
            raise SkipTest("docs/ is not beside this indiserv (an installed copy)")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "sphinx", "-W", "-q", "-b", "html", docs, os.path.abspath(self.mktemp())],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
