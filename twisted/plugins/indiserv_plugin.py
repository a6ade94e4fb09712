from twisted.application.service import ServiceMaker

indiserver = ServiceMaker(
    "indiserv INDI server",
    "indiserv.tap",
    "An INDI server for astronomy drivers and clients (indiserver drop-in).",
    "indiserver",
)
