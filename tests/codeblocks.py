"""
The code blocks of README.md and docs/, and how a reader would run each.

tests/test_docs.py runs every block through this module, one process per
block (C{python -m tests.codeblocks FILE LINE}):

* a block whose first line is C{# checked, not run: WHY} (it needs root,
  other machines, certificates, minutes) is only checked for syntax: shell
  with C{bash -n}, Python with C{compile};
* a Python block runs as a program (a C{.tac}, one that makes an
  C{Application}, under C{twistd -ny}); one that starts a server must
  answer a C{getProperties} and stop on Ctrl-C (SIGINT);
* a shell block runs line by line: servers (C{twistd -n}, C{indiserv}) in
  the background until they answer, everything else to its end with status
  0; a block of clients alone gets a server with the demo driver to talk to;
* C{text} blocks (logs, tables, diagrams) are not code.

The test, not the reader, substitutes free ports for 7624 and 7625, a
directory of its own for C{/tmp/indiFIFO}, and a local socket of its own for
the C{indiserv} command (never indiserver's default); C{pip install} steps
are taken as done (the tests run installed).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "# checked, not run:"
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
#: Seconds a server may take to answer, and a command to end.
SERVER_WAIT = 30.0
COMMAND_WAIT = 60.0


@dataclass
class Block:
    path: str  # relative to the repository
    line: int
    language: str
    text: str

    @property
    def marked(self) -> bool:
        return self.text.lstrip().startswith(MARK)


def blocks(root: str = ROOT) -> Iterator[Block]:
    """Every code block of README.md and docs/*.rst, in order."""
    readme = os.path.join(root, "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for found in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        yield Block("README.md", text.count("\n", 0, found.start()) + 1, found.group(1), found.group(2))
    docs = os.path.join(root, "docs")
    for name in sorted(os.listdir(docs)):
        if name.endswith(".rst"):
            yield from _rst_blocks(os.path.join(docs, name), f"docs/{name}")


def _rst_blocks(path: str, where: str) -> Iterator[Block]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for index, line in enumerate(lines):
        directive = re.match(r"^(\s*)\.\. code-block:: (\w+)\s*$", line)
        if directive is None:
            continue
        indent = len(directive.group(1))
        body: list[str] = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        text = "\n".join(body).strip("\n")
        # Python's textwrap.dedent, without importing it for one call.
        margin = min((len(b) - len(b.lstrip()) for b in text.split("\n") if b.strip()), default=0)
        text = "\n".join(b[margin:] for b in text.split("\n")) + "\n"
        yield Block(where, index + 1, directive.group(2), text)


# -- running a block ------------------------------------------------------------


class Failed(Exception):
    """The block does not do what it says."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Reader:
    """What a reader does with a block: in a directory of its own, on free ports."""

    def __init__(self, block: Block, workdir: str):
        self.block = block
        self.workdir = workdir
        self.ports = {"7624": str(free_port()), "7625": str(free_port())}
        self.servers: list[tuple[subprocess.Popen, str]] = []
        self.env = dict(os.environ, HOME=workdir)
        # twistd, indiserv and indiserv-simulator as installed beside this Python.
        self.env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
        self.sockets = 0

    def substitute(self, text: str) -> str:
        for written, port in self.ports.items():
            text = re.sub(rf"\b{written}\b", port, text)
        return text.replace("/tmp/indiFIFO", os.path.join(self.workdir, "indiFIFO"))

    def check(self) -> None:
        block = self.block
        if block.marked:
            if block.language == "sh":
                self.run(["bash", "-n"], stdin=block.text)
            else:
                compile(block.text, f"{block.path}:{block.line}", "exec")
            return
        try:
            if block.language == "python":
                self.python(self.substitute(block.text))
            elif block.language == "sh":
                self.shell(self.substitute(block.text))
            else:
                raise Failed(f"a {block.language!r} block: mark it, or say text")
        finally:
            self.stop_servers()

    # Python ----------------------------------------------------------------

    def python(self, code: str) -> None:
        if "Application(" in code:
            path = os.path.join(self.workdir, "example.tac")
            argv = [sys.executable, "-c", TWISTD, "-ny", path, "--pidfile="]
            ctrl_c = signal.SIGTERM
        else:
            path = os.path.join(self.workdir, "example.py")
            argv = [sys.executable, path]
            ctrl_c = signal.SIGINT
        with open(path, "w") as f:
            f.write(code)
        process, log = self.start(argv)
        port = self.ports["7624"] if self.ports["7624"] in code else None
        if port is None or not self.answers(process, int(port)):
            code = self.wait(process, log)
            if code != 0:
                raise Failed(f"exit status {code}:\n{self.output(log)}")
            return
        self.servers.remove((process, log))
        self.stop(process, log, ctrl_c)

    # shell -------------------------------------------------------------------

    def shell(self, script: str) -> None:
        commands = list(_commands(script))
        if not any(_is_server(c) for c in commands):
            # Clients alone: a server with the demo driver to talk to.
            self.serve(f"twistd -n --pidfile= indiserver --port {self.ports['7624']}"
                       " indiserv-simulator indi_simulator_telescope")
        for command in commands:
            if _is_server(command):
                self.serve(command)
            else:
                self.run(["bash", "-c", self.aimed(command)])

    def aimed(self, command: str) -> str:
        """indilib's tools, which default to port 7624, told the substituted one."""
        words = command.split(" ", 1)
        if words[0] in ("indi_getprop", "indi_setprop", "indi_eval") and " -p " not in f" {command} ":
            return f"{words[0]} -p {self.ports['7624']} {words[1] if len(words) > 1 else ''}"
        return command

    def serve(self, command: str) -> None:
        words = shlex.split(command)
        if words[0] == "indiserv" and "-u" not in words:
            self.sockets += 1
            words[1:1] = ["-u", f"/tmp/indiserv-docs-{os.getpid()}-{self.sockets}"]
        process, log = self.start(["bash", "-c", " ".join(shlex.quote(w) for w in words)])
        port = _port_of(words)
        if not self.answers(process, port):
            raise Failed(f"{command!r} never answered on port {port}:\n{self.output(log)}")

    # processes -----------------------------------------------------------------

    def start(self, argv: list[str]) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.workdir, f"output-{len(self.servers)}-{time.monotonic_ns()}")
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append((process, log))
        return process, log

    def answers(self, process: subprocess.Popen, port: int) -> bool:
        """Whether a server on C{port} comes up and answers a getProperties, while C{process} runs."""
        deadline = time.monotonic() + SERVER_WAIT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"<getProperties version='1.7'/>")
                    return bool(s.recv(1))
            except OSError:
                time.sleep(0.1)  # the program is still starting: nothing to wait on but the port
        return False

    def run(self, argv: list[str], stdin: str | None = None) -> None:
        done = subprocess.run(argv, cwd=self.workdir, env=self.env, input=stdin, text=True,
                              capture_output=True, timeout=COMMAND_WAIT)
        if done.returncode != 0:
            raise Failed(f"{argv[-1]!r}: exit status {done.returncode}:\n{done.stdout}{done.stderr}")

    def wait(self, process: subprocess.Popen, log: str) -> int:
        try:
            return process.wait(COMMAND_WAIT)
        finally:
            self.servers.remove((process, log))

    def stop(self, process: subprocess.Popen, log: str, how: int = signal.SIGINT) -> None:
        """Ctrl-C (or SIGTERM): it must stop within the wait, without a traceback."""
        os.killpg(process.pid, how)
        try:
            process.wait(SERVER_WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise Failed(f"did not stop on signal {how}:\n{self.output(log)}")
        output = self.output(log)
        # asyncio.run() ends a Ctrl-C with KeyboardInterrupt, as it always does.
        if "Traceback" in output and not output.rstrip().endswith("KeyboardInterrupt"):
            raise Failed(f"a traceback on stopping:\n{output}")

    def stop_servers(self) -> None:
        while self.servers:
            process, log = self.servers.pop()
            if process.poll() is None:
                self.stop(process, log)

    def output(self, log: str) -> str:
        with open(log, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]


def _commands(script: str) -> Iterator[str]:
    """The commands of a shell block, one a line, without comments or pip installs."""
    for line in script.replace("\\\n", " ").split("\n"):
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split(" && "):
            if not part.startswith("pip install"):
                yield part


def _is_server(command: str) -> bool:
    words = shlex.split(command)
    if not words:
        return False
    if words[0] == "twistd" and "-n" in words:
        return True
    return words[0] == "indiserv" and not {"-h", "--help", "--version"} & set(words)


def _port_of(words: list[str]) -> int:
    for option in ("--port", "-p"):
        if option in words:
            return int(words[words.index(option) + 1].rsplit(":", 1)[-1])
    return 7624


def main(argv: list[str]) -> int:
    path, line = argv[1], int(argv[2])
    (block,) = [b for b in blocks() if b.path == path and b.line == line]
    with tempfile.TemporaryDirectory(prefix="indiserv-docs-") as workdir:
        try:
            Reader(block, workdir).check()
        except (Failed, subprocess.TimeoutExpired, SyntaxError) as e:
            print(f"{path}:{line}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
