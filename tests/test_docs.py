"""
The documentation: docs/ builds without warnings into pages that read well,
and nothing in the repository names a file that is not there.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

import indiserv

from .codeblocks import Block, blocks as code_blocks
from .support import PACKAGE_ROOT, REQUIRE_INTEROP, child_env, run_in_own_group


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
        built = os.path.abspath(self.mktemp())
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "sphinx", "-W", "-q", "-b", "html", docs, built],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        with open(os.path.join(built, "api.html"), encoding="utf-8") as f:
            api = f.read()
        # Interfaces by name, defaults as written.
        self.assertNotIn("InterfaceClass", api)
        self.assertNotIn("134217728", api)
        self.assertIn("max_queue: int = Router.max_queue", re.sub(r"<[^>]+>", "", api))
        with open(os.path.join(built, "index.html"), encoding="utf-8") as f:
            index = f.read()
        self.assertIn(f"indiserv {indiserv.__version__} documentation", index)
        self.assertIn("&#169;2026, the indiserv developers", index)


#: Where files of this repository are named: a path under one of its
#: directories, or a Markdown file whose name is in capitals.
_PATH = re.compile(r"(?<![\w/.~-])((?:docs|tests|benchmarks|fuzz|indiserv|twisted/plugins|\.ci)/[\w./-]*[\w/])")
_UPPER_MD = re.compile(r"(?<![\w/.-])([A-Z][A-Z_]+\.md)\b")
_TEXT = (".py", ".rst", ".md", ".cfg", ".sh", ".service", ".toml", ".in", ".txt")
#: What runs make (docs/_build, benchmarks/results) and what is not ours.
_NOT_SCANNED = ("_build", "_trial_temp", "results", "build", "dist", "__pycache__")


class ReferenceTests(SynchronousTestCase):
    def test_no_stale_references(self) -> None:
        """Every file of this repository that its code, docs or scripts name exists (no notes that moved into docs/)."""
        if not os.path.isdir(os.path.join(PACKAGE_ROOT, "docs")):
            raise SkipTest("docs/ is not beside this indiserv (an installed copy)")
        stale, scanned = [], 0
        for directory, subdirectories, names in os.walk(PACKAGE_ROOT):
            subdirectories[:] = [
                d for d in subdirectories
                if (not d.startswith(".") or d == ".ci") and d not in _NOT_SCANNED and not d.endswith(".egg-info")
            ]
            for name in names:
                if not (name.endswith(_TEXT) or name == "run"):
                    continue
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                scanned += 1
                where = os.path.relpath(path, PACKAGE_ROOT)
                for found in _PATH.finditer(text):
                    named = found.group(1).rstrip("./")
                    if any(part in _NOT_SCANNED for part in named.split("/")):
                        continue
                    if not os.path.exists(os.path.join(PACKAGE_ROOT, named)):
                        stale.append(f"{where}: {named}")
                for found in _UPPER_MD.finditer(text):
                    named = found.group(1)
                    if not any(os.path.exists(os.path.join(base, named)) for base in (PACKAGE_ROOT, directory)):
                        stale.append(f"{where}: {named}")
        self.assertGreater(scanned, 50)
        self.assertEqual(stale, [])


class CodeBlockTests(TestCase):
    """Every code block of README.md and docs/ runs as written (see tests/codeblocks.py)."""

    timeout = 120

    def test_every_block_classified(self) -> None:
        """Each block is shell, Python or text, so that none escapes the checks below."""
        found = list(code_blocks(PACKAGE_ROOT))
        self.assertGreater(len(found), 20)
        self.assertEqual([f"{b.path}:{b.line} {b.language!r}" for b in found if b.language not in ("sh", "python", "text")], [])


def _block_test(block: Block):
    @defer.inlineCallbacks
    def test(self: TestCase):
        out, err, code = yield run_in_own_group(
            self, [sys.executable, "-m", "tests.codeblocks", block.path, str(block.line)],
            env=child_env(), path=PACKAGE_ROOT,
        )
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))

    how = "is checked for syntax" if block.marked else "runs as written"
    test.__doc__ = f"The {block.language} block at {block.path}:{block.line} {how}."
    return test


def _add_block_tests() -> None:
    if not os.path.isdir(os.path.join(PACKAGE_ROOT, "docs")):
        return  # an installed copy, without its docs
    for block in code_blocks(PACKAGE_ROOT):
        if block.language == "text" or _TEST_COMMAND in block.text:
            continue  # not code; the test command itself is what .ci/run runs
        name = re.sub(r"\W+", "_", f"test_{block.path}_{block.line}")
        setattr(CodeBlockTests, name, _block_test(block))


#: README's test command: the block .ci/run runs.
_TEST_COMMAND = "python -m twisted.trial tests"
_add_block_tests()
