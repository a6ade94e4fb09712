#!/usr/bin/env python3
"""
The ceiling: a bare Twisted byte pump with no INDI parsing at all.

It spawns one driver and copies its stdout to every connected client, and
what clients write to the driver's stdin.  No INDI server can move bytes
faster than this on Twisted; the benchmark reports it beside the servers.

    python benchmarks/pump.py PORT DRIVER
"""

import sys

from twisted.internet import protocol, reactor


class Pump(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.clients: list[protocol.Protocol] = []

    def connectionMade(self) -> None:
        self.transport.write(b"<getProperties version='1.7'/>")

    def outReceived(self, data: bytes) -> None:
        for client in self.clients:
            client.transport.write(data)


class Client(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.factory.pump.clients.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.factory.pump.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.pump.clients.remove(self)


def main() -> None:
    port, driver = int(sys.argv[1]), sys.argv[2]
    pump = Pump()
    reactor.spawnProcess(pump, driver, [driver], env=None)
    factory = protocol.Factory.forProtocol(Client)
    factory.pump = pump
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
