"""Wiring: build the whole server from a `Config` as one `MultiService`.  No logic lives here."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.application import internet, service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, RedirectAgent
from twisted.web.server import Site

from imageserver.admin import AdminApp
from imageserver.fetch import SourceDownloader
from imageserver.images import ImageLimits, Images
from imageserver.lifecycle import Lifecycle
from imageserver.metrics import Metrics
from imageserver.options import Config
from imageserver.processing.pool import WorkerPool
from imageserver.site import ImageSite
from imageserver.store import LocalStore
from imageserver.web import MainApp

log = Logger()

# Redirects a source download may follow (DECISIONS D13).
MAX_REDIRECTS = 5
# How long a shutdown waits for in-flight requests (the Go server's drain).
DRAIN_SECONDS = 30.0


class ImageServer(service.MultiService):
    """The server: worker pool, main site and admin site, started and stopped in that order."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.store = LocalStore(config.local_base_path)
        self.pool = WorkerPool(
            size=config.processor_concurrency,
            max_queue=config.max_queue,
            timeout=config.processing_timeout,
            max_jobs=config.worker_max_jobs,
        )
        self.pool.setServiceParent(self)
        self.metrics = Metrics()
        self.metrics.watch_pool(self.pool)
        self.lifecycle = Lifecycle(lambda: self.pool.ready)
        self.http_pool = HTTPConnectionPool(reactor)
        http = HTTPClient(RedirectAgent(Agent(reactor, pool=self.http_pool), MAX_REDIRECTS))
        downloader = SourceDownloader(
            http, reactor, self.store.tmp, config.http_timeout, config.max_upload_bytes
        )
        limits = ImageLimits(config.default_quality, config.maximum_width, config.max_source_pixels)
        self.images = Images(self.store, self.pool, downloader, self.metrics, limits)
        main = MainApp(self.images, self.lifecycle, frozenset(config.extensions), config.outputs)
        self.site = ImageSite(main.resource(), self.store.tmp, config.max_upload_bytes, reactor)
        self.main_port = internet.TCPServer(config.port, self.site, interface=config.listen)
        self.main_port.setServiceParent(self)
        admin_site = Site(AdminApp(self.lifecycle, self.metrics).resource(), reactor=reactor)
        self.admin_port = internet.TCPServer(config.admin_port, admin_site, interface=config.listen)
        self.admin_port.setServiceParent(self)

    def startService(self) -> None:
        # Ports first: a second server started by mistake on the same store fails to bind before
        # it can empty the first one's tmp/.
        super().startService()
        self.store.prepare()
        if self.config.enable_statsd or self.config.webhook_url:
            log.warn("not built yet: --enable_statsd and --webhook-url have no effect")

    async def _stop(self) -> None:
        self.lifecycle.shutting_down = True
        await self.main_port.stopService()
        idle = self.site.wait_idle()
        idle.addTimeout(DRAIN_SECONDS, self.reactor)
        idle.addErrback(lambda _: None)
        await idle
        await super().stopService()
        await self.http_pool.closeCachedConnections()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())
