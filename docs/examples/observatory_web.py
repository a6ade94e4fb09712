"""
An existing Twisted application, a small web site, that also serves INDI.

Run it with ``twistd -ny docs/examples/observatory_web.py``: the site is on
port 8080, INDI clients connect to port 7624, and stopping the application
(Ctrl-C, SIGTERM) stops the INDI server, its drivers and its connections
with it.
"""

from twisted.application import service, strports
from twisted.web import resource, server

from indiserv import IndiServer
from indiserv.simulator import Simulator


def observatory(web_port: str = "tcp:8080", indi_port: int | str = 7624) -> service.MultiService:
    """The application's services: the web site and the INDI server."""
    top = service.MultiService()

    page = resource.Resource()
    page.putChild(b"", resource.NoResource("Nothing here yet: ask INDI on port 7624."))
    strports.service(web_port, server.Site(page)).setServiceParent(top)

    indi = IndiServer(Simulator(), host="localhost", port=indi_port)
    indi.add_exdriver("indi_simulator_telescope")
    indi.setServiceParent(top)
    return top


application = service.Application("observatory")
observatory().setServiceParent(application)
