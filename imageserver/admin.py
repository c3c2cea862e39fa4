"""The admin site (DECISIONS D17): liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from imageserver.lifecycle import Lifecycle
from imageserver.metrics import Metrics
from imageserver.responses import error_body, json_body


class AdminApp:
    app = Klein()

    def __init__(self, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics

    def resource(self) -> IResource:
        return self.app.resource()

    @app.route("/probe/live")
    def live(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"message": "OK"})

    @app.route("/probe/ready")
    def ready(self, request: IRequest) -> bytes:
        status, body = self.lifecycle.readiness()
        return json_body(request, status, body)

    @app.handle_errors(HTTPException)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return error_body(request, 404, "404 page not found", "not_found")

    @app.route("/metrics")
    def metrics_page(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)
