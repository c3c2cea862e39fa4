"""Wiring: build the server (or the command line's engine) from a `Config`.  No logic lives here."""

from __future__ import annotations

import os
import socket
from functools import partial
from typing import Any

from prometheus_client.twisted import MetricsResource
from treq.client import HTTPClient
from twisted.application import internet, service
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, RedirectAgent
from twisted.web.server import Site

from imageserver import collector, logs, paths
from imageserver.addresses import GuardedReactor
from imageserver.admin import AdminApp, Console
from imageserver.backoff import Backoff
from imageserver.claims import CLAIMS_DIRECTORY, Claims
from imageserver.collector import GarbageCollector
from imageserver.debug import Debugger
from imageserver.events import Events, Fanout
from imageserver.fetch import SourceDownloader
from imageserver.guard import SignatureGuard, is_signed
from imageserver.history import History
from imageserver.images import ImageLimits, Images
from imageserver.lifecycle import Lifecycle
from imageserver.metrics import Metrics
from imageserver.options import Config
from imageserver.outbox import OUTBOX_DIRECTORY, Outbox
from imageserver.processes import (
    Secondaries,
    SharedTCPServer,
    bound_port,
    cpus_of,
    process_count,
    scrape_metrics,
    share,
)
from imageserver.processing.placement import usable_cpus
from imageserver.processing.pool import WorkerPool
from imageserver.remote import RemoteStore
from imageserver.s3 import Bucket, ChainCredentials, CredentialSource, S3Client, StaticCredentials
from imageserver.signature import SecretsFile, Validator
from imageserver.site import ImageSite
from imageserver.statsd import StatsdClient
from imageserver.store import LocalStore
from imageserver.uploader import NoUploads, Uploader
from imageserver.web import MainApp
from imageserver.webhooks import WebhookSender, enabled_events

# Redirects a source download may follow (docs/security.md#source-urls).
MAX_REDIRECTS = 5
# How long a shutdown waits for in-flight requests (the Go server's drain).
DRAIN_SECONDS = 30.0
# What a process waiting on another's claim allows beyond --processing-timeout: the job's wait for
# a worker, whose queue is bounded by --max-queue.
CLAIM_SLACK = 30.0


class Engine(service.MultiService):
    """Everything but the sites: local store, worker pool, bucket, uploads, and `Images` on top.

    The server and the ``cli`` command both run one.  With several main processes
    (`imageserver.processes`), process ``process_index`` of ``processes`` has its share of the
    workers and CPUs, and only the first one (the primary) empties ``tmp/`` and resumes the
    journal's uploads and the outbox's webhooks at start.
    """

    def __init__(
        self, config: Config, reactor: Any, process_index: int = 0, processes: int = 1
    ) -> None:
        super().__init__()
        self.config = config
        self.primary = process_index == 0
        self.store = LocalStore(config.local_base_path)
        self.metrics = Metrics()
        self.pool = WorkerPool(
            size=share(config.processor_concurrency, processes, process_index),
            max_queue=config.max_queue,
            timeout=config.processing_timeout,
            max_jobs=config.worker_max_jobs,
            pin=config.pin_workers,
            cpus=cpus_of(sorted(usable_cpus()), processes, process_index),
        )
        self.pool.setServiceParent(self)
        self.metrics.watch_pool(self.pool)
        self.http_pool = HTTPConnectionPool(reactor)
        # Keep a connection per concurrent upload alive, and some for reads.
        self.http_pool.maxPersistentPerHost = 2 * config.uploader_concurrency
        agent = Agent(reactor, pool=self.http_pool)
        self.metrics_client = HTTPClient(agent)  # the primary reads the secondaries' metrics
        self.remote: RemoteStore | None = None
        self.uploads: Uploader | NoUploads = NoUploads()
        if config.effective_uploader == "s3":
            bucket = Bucket(config.aws_bucket, config.aws_region, config.s3_endpoint)
            client = S3Client(
                HTTPClient(agent),
                bucket,
                _credentials(config),
                reactor,
                config.s3_timeout,
                config.s3_acl,
            )
            self.remote = RemoteStore(client, config.remote_base_path, self.store)
            self.uploads = Uploader(
                self.remote,
                self.store,
                self.metrics,
                reactor,
                config.uploader_concurrency,
                config.s3_timeout,
                resume=self.primary,
            )
            self.metrics.watch_uploads(self.uploads)
            self.metrics.watch_bucket(self.remote)
        self.uploads.setServiceParent(self)
        sinks: list[Events] = []
        self.webhooks: WebhookSender | None = None
        if config.webhook_url:
            self.webhooks = WebhookSender(
                HTTPClient(agent),
                config.webhook_url,
                config.webhook_secret,
                config.webhook_timeout,
                enabled_events(config.webhook_events),
                self.metrics,
                reactor,
                Outbox(os.path.join(self.store.base, OUTBOX_DIRECTORY)),
                retries=Backoff(longest=config.webhook_retry_max_delay),
                retry_for=config.webhook_retry_for,
                outbox_max=config.webhook_outbox_max,
                resume=self.primary,
            )
            self.metrics.watch_webhooks(self.webhooks)
            self.webhooks.setServiceParent(self)
            sinks.append(self.webhooks)
        self.statsd: StatsdClient | None = None
        if config.enable_statsd:
            address = socket.gethostbyname(config.statsd_host)  # once, at start-up
            self.statsd = StatsdClient(address, config.statsd_port, config.statsd_prefix)
            sinks.append(self.statsd)
        self.reactor = reactor
        # Sources get their own connection pool: a connection the bucket's client opened to an
        # internal host must never be reused by a download the address guard would refuse.
        self.source_pool = HTTPConnectionPool(reactor)
        guarded = None if config.allow_private_sources else GuardedReactor(reactor)
        self.source_reactor = guarded
        source_agent = Agent(guarded or reactor, pool=self.source_pool)
        downloader = SourceDownloader(
            HTTPClient(RedirectAgent(source_agent, MAX_REDIRECTS)),
            reactor,
            self.store.tmp,
            config.http_timeout,
            config.max_upload_bytes,
            guarded.nameResolver.refused if guarded is not None else {},
        )
        limits = ImageLimits(
            config.default_quality,
            config.maximum_width,
            config.max_source_pixels,
            config.max_variants_per_image,
            config.allowed_variants,
        )
        self.images = Images(
            self.store,
            self.pool,
            downloader,
            self.metrics,
            limits,
            self.uploads,
            self.remote,
            Fanout(sinks),
            lambda relative: paths.remote_url(
                config.remote_base_url, paths.remote_key(config.remote_base_path, relative)
            ),
            None if processes == 1 else claims(self.store, reactor, config.processing_timeout),
        )

    def startService(self) -> None:
        try:
            self.store.prepare(empty_tmp=self.primary)
        except OSError as error:  # the one start-up step that can fail on a flag's value
            problem = error.strerror or str(error)
            raise usage.UsageError(
                f"--local_base_path: cannot use {self.store.base}: {problem}"
            ) from error
        super().startService()
        if self.remote is not None:
            self.remote.start_checking()
        self._statsd_port = None
        if self.statsd is not None:
            self._statsd_port = self.reactor.listenUDP(0, self.statsd)

    async def _stop(self) -> None:
        if self.remote is not None:
            self.remote.stop_checking()
        if self._statsd_port is not None:
            await self._statsd_port.stopListening()
        await super().stopService()
        await self.http_pool.closeCachedConnections()
        await self.source_pool.closeCachedConnections()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


class ImageServer(service.MultiService):
    """The server: the main and admin sites in front of an `Engine`, and the cache collector.

    The ports are bound first, so a second server started by mistake on the same store fails
    before its engine empties the first one's ``tmp/`` (with several main processes the main port
    is shared, and the admin port, the primary's alone, is what fails).  Stopping drains requests
    first.

    ``process_index`` 0 is the primary: with ``--processes`` over 1 it starts the others
    (`imageserver.processes`), which serve the main site and a metrics page for the primary's
    ``/metrics`` only.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        gc_interval: float = collector.INTERVAL,
        process_index: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._stopping: Deferred[None] | None = None
        count = process_count(config.processes, config.processor_concurrency, len(usable_cpus()))
        self.engine = engine = Engine(config, reactor, process_index, count)
        self.store, self.metrics, self.pool = engine.store, engine.metrics, engine.pool
        self.remote, self.uploads, self.images = engine.remote, engine.uploads, engine.images
        remote = self.remote
        self.lifecycle = Lifecycle(
            lambda: self.pool.ready, None if remote is None else lambda: remote.state
        )
        validator = None
        if config.signing_secrets_file:
            secrets = SecretsFile(config.signing_secrets_file)
            validator = Validator(secrets, config.signature_max_ttl)
        main = MainApp(
            self.images,
            self.lifecycle,
            frozenset(config.extensions),
            config.outputs,
            (lambda request: False) if validator is None else partial(is_signed, validator),
        )
        resource, refuse_body = main.resource(), None
        if config.signatures_required:
            assert validator is not None  # options require the secrets file
            guard = SignatureGuard(resource, validator, config.require_signature_for_reads)
            resource, refuse_body = guard, guard.refuses
        self.site = ImageSite(
            resource,
            self.store.tmp,
            config.max_upload_bytes,
            reactor,
            refuse_body,
            config.read_timeout,
        )
        listen = SharedTCPServer if count > 1 else internet.TCPServer
        self.main_port = listen(config.port, self.site, interface=config.listen)
        self.main_port.setServiceParent(self)
        self.secondaries: Secondaries | None = None
        self.metrics_site: internet.TCPServer | None = None
        if process_index:
            # What the primary's /metrics reads; loopback only, on a port of the system's choice.
            metrics_site = Site(MetricsResource(self.metrics.registry))
            metrics_site.noisy = False
            self.metrics_site = internet.TCPServer(0, metrics_site, interface="127.0.0.1")
            self.metrics_site.setServiceParent(self)
            engine.setServiceParent(self)
            return
        if count > 1:
            self.secondaries = Secondaries(
                config, count, lambda: bound_port(self.main_port), reactor, self._adopt
            )
        scrape = None if self.secondaries is None else partial(self._scrape, self.secondaries)
        self.history = History(self.metrics.registry, reactor, others=scrape)
        self.history.setServiceParent(self)
        console = Console(
            config,
            self.store,
            self.pool,
            self.history,
            self.main_port,
            None if validator is None else validator.secrets,
            reactor,
        )
        admin_app = AdminApp(self.lifecycle, self.metrics, console, scrape)
        # Bodies spooled and bounded as on the main site: the console's upload relay takes them.
        admin_site = ImageSite(
            admin_app.resource(),
            self.store.tmp,
            config.max_upload_bytes,
            reactor,
            read_timeout=config.read_timeout,
        )
        self.admin_port = internet.TCPServer(config.admin_port, admin_site, interface=config.listen)
        self.admin_port.setServiceParent(self)
        self.debugger: Debugger | None = None
        if config.profile:
            self.debugger = Debugger(self.pool, reactor, config.profile_port)
            self.debugger.setServiceParent(self)
        engine.setServiceParent(self)
        if self.remote is not None:
            GarbageCollector(
                self.store, self.remote, self.uploads, config.max_file_age, reactor, gc_interval
            ).setServiceParent(self)
        if self.secondaries is not None:
            self.secondaries.setServiceParent(self)  # last: once the port is bound

    def _adopt(self) -> None:
        """A secondary has ended: resume the uploads and webhooks it left unfinished."""
        self.uploads.resume()
        if self.engine.webhooks is not None:
            self.engine.webhooks.resume()

    def _scrape(self, secondaries: Secondaries) -> Deferred[dict[int, bytes]]:
        return scrape_metrics(self.engine.metrics_client, secondaries.metrics_ports())

    def metrics_port(self) -> int:
        """The port of a secondary's metrics page."""
        assert self.metrics_site is not None
        return bound_port(self.metrics_site)

    def startService(self) -> None:
        """Start, and log the ready line once the workers are up."""
        super().startService()
        self.pool.when_ready().addCallback(self._log_ready)

    def _log_ready(self, _: None) -> None:
        # The ports bound, which differ from the flags' for 0; bound before the workers started.
        if self.metrics_site is not None:
            return  # a secondary: the primary's line speaks for the server
        count = 1 if self.secondaries is None else self.secondaries.count
        admin = bound_port(self.admin_port)
        logs.log_ready(self.config, bound_port(self.main_port), admin, count)

    async def _stop(self) -> None:
        self.lifecycle.shutting_down = True
        await self.main_port.stopService()
        idle = self.site.wait_idle()
        idle.addTimeout(DRAIN_SECONDS, self.reactor)
        idle.addErrback(lambda _: None)
        await idle
        await super().stopService()

    def stopService(self) -> Deferred[None]:
        """Stop once; later calls wait for the same stop."""
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        stopped: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            stopped.callback(None)
            return result

        self._stopping.addBoth(relay)
        return stopped


def claims(store: LocalStore, reactor: Any, processing_timeout: float) -> Claims:
    """Claims on new variants in the store's ``tmp/``, waited on for as long as a job may take
    and its wait for a worker."""
    return Claims(
        os.path.join(store.tmp, CLAIMS_DIRECTORY), reactor, processing_timeout + CLAIM_SLACK
    )


def _credentials(config: Config) -> CredentialSource:
    """The flags' keys when given, else the standard AWS chain."""
    if config.aws_access_key_id:
        return StaticCredentials(config.aws_access_key_id, config.aws_secret_key)
    return ChainCredentials()
