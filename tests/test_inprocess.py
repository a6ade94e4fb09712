"""
Tests for L{indiserv.inprocess}: Twisted-native in-process drivers, and
indipydriver IPyDriver objects served in process on the asyncio reactor.

trial runs on its default reactor, so IPyDriver servers run here as real
programs (C{asyncio.run(server.asyncrun())}, or twistd with the asyncio
reactor), read and set by real clients: indi_getprop, indi_setprop,
indipyclient and the test's own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from indiserv import IndiServer, wire
from indiserv.inprocess import IInProcessDriver, InProcessLink, IPyDriverAdapter, WrongReactor
from indiserv.router import Router
from indiserv.service import Milestone
from indiserv.simulator import DEVICE, Simulator

from .ipydrivers import CAMERA, FRAME, FRAME_WATCHER, THERMOSTAT, WATCHER, camera, thermostat
from .support import (
    GET_ALL,
    LISTENING,
    PACKAGE_ROOT,
    child_env,
    attached_client,
    child_processes,
    client_of,
    load_example,
    require_programs,
    serve,
)
from .test_tap import TWISTD, _Collect

TELESCOPE = "Telescope Simulator"
TELESCOPE_PROGRAM = "indi_simulator_telescope"


@implementer(IInProcessDriver)
class Recorder:
    """An in-process driver that snoops everything and keeps what it is sent."""

    name = "recorder"

    def __init__(self, output: bytes = b"<getProperties version='1.7'/>", ended=None):
        self.output = output
        self.ended = ended
        self.received: list[wire.Message] = []
        self.stopped = False

    def start(self, send):
        self.send = send
        send(self.output)
        return self.ended

    def messageReceived(self, message):
        self.received.append(message)

    def stop(self):
        self.stopped = True


class TwistedNativeTests(TestCase):
    """IInProcessDriver objects, served on any reactor."""

    timeout = 30

    def test_simulator_provides_interface(self):
        """The bundled simulator device is an in-process driver."""
        verifyObject(IInProcessDriver, Simulator())

    @defer.inlineCallbacks
    def test_simulator_served_in_process(self):
        """IndiServer(Simulator()) serves its definitions and answers a client's new*Vector."""
        server = yield serve(self, inprocess=[Simulator()])
        client = yield client_of(self, server)
        yield client.wait_for(lambda m: m.tag == "defNumberVector" and m.name == "TEMPERATURE")
        client.say(
            f"<newNumberVector device='{DEVICE}' name='TEMPERATURE'>"
            "<oneNumber name='TEMPERATURE'>-5</oneNumber></newNumberVector>".encode()
        )
        update = yield client.wait_for(lambda m: m.tag == "setNumberVector")
        self.assertIn(b">-5.0<", update.raw)

    @defer.inlineCallbacks
    def test_in_process_driver_snoops_executable_driver(self):
        """An in-process driver that asked for every property gets an executable driver's updates."""
        recorder = Recorder()
        server = yield serve(self, [sys.executable, "-m", "indiserv.simulator"], inprocess=[recorder])
        client = yield client_of(self, server)
        yield client.wait_for(lambda m: m.tag == "defSwitchVector" and m.name == "CONNECTION")
        client.say(
            f"<newSwitchVector device='{DEVICE}' name='CONNECTION'>"
            "<oneSwitch name='CONNECT'>On</oneSwitch></newSwitchVector>".encode()
        )
        yield client.wait_for(lambda m: m.tag == "setSwitchVector" and m.name == "CONNECTION")
        yield server.send_message("flush")  # routed after the driver's update
        yield client.wait_for(lambda m: m.attrs.get("message") == "flush")
        snooped = [(m.tag, m.name) for m in recorder.received if m.device == DEVICE]
        self.assertIn(("defSwitchVector", "CONNECTION"), snooped)
        self.assertIn(("setSwitchVector", "CONNECTION"), snooped)
        self.assertNotIn("newSwitchVector", [tag for tag, _ in snooped])

    @defer.inlineCallbacks
    def test_thermometer_example(self):
        """docs/examples/thermometer.py publishes its device with wire's builders: indi_getprop reads it, a client gets each new reading."""
        require_programs("indi_getprop")
        example = load_example("thermometer")
        clock = Clock()
        readings = iter([12.5, 13.25])
        server = yield serve(self, inprocess=[example.Thermometer(lambda: next(readings), clock=clock)])
        out, err, code = yield getProcessOutputAndValue(
            "indi_getprop", ["-h", "127.0.0.1", "-p", str(server.port), "-t", "5",
                             f"{example.DEVICE}.TEMPERATURE.TEMPERATURE"], env=child_env(),
        )
        self.assertEqual((out.decode().strip(), code), (f"{example.DEVICE}.TEMPERATURE.TEMPERATURE=12.50", 0), err)
        client = yield client_of(self, server)
        yield client.wait_for(lambda m: m.tag == "defNumberVector" and m.device == example.DEVICE)
        clock.advance(5)
        update = yield client.wait_for(lambda m: m.tag == "setNumberVector")
        self.assertIn(b">13.25<", update.raw)

    @defer.inlineCallbacks
    def test_thermometer_example_survives_failed_reading(self):
        """A reading that fails is logged and the thermometer goes on with the next one."""
        example = load_example("thermometer")
        clock = Clock()

        def unplugged() -> float:
            raise OSError("sensor unplugged")

        readings = iter([lambda: 12.5, unplugged, lambda: 14.0])
        server = yield serve(self, inprocess=[example.Thermometer(lambda: next(readings)(), clock=clock)])
        client = yield client_of(self, server)
        yield client.wait_for(lambda m: m.tag == "defNumberVector" and m.device == example.DEVICE)
        clock.advance(5)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        clock.advance(5)
        update = yield client.wait_for(lambda m: m.tag == "setNumberVector")
        self.assertIn(b">14.00<", update.raw)

    @defer.inlineCallbacks
    def test_bad_output_dropped_and_logged(self):
        """Malformed XML from an in-process driver is logged and dropped; what follows still routes."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        recorder = Recorder()
        server = yield serve(self, inprocess=[recorder])
        client = yield attached_client(self, server, GET_ALL)
        recorder.send(b"<setNumberVector device='X'><oops></setNumberVector>"
                      + wire.message("still here", device="X").raw)
        message = yield client.wait_for(lambda m: m.tag == "message")
        self.assertEqual(message.attrs["message"], "still here")
        self.assertTrue(any("bad output of recorder" in formatEvent(e) for e in logged))

    @defer.inlineCallbacks
    def test_driver_ending_by_itself_detached(self):
        """An in-process driver whose start() Deferred fires has its devices withdrawn from clients."""
        ended: defer.Deferred[None] = defer.Deferred()
        recorder = Recorder(ended=ended)
        server = yield serve(self, inprocess=[recorder])
        client = yield attached_client(self, server, GET_ALL)
        recorder.send(b"<defTextVector device='Rec' name='T'><defText name='A'>a</defText></defTextVector>")
        yield client.wait_for(lambda m: m.tag == "defTextVector")
        ended.callback(None)
        gone = yield client.wait_for(lambda m: m.tag == "delProperty")
        self.assertEqual(gone.device, "Rec")
        self.assertNotIn("Rec", server.router.owners)

    @defer.inlineCallbacks
    def test_stopped_with_server(self):
        """Stopping the server stops its in-process drivers."""
        recorder = Recorder()
        server = yield serve(self, inprocess=[recorder])
        yield server.shutdown()
        self.assertTrue(recorder.stopped)


class InProcessLinkTests(SynchronousTestCase):
    """How routed messages reach an in-process driver."""

    def test_answer_during_delivery_waits_its_turn(self):
        """A message routed to a driver while it handles another waits, in order, until that one is handled."""
        router = Router(clock=Clock())

        @implementer(IInProcessDriver)
        class Echoing(Recorder):
            depth = 0
            deepest = 0

            def messageReceived(self, message):
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)
                super().messageReceived(message)
                if message.name == "first":
                    link.send(wire.message("echo", device="E"))
                self.depth -= 1

        driver = Echoing()
        link = InProcessLink(driver)
        router.add_link(link)
        router.begin_batch()
        link.send(wire.del_property("E", "first"))
        link.send(wire.del_property("E", "second"))
        router.end_batch()
        order = [m.name or m.attrs.get("message") for m in driver.received]
        self.assertEqual(order, ["first", "second", "echo"])
        self.assertEqual(driver.deepest, 1)  # never re-entered


class MilestoneTests(SynchronousTestCase):
    """listening and stopped, awaited from asyncio code."""

    def test_asyncio_awaiters_share_one_callback(self):
        """Timed-out asyncio waits leave nothing behind; a later one still gets the result."""
        milestone = Milestone()

        async def poll():
            for _ in range(50):
                try:
                    await asyncio.wait_for(milestone.wait(), 0.001)
                except asyncio.TimeoutError:
                    pass
            asyncio.get_running_loop().call_soon(milestone.callback, "done")
            return await milestone

        self.assertEqual(asyncio.run(poll()), "done")
        self.assertLessEqual(len(milestone.callbacks), 1)

    def test_plain_deferred_for_twisted(self):
        """Outside asyncio a Milestone is an ordinary Deferred."""
        milestone = Milestone()
        milestone.callback(3)
        self.assertEqual(self.successResultOf(milestone), 3)


class IPyDriverConstructionTests(SynchronousTestCase):
    """What IndiServer checks of IPyDriver objects before anything runs."""

    def test_duplicate_device_refused(self):
        """Two IPyDrivers with the same device name are refused at construction."""
        with self.assertRaises(ValueError) as caught:
            IndiServer(thermostat(), thermostat(), port=0)
        self.assertIn(f"Device name {THERMOSTAT} is duplicated", str(caught.exception))

    def test_wrong_reactor_explained(self):
        """Under another reactor an IPyDriver is refused with what to do instead."""
        with self.assertRaises(WrongReactor) as caught:
            IndiServer(thermostat(), port=0)
        self.assertIn("--reactor=asyncio", str(caught.exception))
        self.assertIn("asyncio.run", str(caught.exception))
        self.assertIn("install() before anything imports twisted.internet.reactor", str(caught.exception))

    def test_adapter_is_in_process_driver(self):
        """IPyDriverAdapter provides IInProcessDriver and knows its driver's devices."""
        adapter = IPyDriverAdapter(camera())
        verifyObject(IInProcessDriver, adapter)
        self.assertEqual(adapter.devices, [CAMERA])

    def test_send_message_awaitable(self):
        """send_message returns a fired Deferred, so IPyServer's 'await server.send_message(...)' works."""
        server = IndiServer(port=0)
        self.assertIsNone(self.successResultOf(server.send_message("hello")))

    def test_not_a_driver_refused(self):
        """Anything else given as a driver is a TypeError."""
        self.assertRaises(TypeError, IndiServer, object(), port=0)


# The IPyServer example from indipyserver's documentation, changed only in
# its import and class name (and port 0, with the real port logged).
EXAMPLE = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer as IPyServer
{extra}
server = IPyServer({drivers}host="127.0.0.1", port=0, maxconnections=5)

server.add_exdriver("indi_simulator_telescope")
server.add_exdriver("indi_simulator_ccd")
asyncio.run(server.asyncrun())
"""


#: What a server program logs once it listens, with its port.


class ProgramTestCase(TestCase):
    """Runs indiserv programs, and indilib's and indipyclient's tools, as real processes."""

    timeout = 60

    def setUp(self):
        require_programs(
            "indi_simulator_telescope", "indi_simulator_ccd", "indi_getprop", "indi_setprop"
        )
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.env = child_env(HOME=self.home)

    def program(self, script: str) -> list[str]:
        """The command line of a Python program made of C{script}."""
        path = os.path.join(self.home, "example.py")
        with open(path, "w") as f:
            f.write(script)
        return [sys.executable, path]

    def spawn(self, argv: list[str], pattern: bytes = LISTENING) -> defer.Deferred:
        """Run C{argv}, with this indiserv; fire with the match once C{pattern} is in its output."""
        self.output = _Collect(pattern)
        self.process = reactor.spawnProcess(
            self.output, argv[0], argv, env=self.env, path=PACKAGE_ROOT
        )
        self.addCleanup(self.terminate)
        return self.output.seen

    @defer.inlineCallbacks
    def start(self, drivers: str = "", extra: str = "", script: str = EXAMPLE):
        """Run the example program; fire with its port once it listens."""
        found = yield self.spawn(self.program(script.format(drivers=drivers, extra=extra)))
        return int(found.group(1))

    def terminate(self):
        if self.process.pid is not None:
            self.process.signalProcess("KILL")
        return self.output.ended

    @defer.inlineCallbacks
    def tool(self, *argv: str):
        out, err, code = yield self.run_to_end(*argv)
        return out.decode(), code

    def run_to_end(self, *argv: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        """Run C{argv}, with this indiserv, until it ends: its stdout, stderr and status."""
        return getProcessOutputAndValue(argv[0], argv[1:], env=self.env, path=PACKAGE_ROOT)

    @defer.inlineCallbacks
    def getprop(self, port: int, spec: str):
        out, code = yield self.tool("indi_getprop", "-h", "127.0.0.1", "-p", str(port), "-t", "3", spec)
        return out

    def driver_pids(self) -> list[int]:
        """The indilib simulators the example program runs."""
        return [pid for pid, state in child_processes(self.process.pid)]

    @defer.inlineCallbacks
    def stopped_by(self, port: int, signal: str):
        """Signal the program once its drivers answer; fire with their pids once it ended."""
        yield self.getprop(port, "CCD Simulator.CONNECTION.*")
        drivers = self.driver_pids()
        self.assertEqual(len(drivers), 2)
        self.process.signalProcess(signal)
        yield self.output.ended
        return drivers


    @defer.inlineCallbacks
    def connect_telescope_and_wait(self, port: int, expression: str):
        """Connect the telescope simulator, then wait until C{expression} (indi_eval) holds."""
        out, code = yield self.tool(
            "indi_setprop", "-h", "127.0.0.1", "-p", str(port), f"{TELESCOPE}.CONNECTION.CONNECT=On"
        )
        self.assertEqual(code, 0)
        out, code = yield self.tool(
            "indi_eval", "-h", "127.0.0.1", "-p", str(port), "-t", "15", "-w", expression
        )
        return code


class AsyncRunTests(ProgramTestCase):
    """C{asyncio.run(server.asyncrun())} in a real program, as with IPyServer."""

    @defer.inlineCallbacks
    def test_ipyserver_example_with_indilib_drivers(self):
        """The ported IPyServer example serves indilib's simulators to indi_getprop and indi_setprop."""
        port = yield self.start()
        out = yield self.getprop(port, f"{TELESCOPE}.CONNECTION.*")
        self.assertIn(f"{TELESCOPE}.CONNECTION.DISCONNECT=On", out)
        out = yield self.getprop(port, "CCD Simulator.CONNECTION.*")
        self.assertIn("CCD Simulator.CONNECTION.DISCONNECT=On", out)

    @defer.inlineCallbacks
    def test_add_ipydriver_before_and_while_running(self):
        """add_ipydriver() serves a driver added before asyncrun() and one added once it listens."""
        port = yield self.start(script=ADDED_LATER)
        out = yield self.getprop(port, f"{THERMOSTAT}.TARGET.TARGET")
        self.assertEqual(out.strip(), f"{THERMOSTAT}.TARGET.TARGET=15")
        out = yield self.getprop(port, f"{CAMERA}.EXPOSE.EXPOSE")
        self.assertEqual(out.strip(), f"{CAMERA}.EXPOSE.EXPOSE=Off")

    @defer.inlineCallbacks
    def test_ipydriver_reached_through_remote_server(self):
        """A client of a linked server sets an in-process IPyDriver of the server it links to."""
        port = yield self.start("thermostat(), ", "from tests.ipydrivers import thermostat")
        upper = yield serve(self, remotes=(port,))
        client = yield client_of(self, upper)
        answer = yield set_target(client, 42)
        self.assertRegex(answer.raw.decode(), r">\s*42(\.0)?\s*<")

    @defer.inlineCallbacks
    def test_run_installs_asyncio_reactor_for_ipydrivers(self):
        """server.run() with an IPyDriver and no reactor installed serves it on the asyncio reactor."""
        port = yield self.start(script=RUNS)
        out = yield self.getprop(port, f"{THERMOSTAT}.TARGET.TARGET")
        self.assertEqual(out.strip(), f"{THERMOSTAT}.TARGET.TARGET=15")
        self.process.signalProcess("TERM")
        yield self.output.ended
        self.assertIn(b"AsyncioSelectorReactor", self.output.output)
        self.assertEqual(self.process.status, 0)

    @defer.inlineCallbacks
    def test_ipydriver_ending_by_itself_detached(self):
        """An IPyDriver whose asyncrun fails has its devices withdrawn, and the server goes on."""
        port = yield self.start("dying(), thermostat('Second'), ", DYING)
        server = _Port(port)
        client = yield client_of(self, server)
        yield client.wait_for(lambda m: m.tag == "defNumberVector" and m.device == THERMOSTAT)
        client.say(new_target(30))
        gone = yield client.wait_for(lambda m: m.tag == "delProperty")
        self.assertEqual(gone.device, THERMOSTAT)
        out = yield self.getprop(port, "Second.TARGET.TARGET")
        self.assertEqual(out.strip(), "Second.TARGET.TARGET=15")
        self.assertIn(b"the heater caught fire", self.output.output)

    @defer.inlineCallbacks
    def test_stubborn_ipydriver_cancelled_on_shutdown(self):
        """An IPyDriver that ignores shutdown() is cancelled after stop_timeout and asyncrun() still ends."""
        yield self.start("stubborn(), ", STUBBORN)
        self.process.signalProcess("TERM")
        yield self.output.ended
        self.assertIn(b"did not end in time and was cancelled", self.output.output)
        self.assertEqual(self.process.status, 0)

    @defer.inlineCallbacks
    def test_shutdown_before_driver_ran(self):
        """A driver added and shut down in the same turn does not start anyway; asyncrun() ends."""
        yield self.start(script=ADDED_AND_SHUT)
        yield self.output.ended
        self.assertIn(b"asyncrun ended", self.output.output)
        self.assertEqual(self.process.status, 0)

    @defer.inlineCallbacks
    def test_host_name_remote_does_not_hold_up_exit(self):
        """With a remote named by host name (resolved in Twisted's threads) the program still exits."""
        lower = yield serve(self)
        yield self.start(script=NAMED_REMOTE.format(port=lower.port))
        yield lower.listening
        self.process.signalProcess("TERM")
        yield self.output.ended
        self.assertIn(b"asyncio.run returned", self.output.output)

    @defer.inlineCallbacks
    def test_remotes_leave_reactor_choice_open(self):
        """Adding remotes of every kind installs no reactor, so asyncrun() can still install asyncio's."""
        out, err, code = yield self.run_to_end(sys.executable, "-c", NO_REACTOR_YET)
        self.assertEqual((out.strip(), code), (b"reactor installed: False", 0), err)

    @defer.inlineCallbacks
    def test_port_in_use_fails_listening(self):
        """When the port cannot be bound, an asyncio task awaiting server.listening gets the error."""
        taken = yield serve(self)
        found = yield self.spawn(
            self.program(LISTENING_FAILS.format(port=taken.port)), rb"listening failed: \w+"
        )
        self.assertIn(b"CannotListenError", found.group(0))
        yield self.output.ended

    @defer.inlineCallbacks
    def test_ipydriver_blobs_follow_client_policy(self):
        """An in-process IPyDriver's BLOB reaches a client that enabled BLOBs and not one that did not."""
        extra = "from tests.ipydrivers import camera"
        port = yield self.start("camera(), ", extra)
        server = _Port(port)
        wants = yield client_of(self, server, f"<getProperties version='1.7'/><enableBLOB device='{CAMERA}'>Also</enableBLOB>".encode())
        refuses = yield client_of(self, server)
        for client in (wants, refuses):
            yield client.wait_for(lambda m: m.name == "EXPOSE")
        refuses.say(
            f"<newSwitchVector device='{CAMERA}' name='EXPOSE'>"
            "<oneSwitch name='EXPOSE'>On</oneSwitch></newSwitchVector>".encode()
        )
        image = yield wants.wait_for(lambda m: m.tag == "setBLOBVector")
        self.assertTrue(image.blob)
        refuses.say(b"<pingRequest uid='after'/>")
        yield refuses.wait_for(lambda m: m.tag == "pingReply")
        self.assertFalse([m for m in refuses.received if m.tag == "setBLOBVector"])

    @defer.inlineCallbacks
    def test_ipydriver_snoops_device_of_remote_server(self):
        """An in-process IPyDriver snoops a telescope that another server, linked as a remote, serves."""
        lower = yield serve(self, ["indi_simulator_telescope"], env=self.env)
        port = yield self.start(script=WATCHES_REMOTE.format(port=lower.port))
        code = yield self.connect_telescope_and_wait(port, f'"{WATCHER}.SEEN_RA.RA">=0')
        self.assertEqual(code, 0)

    @defer.inlineCallbacks
    def test_sigterm_shuts_down_and_reaps(self):
        """SIGTERM ends asyncrun() cleanly, with every driver process reaped."""
        port = yield self.start()
        drivers = yield self.stopped_by(port, "TERM")
        self.assertIn(b"indi_simulator_ccd stopped", self.output.output)
        self.assertEqual(self.process.status, 0)
        self.assertFalse([pid for pid in drivers if os.path.exists(f"/proc/{pid}")])

    @defer.inlineCallbacks
    def test_asyncrun_in_a_thread_reaps_drivers(self):
        """asyncrun() in a thread without signals still notices a driver that closed its pipes before exiting."""
        yield self.spawn(self.program(IN_A_THREAD), rb"sh exited; restart 1")

    @defer.inlineCallbacks
    def test_ctrl_c_shuts_down_and_reaps(self):
        """Ctrl-C (SIGINT) stops the drivers before asyncio.run raises KeyboardInterrupt."""
        port = yield self.start()
        drivers = yield self.stopped_by(port, "INT")
        self.assertIn(b"KeyboardInterrupt", self.output.output)
        self.assertIn(b"indi_simulator_ccd stopped", self.output.output)
        self.assertFalse([pid for pid in drivers if os.path.exists(f"/proc/{pid}")])

    @defer.inlineCallbacks
    def test_shutdown_from_inside_a_driver(self):
        """A driver calling server.shutdown() ends asyncrun() with the driver programs reaped; awaiting server.stopped works in asyncio."""
        port = yield self.start(script=SHUTS_DOWN)
        yield self.getprop(port, "CCD Simulator.CONNECTION.*")
        (ccd,) = self.driver_pids()
        out, code = yield self.tool(
            "indi_setprop", "-h", "127.0.0.1", "-p", str(port), f"{THERMOSTAT}.TARGET.TARGET=99"
        )
        yield self.output.ended
        self.assertIn(b"stopped was awaited", self.output.output)
        self.assertIn(b"indi_simulator_ccd stopped", self.output.output)
        self.assertEqual(self.process.status, 0)
        self.assertFalse(os.path.exists(f"/proc/{ccd}"))

    @defer.inlineCallbacks
    def test_add_ipydriver_duplicate_refused(self):
        """add_ipydriver() refuses a device name an IPyDriver already serves, as the constructor does."""
        out, err, code = yield self.run_to_end(sys.executable, "-c", ADDS_DUPLICATE)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip().decode(), f"ValueError: Device name {THERMOSTAT} is duplicated in the attached drivers.")

    @defer.inlineCallbacks
    def test_asyncrun_under_another_reactor_explained(self):
        """asyncrun() with another reactor installed already raises WrongReactor saying what to do."""
        out, err, code = yield self.run_to_end(sys.executable, "-c", ASYNCRUN_UNDER_EPOLL)
        self.assertEqual(code, 0, err)
        self.assertIn(b"WrongReactor: IndiServer.asyncrun() needs Twisted's asyncio reactor", out)
        self.assertIn(b"do not import twisted.internet.reactor before asyncrun()", out)

    @defer.inlineCallbacks
    def test_works_without_indipydriver(self):
        """Without indipydriver (an optional dependency) indiserv, its twistd plugin and in-process drivers still work."""
        out, err, code = yield self.run_to_end(sys.executable, "-c", WITHOUT_INDIPYDRIVER)
        self.assertEqual((out.strip(), code), (b"served: indiserv-simulator", 0), err)

    @defer.inlineCallbacks
    def test_twistd_asyncio_reactor_ipydriver_factory(self):
        """twistd --reactor=asyncio -n indiserver --ipydriver MODULE:FACTORY serves the driver and stops cleanly on SIGTERM."""
        found = yield self.spawn(
            [sys.executable, "-c", TWISTD, "--reactor=asyncio", "-n", "--pidfile=",
             "indiserver", "--port", "0", "--host", "127.0.0.1",
             "--ipydriver", "tests.ipydrivers:thermostat"]
        )
        out = yield self.getprop(int(found.group(1)), f"{THERMOSTAT}.TARGET.TARGET")
        self.assertEqual(out.strip(), f"{THERMOSTAT}.TARGET.TARGET=15")
        self.process.signalProcess("TERM")
        yield self.output.ended
        # twistd ends by re-raising the signal it stopped for.
        self.assertIn(b"Server Shut Down.", self.output.output)
        self.assertNotIn(b"Traceback", self.output.output)

    @defer.inlineCallbacks
    def test_twistd_without_asyncio_reactor_says_what_to_do(self):
        """twistd -n indiserver --ipydriver without the asyncio reactor exits with the fix."""
        out, err, code = yield self.run_to_end(
            sys.executable, "-c", TWISTD, "-n", "--pidfile=", "indiserver", "--port", "0",
            "--ipydriver", "tests.ipydrivers:thermostat",
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"twistd --reactor=asyncio -n indiserver --ipydriver", out + err)


class SameDriverChecks:
    """
    What indipydriver drivers do for real clients and for each other,
    whether the server runs them in process or as programs: the two test
    cases below differ only in how they serve them.
    """

    def serve_drivers(self, *factories: str, programs: tuple[str, ...] = ()) -> defer.Deferred[int]:
        """
        Serve the drivers that C{tests.ipydrivers.FACTORY()} make, and the
        driver C{programs}; fire with the port.
        """
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_getprop_and_setprop(self):
        """indi_getprop reads the thermostat's target and indi_setprop sets it."""
        port = yield self.serve_drivers("thermostat")
        out = yield self.getprop(port, f"{THERMOSTAT}.TARGET.TARGET")
        self.assertEqual(out.strip(), f"{THERMOSTAT}.TARGET.TARGET=15")
        out, code = yield self.tool(
            "indi_setprop", "-h", "127.0.0.1", "-p", str(port), f"{THERMOSTAT}.TARGET.TARGET=21.5"
        )
        self.assertEqual(code, 0)
        out = yield self.getprop(port, f"{THERMOSTAT}.TARGET.TARGET")
        self.assertEqual(out.strip(), f"{THERMOSTAT}.TARGET.TARGET=21.5")

    @defer.inlineCallbacks
    def test_indipyclient_sets_thermostat(self):
        """A real indipyclient client reads the thermostat's target and sets it."""
        port = yield self.serve_drivers("thermostat")
        out, code = yield self.tool(sys.executable, "-c", INDIPYCLIENT, str(port))
        self.assertEqual((out.split(), code), (["15.0", "30.0"], 0), out)

    @defer.inlineCallbacks
    def test_indipyclient_receives_frame(self):
        """A real indipyclient client that enables BLOBs and exposes gets the camera's frame, byte for byte."""
        port = yield self.serve_drivers("camera")
        out, err, code = yield self.run_to_end(sys.executable, "-c", INDIPYCLIENT_FRAME, str(port))
        self.assertEqual((out, code), (FRAME, 0), err)


    @defer.inlineCallbacks
    def test_driver_snoops_telescope(self):
        """A driver snoops indi_simulator_telescope's coordinates."""
        port = yield self.serve_drivers("watcher", programs=(TELESCOPE_PROGRAM,))
        code = yield self.connect_telescope_and_wait(port, f'"{WATCHER}.SEEN_RA.RA">=0')
        self.assertEqual(code, 0)

    @defer.inlineCallbacks
    def test_telescope_snoops_driver(self):
        """indi_simulator_telescope snoops a driver acting as its GPS."""
        port = yield self.serve_drivers("gps", programs=(TELESCOPE_PROGRAM,))
        code = yield self.connect_telescope_and_wait(
            port, f'"{TELESCOPE}.GEOGRAPHIC_COORD.LAT"==12.5'
        )
        self.assertEqual(code, 0)


class InProcessDriverTests(SameDriverChecks, ProgramTestCase):
    """indipydriver drivers served in process by C{asyncio.run(server.asyncrun())}."""

    def serve_drivers(self, *factories: str, programs: tuple[str, ...] = ()) -> defer.Deferred[int]:
        return self.start(
            "".join(f"{factory}(), " for factory in factories),
            f"from tests.ipydrivers import {', '.join(factories)}\n"
            + "".join(f"server_programs.append({program!r})\n" for program in programs),
            script=IPYDRIVERS,
        )

    # Only in process: INDI gives a snooping driver BLOBs once it sends
    # enableBLOB, which indipydriver has no call for; the server sends it
    # for an in-process driver (docs/inprocess.rst).

    @defer.inlineCallbacks
    def test_driver_snoops_frames(self):
        """A driver snooping the camera's IMAGE gets its frames."""
        yield self.snooped_frame("frame_watcher")

    @defer.inlineCallbacks
    def test_driver_snooping_everything_gets_frames(self):
        """A driver snooping every device (getProperties naming none) gets the camera's frames too."""
        yield self.snooped_frame("all_seeing_frame_watcher")

    @defer.inlineCallbacks
    def snooped_frame(self, watcher: str):
        """Expose the camera with C{watcher} served too; it must count the frame."""
        port = yield self.serve_drivers("camera", watcher)
        yield self.getprop(port, f"{FRAME_WATCHER}.FRAMES.COUNT")  # it runs, so it snoops
        out, code = yield self.tool(
            "indi_setprop", "-h", "127.0.0.1", "-p", str(port), f"{CAMERA}.EXPOSE.EXPOSE=On"
        )
        self.assertEqual(code, 0)
        out, code = yield self.tool(
            "indi_eval", "-h", "127.0.0.1", "-p", str(port), "-t", "10", "-w",
            f'"{FRAME_WATCHER}.FRAMES.COUNT">=1',
        )
        self.assertEqual(code, 0, out)


class ExecutableDriverTests(SameDriverChecks, ProgramTestCase):
    """The same drivers, each run as a program (indipydriver's stdin/stdout mode)."""

    @defer.inlineCallbacks
    def serve_drivers(self, *factories: str, programs: tuple[str, ...] = ()):
        drivers = [[sys.executable, "-m", "tests.ipydrivers", factory] for factory in factories]
        server = yield serve(self, *drivers, *([program] for program in programs), env=self.env)
        return server.port


INDIPYCLIENT = textwrap.dedent("""
    import asyncio, sys
    from indipyclient import IPyClient

    async def main():
        client = IPyClient(indihost="127.0.0.1", indiport=int(sys.argv[1]))
        running = asyncio.create_task(client.asyncrun())
        while "Thermostat" not in client or "TARGET" not in client["Thermostat"]:
            await asyncio.sleep(0.05)
        vector = client["Thermostat"]["TARGET"]
        print(float(vector["TARGET"]))
        await client.send_newVector("Thermostat", "TARGET", members={"TARGET": 30})
        while float(vector["TARGET"]) != 30:
            await asyncio.sleep(0.05)
        print(float(vector["TARGET"]))
        client.shutdown()
        await running

    asyncio.run(asyncio.wait_for(main(), 20))
""")

INDIPYCLIENT_FRAME = textwrap.dedent("""
    import asyncio, sys
    from indipyclient import IPyClient

    class Client(IPyClient):
        \"\"\"Once the camera's IMAGE is defined, asks for BLOBs and a frame; writes the frame out.\"\"\"

        exposed = written = False

        async def rxevent(self, event):
            if getattr(event, "devicename", None) != "Pocket Camera":
                return
            # The camera may define IMAGE twice (for the server and for us).
            if event.eventtype == "DefineBLOB" and not self.exposed:
                self.exposed = True
                await self.send_enableBLOB("Also", "Pocket Camera", "IMAGE")
                await self.send_newVector("Pocket Camera", "EXPOSE", members={"EXPOSE": "On"})
            elif event.eventtype == "SetBLOB" and not self.written:
                self.written = True
                sys.stdout.buffer.write(event["FRAME"])
                self.shutdown()

    client = Client(indihost="127.0.0.1", indiport=int(sys.argv[1]))
    asyncio.run(asyncio.wait_for(client.asyncrun(), 20))
""")

#: A program serving IPyDrivers, and the driver programs its {extra} lists.
IPYDRIVERS = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer
server_programs = []
{extra}
server = IndiServer({drivers}host="127.0.0.1", port=0)
for program in server_programs:
    server.add_exdriver(program)
asyncio.run(server.asyncrun())
"""

RUNS = """
import logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer
from tests.ipydrivers import thermostat

def report(port):
    from twisted.internet import reactor
    logging.info("reactor: %s", type(reactor).__name__)

server = IndiServer(thermostat(), host="127.0.0.1", port=0)
server.listening.addCallback(report)
server.run()
"""

IN_A_THREAD = """
import asyncio, logging, threading
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer

server = IndiServer(host="127.0.0.1", port=0)
# Its pipes close at once, so only reaping tells that it ended a moment later.
server.add_exdriver("sh", "-c", "exec 0<&- 1>&- 2>&-; exec sleep 0.3")
threading.Thread(target=asyncio.run, args=(server.asyncrun(),), daemon=True).start()
threading.Event().wait(30)
"""

DYING = "from tests.ipydrivers import dying, thermostat"

STUBBORN = """
from tests.ipydrivers import stubborn
from indiserv.inprocess import IPyDriverAdapter
IPyDriverAdapter.stop_timeout = 0.5
"""

ADDED_AND_SHUT = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer
from tests.ipydrivers import thermostat

server = IndiServer(host="127.0.0.1", port=0)

async def main():
    running = asyncio.ensure_future(server.asyncrun())
    await server.listening
    server.add_ipydriver(thermostat())
    server.shutdown()
    await running
    print("asyncrun ended", flush=True)

asyncio.run(main())
"""

NAMED_REMOTE = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer

server = IndiServer(host="127.0.0.1", port=0)
server.add_remote("localhost", {port})
asyncio.run(server.asyncrun())
print("asyncio.run returned", flush=True)
"""

NO_REACTOR_YET = """
import sys
from indiserv import IndiServer
server = IndiServer(host="127.0.0.1", port=0)
server.add_remote("tls:localhost:7624")
server.add_remote("localhost", 7624)
server.add_remote("tcp:host=127.0.0.1:port=7624")
print("reactor installed:", "twisted.internet.reactor" in sys.modules)
"""

LISTENING_FAILS = """
import asyncio
from indiserv import IndiServer

server = IndiServer(host="127.0.0.1", port={port})

async def main():
    running = asyncio.ensure_future(server.asyncrun())
    try:
        await server.listening
    except Exception as e:
        print("listening failed:", type(e).__name__, flush=True)
    try:
        await running
    except Exception:
        pass

asyncio.run(main())
"""

ADDED_LATER = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer
from tests.ipydrivers import camera, thermostat

server = IndiServer(host="127.0.0.1", port=0)
server.add_ipydriver(thermostat())

async def main():
    running = asyncio.ensure_future(server.asyncrun())
    await server.listening
    server.add_ipydriver(camera())
    await running

asyncio.run(main())
"""

WATCHES_REMOTE = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer
from tests.ipydrivers import watcher

server = IndiServer(watcher(), host="127.0.0.1", port=0)
server.add_remote("127.0.0.1", {port})
asyncio.run(server.asyncrun())
"""

SHUTS_DOWN = """
import asyncio, logging
logging.basicConfig(level=logging.INFO)
from indiserv import IndiServer
from tests.ipydrivers import ThermostatDriver, thermostat

class Stopper(ThermostatDriver):
    async def rxevent(self, event):
        server.shutdown()

server = IndiServer(thermostat(kind=Stopper), host="127.0.0.1", port=0)
server.add_exdriver("indi_simulator_ccd")

async def main():
    running = asyncio.ensure_future(server.asyncrun())
    await server.stopped
    print("stopped was awaited", flush=True)
    await running

asyncio.run(main())
"""


ADDS_DUPLICATE = """
from indiserv import IndiServer
from tests.ipydrivers import thermostat

server = IndiServer(thermostat(), port=0)
try:
    server.add_ipydriver(thermostat())
except ValueError as e:
    print("ValueError:", e)
"""

ASYNCRUN_UNDER_EPOLL = """
import asyncio
from twisted.internet import reactor  # installs the default reactor
from indiserv import IndiServer
from indiserv.inprocess import WrongReactor

try:
    asyncio.run(IndiServer(port=0).asyncrun())
except WrongReactor as e:
    print("WrongReactor:", e)
"""

WITHOUT_INDIPYDRIVER = """
import sys
sys.modules["indipydriver"] = None  # import indipydriver now fails
from twisted.internet import reactor
from indiserv import IndiServer
from indiserv.inprocess import InProcessService
from indiserv.simulator import Simulator
from indiserv.tap import Options, makeService

options = Options()
options.parseOptions(["--port", "0"])
makeService(options)
server = IndiServer(Simulator(), host="127.0.0.1", port=0)

def served(port):
    drivers = [child.driver.name for child in server if isinstance(child, InProcessService)]
    print("served:", ", ".join(drivers), flush=True)

server.listening.addCallback(served).addBoth(lambda _: reactor.stop())
reactor.callWhenRunning(server.startService)
reactor.run()
"""


def new_target(value: int) -> bytes:
    """A client's command setting the thermostat's TARGET to C{value}."""
    return (
        f"<newNumberVector device='{THERMOSTAT}' name='TARGET'>"
        f"<oneNumber name='TARGET'>{value}</oneNumber></newNumberVector>"
    ).encode()


@defer.inlineCallbacks
def set_target(client, value: int):
    """Once the thermostat is defined, set its TARGET from C{client}; fire with the answer."""
    yield client.wait_for(lambda m: m.tag == "defNumberVector" and m.device == THERMOSTAT)
    client.say(new_target(value))
    answer = yield client.wait_for(lambda m: m.tag == "setNumberVector")
    return answer


class _Port:
    """What client_of needs of a server: its port."""

    def __init__(self, port: int):
        self.port = port
