"""
Drivers written with indipydriver's public API, for the in-process tests.

Run as a program, a driver here speaks INDI on stdin and stdout, as
indipydriver drivers do when started by any INDI server:

    python -m tests.ipydrivers thermostat
"""

from __future__ import annotations

import asyncio
import sys

import indipydriver as ipd

THERMOSTAT = "Thermostat"
CAMERA = "Pocket Camera"
WATCHER = "Scope Watcher"
GPS = "GPS Simulator"
FRAME_WATCHER = "Frame Watcher"
#: What the camera sends as its image.
FRAME = b"ipydriver image " * 64


class ThermostatDriver(ipd.IPyDriver):
    """A heater with a target temperature that a client sets."""

    async def rxevent(self, event: object) -> None:
        if isinstance(event, ipd.newNumberVector) and event.vectorname == "TARGET":
            vector = event.vector
            vector["TARGET"] = event["TARGET"]
            await vector.send_setVector(state="Ok")

    async def hardware(self) -> None:
        await self.send_message("thermostat ready")


def thermostat(
    device: str = THERMOSTAT, kind: type[ThermostatDriver] = ThermostatDriver
) -> ThermostatDriver:
    """A thermostat C{device} with a settable target (a NumberVector), driven by C{kind}."""
    target = ipd.NumberMember(
        name="TARGET", label="Target", format="%3.1f", min="-50", max="99", step="0.1",
        membervalue="15",
    )
    vector = ipd.NumberVector(
        name="TARGET", label="Target", group="Control", perm="rw", state="Ok",
        numbermembers=[target],
    )
    return kind(ipd.Device(device, [vector]))


def _readout(device: str, vector: str, member: str, value: str) -> ipd.Device:
    """A device showing one read-only number, C{vector.member}, in group Snoop."""
    number = ipd.NumberMember(name=member, label=member.title(), format="%g", membervalue=value)
    return ipd.Device(device, [ipd.NumberVector(
        name=vector, label=vector.replace("_", " ").title(), group="Snoop", perm="ro",
        state="Idle", numbermembers=[number],
    )])


class CameraDriver(ipd.IPyDriver):
    """Sends an image as a BLOB whenever a client asks with EXPOSE."""

    async def rxevent(self, event: object) -> None:
        if isinstance(event, ipd.newSwitchVector) and event.vectorname == "EXPOSE":
            image = self[CAMERA]["IMAGE"]
            image["FRAME"] = FRAME
            await image.send_setVectorMembers(members=["FRAME"], state="Ok")


def camera() -> CameraDriver:
    """A camera with an EXPOSE switch and an IMAGE BLOB vector."""
    expose = ipd.SwitchVector(
        name="EXPOSE", label="Expose", group="Control", perm="rw", rule="AtMostOne",
        state="Idle", switchmembers=[ipd.SwitchMember(name="EXPOSE", label="Expose")],
    )
    image = ipd.BLOBVector(
        name="IMAGE", label="Image", group="Control", perm="ro", state="Idle",
        blobmembers=[ipd.BLOBMember(name="FRAME", label="Frame", blobformat=".txt")],
    )
    return CameraDriver(ipd.Device(CAMERA, [expose, image]))


class WatcherDriver(ipd.IPyDriver):
    """Snoops the telescope simulator's coordinates and shows the last RA."""

    async def hardware(self) -> None:
        await self.send_getProperties("Telescope Simulator", "EQUATORIAL_EOD_COORD")

    async def snoopevent(self, event: object) -> None:
        if (
            isinstance(event, (ipd.defNumberVector, ipd.setNumberVector))
            and event.vectorname == "EQUATORIAL_EOD_COORD"
            and "RA" in event
        ):
            seen = self[WATCHER]["SEEN_RA"]
            seen["RA"] = str(event["RA"])
            await seen.send_setVector(state="Ok")


def watcher() -> WatcherDriver:
    """A device whose SEEN_RA copies the snooped telescope's RA."""
    return WatcherDriver(_readout(WATCHER, "SEEN_RA", "RA", "-1"))


class GPSDriver(ipd.IPyDriver):
    """Reports its fixed location every half second, as GPS drivers refresh theirs."""

    async def hardware(self) -> None:
        location = self[GPS]["GEOGRAPHIC_COORD"]
        while not self.stop:
            await location.send_setVector()
            await asyncio.sleep(0.5)


class DyingDriver(ThermostatDriver):
    """A thermostat whose hardware fails once a client sets its target."""

    async def rxevent(self, event: object) -> None:
        self.failing.set()

    async def hardware(self) -> None:
        self.failing = asyncio.Event()
        await self.failing.wait()
        raise RuntimeError("the heater caught fire")


def dying() -> ThermostatDriver:
    """A thermostat that fails when set (its asyncrun ends by itself)."""
    return thermostat(kind=DyingDriver)


class StubbornDriver(ThermostatDriver):
    """A thermostat whose hardware loop never looks at self.stop."""

    async def hardware(self) -> None:
        while True:
            await asyncio.sleep(0.05)


def stubborn() -> ThermostatDriver:
    """A thermostat that ignores shutdown() (its task has to be cancelled)."""
    return thermostat(kind=StubbornDriver)


class FrameWatcherDriver(ipd.IPyDriver):
    """Snoops the camera's IMAGE and counts the frames it sees."""

    async def hardware(self) -> None:
        await self.send_getProperties(CAMERA, "IMAGE")

    async def snoopevent(self, event: object) -> None:
        if isinstance(event, ipd.setBLOBVector):
            frames = self[FRAME_WATCHER]["FRAMES"]
            frames["COUNT"] = str(int(float(frames["COUNT"])) + 1)
            await frames.send_setVector(state="Ok")


class AllSeeingFrameWatcherDriver(FrameWatcherDriver):
    """A frame watcher that snoops every device (getProperties naming none)."""

    async def hardware(self) -> None:
        await self.send_getProperties()


def frame_watcher(everything: bool = False) -> FrameWatcherDriver:
    """
    A device whose FRAMES.COUNT counts the camera's snooped BLOBs; it
    snoops the camera's IMAGE or, with C{everything}, every device.
    """
    kind = AllSeeingFrameWatcherDriver if everything else FrameWatcherDriver
    return kind(_readout(FRAME_WATCHER, "FRAMES", "COUNT", "0"))


def all_seeing_frame_watcher() -> FrameWatcherDriver:
    """A frame watcher snooping every device."""
    return frame_watcher(everything=True)


def gps() -> GPSDriver:
    """
    indi_simulator_telescope's default GPS ("GPS Simulator"), at latitude
    12.5: the telescope snoops its GEOGRAPHIC_COORD and takes it as its own.
    """
    members = [
        ipd.NumberMember(name="LAT", label="Lat", format="%010.6m", min="-90", max="90",
                         membervalue="12.5"),
        ipd.NumberMember(name="LONG", label="Lon", format="%010.6m", min="0", max="360",
                         membervalue="45"),
        ipd.NumberMember(name="ELEV", label="Elevation", format="%g", min="-200", max="10000",
                         membervalue="100"),
    ]
    location = ipd.NumberVector(
        name="GEOGRAPHIC_COORD", label="Location", group="Site", perm="ro", state="Ok",
        numbermembers=members,
    )
    return GPSDriver(ipd.Device(GPS, [location]))


if __name__ == "__main__":
    factories = {
        "thermostat": thermostat, "camera": camera, "watcher": watcher, "gps": gps,
        "frame_watcher": frame_watcher, "all_seeing_frame_watcher": all_seeing_frame_watcher,
    }
    asyncio.run(factories[sys.argv[1]]().asyncrun())
