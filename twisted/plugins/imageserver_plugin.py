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

        return ImageServer(options.config, reactor)


service_maker = ImageServerMaker()
