"""The reference for hits: a bare `twisted.web.static.File` over the store, on 127.0.0.1.

Nothing added (no ETag, no Cache-Control, no routing, no access log): the cost of serving a file
from Twisted alone, which our server can approach but not beat.  Usage: static_server.py ROOT PORT.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import File


def main(argv: list[str]) -> None:
    root, port = argv[1], int(argv[2])
    reactor.listenTCP(port, Site(File(root)), interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
