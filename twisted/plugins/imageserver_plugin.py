"""``twistd imageserver``: the same server, flags and wiring as ``image-server server``."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

from imageserver.options import ServerOptions


@implementer(IServiceMaker, IPlugin)
class ImageServerMaker:
    tapname = "imageserver"
    description = "A self-hosted image server: uploads, variants on demand, S3."
    options = ServerOptions

    def makeService(self, options: ServerOptions):  # type: ignore[no-untyped-def]
        from twisted.internet import reactor

        from imageserver.service import ImageServer

        _no_pid_file_unless_asked(options)
        return ImageServer(options.config, reactor)


def _no_pid_file_unless_asked(options: ServerOptions) -> None:
    """twistd writes ``twistd.pid`` by default; a service under systemd or in a container has no
    use for it, so it is written only when ``--pidfile`` is given."""
    import sys

    twistd = getattr(options, "parent", None)
    given = any(arg == "--pidfile" or arg.startswith("--pidfile=") for arg in sys.argv)
    if twistd is not None and not given:
        twistd["pidfile"] = ""


service_maker = ImageServerMaker()
