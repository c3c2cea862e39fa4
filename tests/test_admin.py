"""The admin site, ``/status_check``, routing of unknown paths, and a clean stop."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerTestCase, request


class AdminTests(ServerTestCase):
    async def test_probes(self) -> None:
        await self.start_server()
        for url in (
            f"{self.admin_url}/probe/live",
            f"{self.admin_url}/probe/ready",
            f"{self.url}/status_check",
        ):
            response = await request("GET", url)
            self.assertEqual((response.code, response.json()), (200, {"message": "OK"}), url)

    async def test_not_ready_while_stopping(self) -> None:
        await self.start_server()
        self.server.lifecycle.shutting_down = True
        response = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual((response.code, response.json()["message"]), (503, "Shutting down"))
        live = await request("GET", f"{self.admin_url}/probe/live")
        self.assertEqual(live.code, 200)

    async def test_not_ready_before_the_workers(self) -> None:
        await self.start_server()
        self.server.pool.ready = False
        response = await request("GET", f"{self.url}/status_check")
        self.assertEqual(response.code, 503)
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        expected = {"message": "Not ready: the image workers are starting"}
        self.assertEqual((ready.code, ready.json()), (503, expected))

    async def test_metrics_count_what_was_done(self) -> None:
        await self.start_server()
        await self.upload_wine()
        await self.upload(b"not an image at all")
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
        }
        self.assertEqual(samples[("image_server_new_image_request_total", ())], 2)
        self.assertEqual(samples[("image_server_new_image_request_failed_total", ())], 1)
        self.assertEqual(
            samples[("image_server_request_latency_seconds_count", (("handler", "new_image"),))],
            2,
        )
        self.assertEqual(samples[("image_server_workers", ())], 1)
        build = [key for key in samples if key[0] == "image_server_build_info"]
        self.assertEqual(dict(build[0][1])["version"], "0.1.0")

    async def test_every_series_is_documented(self) -> None:
        await self.start_server()
        await self.upload_wine()
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        families = text_string_to_metric_families(page)
        # prometheus_client adds a ``*_created`` timestamp beside each counter and histogram.
        names = {family.name for family in families if not family.name.endswith("_created")}
        self.assertIn("image_server_cpu_seconds", names)
        documented = Path(__file__).parent.parent.joinpath("docs", "metrics.md").read_text()
        missing = sorted(name for name in names if f"`{name}" not in documented)
        self.assertEqual(missing, [])

    async def test_admin_unknown_route_is_json_404(self) -> None:
        await self.start_server()
        response = await request("GET", f"{self.admin_url}/nothing")
        self.assert_error(response, 404, "404 page not found")

    async def test_batches_of_unknown_images_add_no_series(self) -> None:
        """Namespaces become labels only for images that exist."""
        await self.start_server()
        response = await request(
            "POST", f"{self.url}/zzzz1/000/000/000/00000000000000000000000/process"
        )
        self.assert_error(response, 404, "image zzzz1/")
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        self.assertNotIn("zzzz1", page)

    async def test_unknown_routes_are_json_404(self) -> None:
        await self.start_server()
        for method, path in [
            ("POST", "/Bad"),
            ("PUT", "/p"),
            ("GET", "/"),
            ("GET", "/p"),
            ("DELETE", "/p/6e0/072/682/e66287b662827da75b244a3/w1.jpg"),
        ]:
            response = await request(method, self.url + path)
            self.assert_error(response, 404, "404 page not found")
