"""The admin site's console: its JSON endpoints and token gate over HTTP, then every page in a real
browser against a real server with real images.

The browser is Debian's Chromium (``apt-get install chromium``; bin/test installs it), driven by
Playwright's sync API in a thread, so that the trial reactor goes on serving the server under test.
A page that logs any console error, or throws, fails its test.  With
``IMAGE_SERVER_SCREENSHOTS=1`` the browser tests save each page to ``docs/console/`` for
docs/console.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.internet.threads import deferToThread

from imageserver.admin import SESSION_COOKIE, THUMBNAIL
from tests.support import (
    WINE_DIR,
    WINE_HASH,
    ServerTestCase,
    distinct_jpeg,
    fixture,
    image_size,
    request,
    sleep,
)

CHROMIUM = "/usr/bin/chromium"
TOKEN = "console-test-token-4f1d"
SCREENSHOTS = os.environ.get("IMAGE_SERVER_SCREENSHOTS") == "1"
SHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "console")
# An attachment whose name is markup: the console must show it as text, and run nothing.
HOSTILE_NAME = "<img src=x onerror=window.__pwned=1>.txt"
# How long a browser waits for anything to appear, in milliseconds.
WAIT_MS = 20_000


def browse(url: str, script: Callable[[Any], Any]) -> Any:
    """Open ``url`` in a fresh headless Chromium, run ``script(page)``, and fail if the page
    logged a console error or threw.  Blocking: run it with `deferToThread`."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(url)
            result = script(page)
        finally:
            browser.close()
    if problems:
        raise AssertionError(f"the console logged errors: {problems}")
    return result


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def size(width: int, height: int) -> str:
    """A size as the console writes it."""
    return f"{width}\N{MULTIPLICATION SIGN}{height}"


def wait_page(page: Any, name: str) -> None:
    page.wait_for_selector(f"main[data-page={name}]")


def wait_images_loaded(page: Any, selector: str) -> list[list[int]]:
    """Wait until every image matching ``selector`` has loaded; their natural sizes."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete && i.naturalWidth > 0)",
        arg=selector,
    )
    sizes: list[list[int]] = page.eval_on_selector_all(
        selector, "images => images.map(i => [i.naturalWidth, i.naturalHeight])"
    )
    return sizes


class ConsoleTestCase(ServerTestCase):
    async def start_console(self, **overrides: Any) -> None:
        await self.start_server(**overrides)
        self.hashes: list[str] = []  # newest first
        for name in ("wine.jpg", "a.jpg", "wine.heic"):
            response = await self.upload(fixture(name))
            self.assertEqual(response.code, 200, response.body)
            self.hashes.insert(0, response.json()["hash"])
        await self.upload(fixture("a.png"), namespace="other")
        name = quote(HOSTILE_NAME, safe="")
        attached = await request("POST", f"{self.url}/p/{WINE_DIR}/{name}", data=b"notes")
        self.assertEqual(attached.code, 200, attached.body)
        made = await request("GET", f"{self.url}/p/{WINE_DIR}/w200.webp")
        self.assertEqual(made.code, 200)

    async def in_browser(self, fragment: str, script: Callable[[Any], Any]) -> Any:
        return await deferToThread(browse, f"{self.admin_url}/{fragment}", script)

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        return await request(method, self.admin_url + path, **kwargs)


class ConsoleApiTests(ConsoleTestCase):
    async def test_listings(self) -> None:
        await self.start_console()
        namespaces = (await self.api("GET", "/api/namespaces")).json()["namespaces"]
        self.assertEqual(
            [(n["name"], n["images"], n["complete"]) for n in namespaces],
            [("other", 1, True), ("p", 3, True)],
        )
        listing = (await self.api("GET", "/api/namespaces/p/images?page=1")).json()
        self.assertEqual(listing["total"], 3)
        self.assertEqual(sorted(image["hash"] for image in listing["images"]), sorted(self.hashes))
        wine = next(image for image in listing["images"] if image["hash"] == WINE_HASH)
        self.assertEqual((wine["info"]["width"], wine["info"]["height"]), (800, 600))
        empty = (await self.api("GET", "/api/namespaces/p/images?page=2")).json()
        self.assertEqual(empty["images"], [])
        image = (await self.api("GET", f"/api/images/p/{WINE_HASH}")).json()
        kinds = {file["name"]: file["kind"] for file in image["files"]}
        self.assertEqual(
            kinds,
            {
                "original": "original",
                "info.json": "info",
                "w200.webp": "variant",
                HOSTILE_NAME: "attachment",
            },
        )
        self.assertEqual(image["original"]["content_type"], "image/jpeg")
        self.assertEqual(image["original"]["bytes"], len(fixture("wine.jpg")))
        self.assertEqual(json.loads(image["info_json"])["hash"], WINE_HASH)
        for path in (
            "/api/images/p/0123456789abcdef0123456789abcdef",
            "/api/namespaces/tmp/images",
            "/api/namespaces/Bad/images",
        ):
            self.assert_error(await self.api("GET", path), 404, "no ")
        self.assert_error(await self.api("GET", "/api/namespaces/p/images?page=0"), 400, "page")

    async def test_stored_files_and_the_relay(self) -> None:
        await self.start_console()
        original = await self.api("GET", f"/files/p/{WINE_DIR}/original")
        self.assertEqual((original.code, original.body), (200, fixture("wine.jpg")))
        attachment = await self.api("GET", f"/files/p/{WINE_DIR}/{quote(HOSTILE_NAME, safe='')}")
        self.assertEqual((attachment.code, attachment.body), (200, b"notes"))
        self.assertEqual(attachment.header("X-Content-Type-Options"), "nosniff")
        missing = await self.api("GET", f"/files/p/{WINE_DIR}/x1.jpg")
        self.assert_error(missing, 404, "p/")
        made = await self.api("GET", f"/site/p/{WINE_DIR}/300x200-fit.webp")
        self.assertEqual((made.code, made.header("Content-Type")), (200, "image/webp"))
        self.assertTrue(made.header("Server-Timing").startswith("main;dur="))
        self.assertEqual(image_size(made.body), (267, 200, "WEBP"))
        refused = await self.api("GET", f"/site/p/{WINE_DIR}/x200-q60-gsmart.webp")
        self.assert_error(refused, 400, "x200-q60-gsmart.webp: write it x200-gsmart-q60.webp")
        self.assert_error(await self.api("GET", "/site/status_check"), 404, "the relay")

    async def test_overview_hides_secrets(self) -> None:
        await self.start_server(
            admin_token=TOKEN,
            webhook_url="http://127.0.0.1:9/hooks/s3cr3t-path",
            webhook_secret="webhook-s3cr3t",
        )
        overview = await self.api("GET", "/api/overview")
        for secret in (TOKEN, "s3cr3t"):
            self.assertNotIn(secret.encode(), overview.body)
        flags = {flag["flag"]: flag for flag in overview.json()["flags"]}
        self.assertEqual(flags["--admin-token"]["value"], "(hidden)")
        self.assertEqual(flags["--webhook-url"]["value"], "http://127.0.0.1/…")
        self.assertEqual((flags["--port"]["value"], flags["--port"]["changed"]), ("0", True))
        workers = overview.json()["workers"]
        self.assertEqual(len(workers["processes"]), 1)
        self.assertGreater(workers["processes"][0]["resident_bytes"], 0)

    async def test_token_gate(self) -> None:
        await self.start_server(admin_token=TOKEN)
        body = fixture("a.jpg")
        upload = "/api/upload/gate"
        anonymous = await self.api("POST", upload, data=body, headers={"X-Console": "1"})
        self.assert_error(anonymous, 401, "log in")
        wrong = await self.api("POST", "/api/login", data=_json({"token": TOKEN + "x"}))
        self.assert_error(wrong, 401, "wrong token")
        login = await self.api("POST", "/api/login", data=_json({"token": TOKEN}))
        self.assertEqual(login.code, 200)
        cookie = login.header("Set-Cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertNotIn(TOKEN, cookie)
        session = cookie.split(";")[0]
        self.assertTrue(session.startswith(SESSION_COOKIE.decode() + "="))
        # The cookie alone is not enough: a form of another origin cannot add X-Console.
        forged = await self.api("POST", upload, data=body, headers={"Cookie": session})
        self.assert_error(forged, 403, "missing the X-Console header")
        with_cookie = await self.api(
            "POST", upload, data=body, headers={"Cookie": session, "X-Console": "1"}
        )
        self.assertEqual(with_cookie.code, 200, with_cookie.body)
        self.assertEqual(with_cookie.json()["hash"], hashlib.md5(body).hexdigest())
        bearer = await self.api(
            "POST", upload, data=fixture("a.png"), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.assertEqual(bearer.code, 200, bearer.body)
        session_state = await self.api("GET", "/api/session", headers={"Cookie": session})
        self.assertEqual(
            session_state.json(),
            {"token_configured": True, "authenticated": True, "can_sign": False},
        )
        # Probes and metrics stay open.
        for path in ("/probe/live", "/probe/ready", "/metrics"):
            self.assertEqual((await self.api("GET", path)).code, 200, path)

    async def test_an_upload_over_the_limit_is_never_stored(self) -> None:
        """The admin site bounds bodies as the main site does: a body over
        ``--max-upload-bytes`` is counted, not kept, and refused."""
        await self.start_server(admin_token=TOKEN, max_upload_bytes=1000)
        refused = await self.api(
            "POST",
            "/api/upload/p",
            data=fixture("a.jpg"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        self.assert_error(refused, 413, "the body is over 1000 bytes")
        self.assertEqual(self.store_files(), [])
        self.assert_no_partial_files()

    async def test_no_token_no_uploads(self) -> None:
        await self.start_server()
        refused = await self.api(
            "POST", "/api/upload/p", data=fixture("a.jpg"), headers={"Authorization": "Bearer "}
        )
        self.assert_error(refused, 403, "the admin site has no --admin-token")
        login = await self.api("POST", "/api/login", data=_json({"token": ""}))
        self.assert_error(login, 403, "the admin site has no --admin-token")
        self.assertEqual(self.store_files(), [])

    async def test_signing(self) -> None:
        secrets = self.mktemp()
        with open(secrets, "w") as file:
            file.write("console-secret\n")
        await self.start_server(
            admin_token=TOKEN,
            signing_secrets_file=secrets,
            require_signature_for_reads=True,
            allowed_variants=("w100",),
        )
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        uploaded = await self.api("POST", "/api/upload/p", data=fixture("wine.jpg"), headers=bearer)
        self.assertEqual(uploaded.code, 200, uploaded.body)
        path = f"/p/{WINE_DIR}/x120-gsmart.jpg"
        self.assertEqual((await request("GET", self.url + path)).code, 401)
        asked = {"method": "GET", "path": path, "ttl": 60}
        signed = await self.api("POST", "/api/sign", data=_json(asked), headers=bearer)
        made = await request("GET", self.url + signed.json()["signed"])
        self.assertEqual(made.code, 200, made.body)
        too_long = dict(asked, ttl=3601)
        refused = await self.api("POST", "/api/sign", data=_json(too_long), headers=bearer)
        self.assert_error(refused, 400, "ttl: 1 to 3600 seconds")
        # The relay signs thumbnails for anyone, anything else for a logged-in user only.
        thumbnail = await self.api("GET", f"/site/p/{WINE_DIR}/{THUMBNAIL}")
        self.assertEqual(thumbnail.code, 200, thumbnail.body)
        other = f"/site/p/{WINE_DIR}/x90.jpg"
        self.assertEqual((await self.api("GET", other)).code, 401)
        self.assertEqual((await self.api("GET", other, headers=bearer)).code, 200)

    async def test_pages_are_locked_down(self) -> None:
        await self.start_server()
        index = await self.api("GET", "/")
        self.assertEqual(index.code, 200)
        self.assertIn("script-src 'self'", index.header("Content-Security-Policy"))
        self.assertIn(b'<script type="module" src="/console/app.js">', index.body)
        script = await self.api("GET", "/console/app.js")
        self.assertEqual(script.header("Content-Type"), "text/javascript; charset=utf-8")
        self.assertEqual((await self.api("GET", "/console/vendor/")).code, 404)


class ConsoleBrowserTests(ConsoleTestCase):
    async def test_every_page_reads_the_store(self) -> None:
        await self.start_console()
        hashes = self.hashes

        def script(page: Any) -> None:
            wait_page(page, "overview")
            page.click("a[href='#/namespaces']")
            wait_page(page, "namespaces")
            self.assertEqual(
                page.inner_text("[data-table=namespaces] tbody").split(), ["other", "1", "p", "3"]
            )
            # Read-only: no upload panel, nothing to log in to.
            self.assertEqual(page.locator("section.upload").count(), 0)
            self.assertEqual(page.inner_text("#session"), "read-only")
            screenshot(page, "namespaces")
            page.click("a[href='#/n/p']")
            wait_page(page, "namespace")
            links = page.eval_on_selector_all(".card", "cards => cards.map(c => c.hash)")
            self.assertEqual(links, [f"#/i/p/{image_hash}" for image_hash in hashes])
            self.assertEqual(wait_images_loaded(page, ".card img"), [[160, 160]] * 3)
            screenshot(page, "namespace")
            page.click(f"a[href='#/i/p/{WINE_HASH}']")
            wait_page(page, "image")
            original = page.inner_text("[data-out=original]")
            self.assertEqual(original, f"image/jpeg, 88 KB, {size(800, 600)}")
            self.assertIn(f'"hash":"{WINE_HASH}"', page.inner_text("[data-out=info]"))
            page.wait_for_function(
                "() => document.querySelector('tr[data-kind=variant] td:nth-child(4)')"
                ".textContent !== '—'"
            )
            variant = page.locator("tr[data-kind=variant] td").all_inner_texts()
            self.assertEqual(variant[1:4], ["w200.webp", "variant", size(200, 150)])
            attachment = page.locator("tr[data-kind=attachment] td").all_inner_texts()
            self.assertEqual(attachment[1:3], [HOSTILE_NAME, "attachment"])
            self.assertIsNone(page.evaluate("window.__pwned"))
            self.assertEqual(page.locator("img[src=x]").count(), 0)
            # No signing without the token.
            self.assertEqual(page.locator("[data-out=signed]").count(), 0)

        await self.in_browser("#/", script)

    async def test_url_builder_previews_variants(self) -> None:
        await self.start_console()

        def script(page: Any) -> list[str]:
            wait_page(page, "image")
            page.select_option("select[name=base]", "box")
            page.fill("input[name=width]", "300")
            page.fill("input[name=height]", "200")
            page.select_option("select[name=mode]", "fit")
            page.select_option("select[name=format]", "webp")
            page.wait_for_function(_SIZE, arg=[size(267, 200), "300x200-fit.webp"])
            made = [page.inner_text("[data-out=url]")]
            self.assertEqual(
                [page.evaluate("document.querySelector('[data-out=preview]').naturalWidth")], [267]
            )
            page.select_option("select[name=base]", "x")
            page.fill("input[name=width]", "100")
            page.select_option("select[name=position]", "smart")
            page.select_option("select[name=dpr]", "2")
            page.select_option("select[name=format]", "jpg")
            page.fill("input[name=quality]", "60")
            page.wait_for_function(_SIZE, arg=[size(200, 200), "x100-gsmart-dpr2-q60.jpg"])
            made.append(page.inner_text("[data-out=url]"))
            page.wait_for_selector("tr[data-kind=variant] >> text=x100-gsmart-dpr2-q60.jpg")
            screenshot(page, "image")
            return made

        urls = await self.in_browser(f"#/i/p/{WINE_HASH}", script)
        self.assertEqual(
            urls,
            [
                f"{self.url}/p/{WINE_DIR}/300x200-fit.webp",
                f"{self.url}/p/{WINE_DIR}/x100-gsmart-dpr2-q60.jpg",
            ],
        )
        self.assertTrue(os.path.exists(self.local("p", WINE_DIR, "x100-gsmart-dpr2-q60.jpg")))

    async def test_upload_by_the_file_picker_after_logging_in(self) -> None:
        secrets = self.mktemp()
        with open(secrets, "w") as file:
            file.write("console-secret\n")
        await self.start_console(admin_token=TOKEN, signing_secrets_file=secrets)
        picture = os.path.join(self.mktemp(), "cellar.jpg")
        os.makedirs(os.path.dirname(picture))
        with open(picture, "wb") as file:
            file.write(fixture("wine.jpg"))
        dropped = list(fixture("a.webp"))
        dropped_hash = hashlib.md5(fixture("a.webp")).hexdigest()

        def script(page: Any) -> str:
            wait_page(page, "namespaces")
            self.assertEqual(page.locator("section.upload").count(), 0)
            page.click("a[href='#/login']")
            wait_page(page, "login")
            page.fill("input[name=token]", TOKEN)
            screenshot(page, "login")
            page.click("button[type=submit]")
            page.wait_for_selector("section.upload")
            page.fill("input[name=namespace]", "fresh")
            page.set_input_files("input[type=file]", picture)
            page.wait_for_selector(f".uploads a[href='#/i/fresh/{WINE_HASH}']")
            page.eval_on_selector(".drop", _DROP, dropped)
            page.wait_for_selector(f".uploads a[href='#/i/fresh/{dropped_hash}']")
            self.assertEqual(wait_images_loaded(page, ".uploads img"), [[160, 160]] * 2)
            screenshot(page, "upload")
            page.click(f".uploads a[href='#/i/fresh/{WINE_HASH}']")
            wait_page(page, "image")
            page.get_by_role("button", name="Sign", exact=True).click()
            page.wait_for_function(
                "() => document.querySelector('[data-out=signed]').textContent.includes('X-Sig')"
            )
            signed: str = page.inner_text("[data-out=signed]")
            return signed

        signed = await self.in_browser("#/namespaces", script)
        self.assertTrue(signed.startswith(f"{self.url}/fresh/"), signed)
        for image_hash in (WINE_HASH, dropped_hash):
            stored = self.local("fresh", *_partition(image_hash), "original")
            self.assertTrue(os.path.exists(stored), stored)

    async def test_overview_charts_the_traffic(self) -> None:
        await self.start_console()
        for round_ in range(3):
            for width in range(10 + round_ * 10, 20 + round_ * 10):
                await request("GET", f"{self.url}/p/{WINE_DIR}/w{width}.jpg")
                await request("GET", f"{self.url}/p/{WINE_DIR}/w200.webp")
            await self.upload(distinct_jpeg(100 + round_))
            await sleep(2.1)
        pid = str(self.server.pool.worker_pids()[0])

        def script(page: Any) -> None:
            wait_page(page, "overview")
            # hits in green, p50 in purple
            for chart, colour in (("requests", [46, 125, 50]), ("latency", [106, 27, 154])):
                page.wait_for_function(_DRAWN, arg=[chart, colour])
            self.assertIn(pid, page.inner_text("[data-table=processes]"))
            flags = page.inner_text("[data-table=flags]")
            self.assertIn("--port\t0\tset", flags)
            screenshot(page, "overview")

        await self.in_browser("#/", script)


# Whether the builder's preview has loaded with this size, for a variant of this name.
_SIZE = """([size, name]) =>
  document.querySelector('[data-out=size]')?.textContent === size
  && document.querySelector('[data-out=name]').textContent === name"""


# Drop a file of these bytes on an element, as a drag from the desktop would.
_DROP = """(zone, bytes) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([new Uint8Array(bytes)], 'dropped.webp', { type: 'image/webp' }));
  const drop = { dataTransfer: transfer, bubbles: true, cancelable: true };
  zone.dispatchEvent(new DragEvent('drop', drop));
}"""


# Whether a chart's canvas holds enough pixels of a series' colour: the line is drawn.
_DRAWN = """([chart, colour]) => {
  const canvas = document.querySelector(`[data-chart=${chart}] canvas`);
  if (!canvas) return false;
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let found = 0;
  for (let i = 0; i < data.length; i += 4) {
    const near = Math.abs(data[i] - colour[0]) + Math.abs(data[i + 1] - colour[1])
      + Math.abs(data[i + 2] - colour[2]);
    if (data[i + 3] > 200 && near < 60) found += 1;
  }
  return found > 40;
}"""


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


def _partition(image_hash: str) -> list[str]:
    return [image_hash[0:3], image_hash[3:6], image_hash[6:9], image_hash[9:]]
