"""Requests no route expects still get JSON: doubled slashes, and failures nothing caught."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request

from imageserver.site import LoggingSite
from tests.support import ServerTestCase, raw_exchange


def assert_json_error(testcase: ServerTestCase, answer: bytes, status: bytes) -> dict[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    testcase.assertTrue(head.startswith(b"HTTP/1.1 " + status), head)
    testcase.assertIn(b"content-type: application/json", head.lower())
    found: dict[str, str] = json.loads(body)
    return found


class _Broken(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        raise RuntimeError("a bug")


class OddRequestTests(ServerTestCase):
    async def test_doubled_slashes_are_json_on_both_sites(self) -> None:
        await self.start_server()
        targets = [b"//anything", b"///p//x", b"//anything/../x"]
        # On the admin site "//" is "/", the console's page.
        for url, extra in ((self.url, [b"//"]), (self.admin_url, [])):
            for target in targets + extra:
                request = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target
                body = assert_json_error(self, await raw_exchange(url, request), b"404")
                self.assertEqual(body["code"], "not_found", (url, target))

    async def test_a_failure_nothing_caught_is_a_json_500(self) -> None:
        port = reactor.listenTCP(0, LoggingSite(_Broken(), reactor=reactor), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        request = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        body = assert_json_error(self, await raw_exchange(url, request), b"500")
        self.assertEqual(body, {"error": "internal server error", "code": "internal_error"})
        self.flushLoggedErrors(RuntimeError)
