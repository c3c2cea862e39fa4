"""The grammar beyond the Go server's: fit and pad, gravity and smart crop, focal points, DPR,
blur, ``.auto``, and ``--allowed-variants`` -- parsed, and made by the real server from images
built for each."""

from __future__ import annotations

import io
import os
from typing import Any

import pyvips
from PIL import Image, ImageFilter, ImageStat
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import InvalidParameter
from imageserver.names import is_variant_name, parse_name
from imageserver.negotiate import accepted_types, fallback_extension, preferred_extension
from imageserver.paths import image_directory
from imageserver.signature import Signer
from tests.support import WINE_DIR, ServerTestCase, fixture, image_size, request

CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
OLD_SAFARI = "image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
CURL = "*/*"


class GrammarTests(SynchronousTestCase):
    def test_every_row(self) -> None:
        cases: dict[str, dict[str, Any]] = {
            "h300.webp": {"width": 0, "height": 300},
            "300x200-fit.jpg": {"fit": "fit", "box": (300, 200)},
            "300x200-pad.png": {"fit": "pad"},
            "x200-gsmart.webp": {"gravity": "smart"},
            "300x200-gne.jpg": {"gravity": "ne"},
            "x200-fp30x60.jpg": {"focus": (30, 60)},
            "w200-dpr2.jpg": {"dpr": 2, "box": (400, 0)},
            "300x200-pad-bg000000.jpg": {"fit": "pad", "background": "000000"},
            "w32-blur50.webp": {"blur": 50},
            "x200-gsmart-q60.webp": {"gravity": "smart", "quality": 60},
            "x200.auto": {"extension": "auto", "output_format": None},
            "300x200-pad-dpr3-bg00ff00-blur5-q40.png": {"dpr": 3, "blur": 5, "quality": 40},
        }
        for name, expected in cases.items():
            variant = parse_name(name)
            self.assertFalse(variant.custom, name)
            for field, value in expected.items():
                self.assertEqual(getattr(variant, field), value, (name, field))

    def test_go_names_mean_what_they_did(self) -> None:
        for name, size in {
            "w200.jpg": (200, 0),
            "x200-q50.jpg": (200, 200),
            "300x400.jpg": (300, 400),
            "w0200.jpg": (200, 0),
            "full_size-q10.png": (0, 0),
        }.items():
            variant = parse_name(name)
            self.assertEqual((variant.width, variant.height), size, name)
            self.assertEqual(
                (variant.fit, variant.gravity, variant.dpr, variant.blur), ("", "", 1, 0)
            )

    def test_out_of_order_names_the_canonical_spelling(self) -> None:
        for name, canonical in {
            "x200-q60-gsmart.webp": "x200-gsmart-q60.webp",
            "300x200-bg000000-pad.jpg": "300x200-pad-bg000000.jpg",
            "w32-blur50-dpr2.webp": "w32-dpr2-blur50.webp",
            "x200-fp030x60.jpg": "x200-fp30x60.jpg",
            "x200-bgFFFFFF.jpg": "x200-bgffffff.jpg",
        }.items():
            error = self.assertRaises(InvalidParameter, parse_name, name)
            self.assertIn(f"write it {canonical}", error.message)

    def test_invalid_values_name_the_part(self) -> None:
        for name, part in {
            "x200-gfoo.jpg": "-gfoo",
            "x200-fp101x0.jpg": "-fp101x0",
            "w200-dpr4.jpg": "-dpr4",
            "w200-blur0.jpg": "-blur0",
            "w200-blur101.jpg": "-blur101",
            "w200-fit.jpg": "-fit",
            "x200-pad.jpg": "-pad",
            "300x200-fit-pad.jpg": "-fit and -pad",
            "w200-gn.jpg": "-g",
            "300x200-fit-fp1x1.jpg": "-fp",
            "x200-gn-fp1x1.jpg": "-g and -fp",
            "full_size-dpr2.png": "-dpr",
            "x200-q5-q6.jpg": "-q",
            "x200-bg12345.jpg": "-bg12345",
            "w600-dpr2.jpg": "1200 pixels",
        }.items():
            error = self.assertRaises(InvalidParameter, parse_name, name)
            self.assertIn(part, error.message, name)

    def test_unknown_modifiers_make_a_custom_name(self) -> None:
        for name in ("w200-notes.txt", "x200-blue.png", "300x200-fitness.jpg"):
            self.assertTrue(parse_name(name).custom, name)
            self.assertFalse(is_variant_name(name), name)
        for name in ("x200-gsmart.webp", "x200.auto", "x200-gfoo.jpg", "w200-dpr4.jpg"):
            self.assertTrue(is_variant_name(name), name)


class NegotiationTests(SynchronousTestCase):
    def test_accepted_types(self) -> None:
        self.assertEqual(
            accepted_types("image/avif;q=0, image/WebP ;q=0.5,*/*"), {"image/webp", "*/*"}
        )
        self.assertEqual(accepted_types("image/avif;q=x"), set())

    def test_preference(self) -> None:
        self.assertEqual(preferred_extension(CHROME, ()), "avif")
        self.assertEqual(preferred_extension(OLD_SAFARI, ()), "webp")
        self.assertEqual(preferred_extension(CHROME, ("jpg", "webp")), "webp")
        self.assertIsNone(preferred_extension(CURL, ()))
        self.assertEqual(fallback_extension(alpha=False, allowed=()), "jpg")
        self.assertEqual(fallback_extension(alpha=True, allowed=()), "png")
        self.assertEqual(fallback_extension(alpha=True, allowed=("jpg",)), "jpg")
        self.assertIsNone(fallback_extension(alpha=False, allowed=("gif",)))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def thirds(width: int, height: int) -> bytes:
    """Red, green and blue thirds, across a wide image or down a tall one."""
    image = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for index, colour in enumerate(colours):
        if width >= height:
            box = (index * width // 3, 0, (index + 1) * width // 3, height)
        else:
            box = (0, index * height // 3, width, (index + 1) * height // 3)
        image.paste(colour, box)
    return png(image)


def edge_detail() -> bytes:
    """A flat grey 600x200 image whose only detail (fine stripes) is at its right edge."""
    image = Image.new("RGB", (600, 200), (128, 128, 128))
    for x in range(520, 600, 4):
        image.paste((255, 255, 0), (x, 0, x + 2, 200))
        image.paste((20, 0, 90), (x + 2, 0, x + 4, 200))
    return png(image)


def dominant(body: bytes, x: int, y: int) -> str:
    """Which of red, green or blue the pixel at (x, y) is."""
    with Image.open(io.BytesIO(body)) as image:
        pixel = image.convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    return "rgb"[max(range(3), key=lambda band: pixel[band])]


def detail(body: bytes) -> float:
    """How much fine detail an image has: the spread of its edge-filtered pixels (without the
    outermost ones, which the filter marks as edges)."""
    with Image.open(io.BytesIO(body)) as image:
        edges = image.convert("L").filter(ImageFilter.FIND_EDGES)
        inside = edges.crop((1, 1, edges.width - 1, edges.height - 1))
        return float(ImageStat.Stat(inside).stddev[0])


class GrammarServerTests(ServerTestCase):
    async def upload_built(self, body: bytes) -> str:
        response = await self.upload(body)
        self.assertEqual(response.code, 200, response.body)
        return f"{self.url}/{image_directory('p', response.json()['hash'])}"

    async def get(self, url: str, **headers: str) -> Any:
        response = await request("GET", url, headers=headers)
        self.assertEqual(response.code, 200, (url, response.body[:300]))
        return response

    async def test_sizes(self) -> None:
        await self.start_server()
        await self.upload_wine()
        base = f"{self.url}/p/{WINE_DIR}"  # 800x600
        for name, size in {
            "h300.webp": (400, 300),
            "300x200-fit.jpg": (267, 200),
            "900x900-fit.png": (800, 600),  # never enlarged
            "300x200-pad.png": (300, 200),
            "x200-gsmart.webp": (200, 200),
            "x200-fp30x60.jpg": (200, 200),
            "w200-dpr2.jpg": (400, 300),
            "x100-dpr3.png": (300, 300),
            "w32-blur50.webp": (32, 24),
            "300x200-pad-bg000000.jpg": (300, 200),
            "300x200-gne.jpg": (300, 200),
        }.items():
            response = await self.get(f"{base}/{name}")
            self.assertEqual(image_size(response.body)[:2], size, name)

    async def test_smart_crop_keeps_the_detail_the_centre_loses(self) -> None:
        await self.start_server()
        base = await self.upload_built(edge_detail())
        smart = await self.get(f"{base}/x200-gsmart.png")
        centre = await self.get(f"{base}/x200.png")
        self.assertGreater(detail(smart.body), 10 * max(detail(centre.body), 1.0))

    async def test_gravity_keeps_the_named_side(self) -> None:
        await self.start_server()
        wide = await self.upload_built(thirds(600, 200))
        tall = await self.upload_built(thirds(200, 600))
        cases = [  # (image, name, a point of the output, the colour that must be there)
            (wide, "x200-gw.png", (100, 100), "r"),
            (wide, "x200-ge.png", (100, 100), "b"),
            (wide, "x200.png", (100, 100), "g"),
            (wide, "x200-gsw.png", (100, 100), "r"),
            (wide, "x200-gne.png", (100, 100), "b"),
            (tall, "x200-gn.png", (100, 100), "r"),
            (tall, "x200-gs.png", (100, 100), "b"),
            (tall, "x200-gnw.png", (100, 100), "r"),
            (tall, "x200-gse.png", (100, 100), "b"),
            (wide, "x200-fp5x50.png", (100, 100), "r"),
            (wide, "x200-fp95x50.png", (100, 100), "b"),
            (wide, "x200-fp50x50.png", (100, 100), "g"),
            (tall, "x200-fp50x0.png", (100, 100), "r"),
            (tall, "x200-fp50x100.png", (100, 100), "b"),
        ]
        for base, name, (x, y), colour in cases:
            response = await self.get(f"{base}/{name}")
            self.assertEqual(dominant(response.body, x, y), colour, name)

    async def test_focal_point_moves_the_crop(self) -> None:
        """A 600x200 source cut to 200x200 at 40 % across: centred on x=240, so the crop runs
        from 140 to 340, and its x=60 is the source's x=200, where green starts."""
        await self.start_server()
        base = await self.upload_built(thirds(600, 200))
        response = await self.get(f"{base}/x200-fp40x50.png")
        self.assertEqual(dominant(response.body, 58, 100), "r")
        self.assertEqual(dominant(response.body, 62, 100), "g")

    async def test_padding_is_the_background(self) -> None:
        await self.start_server()
        await self.upload_wine()
        base = f"{self.url}/p/{WINE_DIR}"  # 800x600 fits 300x200 as 267x200: 16 pixels each side
        with Image.open(io.BytesIO((await self.get(f"{base}/300x200-pad.png")).body)) as image:
            self.assertEqual(image.convert("RGBA").getpixel((5, 100))[3], 0)  # transparent
            self.assertEqual(image.convert("RGBA").getpixel((150, 100))[3], 255)
        for name, colour in {
            "300x200-pad.jpg": (255, 255, 255),
            "300x200-pad-bg000000.jpg": (0, 0, 0),
            "300x200-pad-bgff0000.webp": (255, 0, 0),
        }.items():
            with Image.open(io.BytesIO((await self.get(f"{base}/{name}")).body)) as image:
                for x in (2, 297):
                    pixel = image.convert("RGB").getpixel((x, 100))
                    assert isinstance(pixel, tuple)
                    for band, expected in zip(pixel, colour, strict=True):
                        self.assertLess(abs(band - expected), 8, (name, x, pixel))

    async def test_blur_lowers_fine_detail(self) -> None:
        await self.start_server()
        await self.upload_wine()
        base = f"{self.url}/p/{WINE_DIR}"
        sharp = await self.get(f"{base}/w200.png")
        blurred = await self.get(f"{base}/w200-blur30.png")
        self.assertEqual(image_size(blurred.body)[:2], (200, 150))
        self.assertLess(detail(blurred.body), detail(sharp.body) / 3)

    async def test_transparency_is_flattened_on_the_background_for_jpeg(self) -> None:
        """Every source format with alpha: a half-transparent dark blue is flattened on white."""
        await self.start_server()
        colour = (0, 0, 100, 128)
        sources = {}
        for image_format in ("PNG", "WEBP", "GIF"):
            buffer = io.BytesIO()
            image = Image.new("RGBA", (64, 48), colour)
            if image_format == "GIF":
                image = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
                image.paste((0, 0, 100, 255), (0, 0, 32, 48))  # GIF alpha is all or nothing
            image.save(
                buffer, image_format, **({"lossless": True} if image_format == "WEBP" else {})
            )
            sources[image_format] = buffer.getvalue()
        sources["HEIC"] = fixture("test-hevc-alpha.heic")  # alpha 128 everywhere
        buffer = io.BytesIO()
        Image.new("RGBA", (64, 48), colour).save(buffer, "TIFF")
        sources["TIFF"] = buffer.getvalue()
        half = (
            pyvips.Image.black(64, 48).new_from_image([0, 0, 100, 128]).copy(interpretation="srgb")
        )
        sources["AVIF"] = half.heifsave_buffer(compression="av1", effort=0, lossless=True)
        for image_format, body in sources.items():
            base = await self.upload_built(body)
            on_white = self.pixel((await self.get(f"{base}/w40.jpg")).body, 36, 20)
            on_black = self.pixel((await self.get(f"{base}/w40-bg000000.jpg")).body, 36, 20)
            # Half (or wholly) transparent: the background shows through by half (or all of it).
            for white, black in zip(on_white, on_black, strict=True):
                self.assertGreater(white - black, 100, (image_format, on_white, on_black))

    def pixel(self, body: bytes, x: int, y: int) -> tuple[int, ...]:
        with Image.open(io.BytesIO(body)) as image:
            found = image.convert("RGB").getpixel((x, y))
        assert isinstance(found, tuple)
        return found

    async def test_auto_follows_accept(self) -> None:
        await self.start_server()
        await self.upload_wine()
        base = f"{self.url}/p/{WINE_DIR}"
        for accept, content_type, concrete in (
            (CHROME, "image/avif", "x200.avif"),
            (OLD_SAFARI, "image/webp", "x200.webp"),
            (CURL, "image/jpeg", "x200.jpg"),
        ):
            response = await self.get(f"{base}/x200.auto", Accept=accept)
            self.assertEqual(response.header("Content-Type"), content_type)
            self.assertEqual(response.header("Vary"), "Accept")
            self.assertEqual(response.header("Content-Location"), concrete)
            self.assertEqual(
                response.header("Cache-Control"), "public, max-age=31536000, immutable"
            )
            direct = await self.get(f"{base}/{concrete}")
            self.assertEqual(direct.body, response.body)
            self.assertEqual(direct.header("ETag"), response.header("ETag"))
        directory = self.local("p", *WINE_DIR.split("/"))
        made = sorted(name for name in os.listdir(directory) if name.startswith("x200"))
        self.assertEqual(made, ["x200.avif", "x200.jpg", "x200.webp"])
        processed = await self.processed()
        again = await self.get(f"{base}/x200.auto", Accept=CHROME)  # a CDN's second request
        self.assertEqual(again.header("Content-Location"), "x200.avif")
        self.assertEqual(await self.processed(), processed)
        revalidated = await request(
            "GET",
            f"{base}/x200.auto",
            headers={"Accept": CHROME, "If-None-Match": again.header("ETag")},
        )
        self.assertEqual((revalidated.code, revalidated.header("Vary")), (304, "Accept"))

    async def processed(self) -> float:
        """The variants made so far, from the server's own counter."""
        metrics = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("image_server_processing_version_ok_total")
        )

    async def test_auto_keeps_transparency_for_old_clients(self) -> None:
        await self.start_server()
        base = await self.upload_built(png(Image.new("RGBA", (40, 30), (0, 0, 255, 60))))
        response = await self.get(f"{base}/w20.auto", Accept=CURL)
        self.assertEqual(response.header("Content-Type"), "image/png")
        self.assertEqual(response.header("Content-Location"), "w20.png")

    async def test_auto_is_per_request_only(self) -> None:
        await self.start_server()
        await self.upload_wine()
        batch = await request("POST", f"{self.url}/p/{WINE_DIR}/process?outputs=x200.auto")
        self.assert_error(batch, 400, "x200.auto: .auto is chosen per request")
        upload = await self.upload(fixture("wine.jpg"), query="?outputs=w10.auto")
        self.assert_error(upload, 400, "w10.auto: .auto is chosen per request")
        for name in ("x200-gsmart.webp", "x200.auto", "w32-blur50.webp"):
            posted = await request("POST", f"{self.url}/p/{WINE_DIR}/{name}", data=b"mine")
            self.assert_error(posted, 400, f"an attachment cannot be named {name!r}")

    async def test_bad_names_are_400s(self) -> None:
        await self.start_server()
        await self.upload_wine()
        for name, message in {
            "x200-q60-gsmart.webp": "x200-q60-gsmart.webp: write it x200-gsmart-q60.webp",
            "x200-gfoo.jpg": "x200-gfoo.jpg: -gfoo is no gravity",
            "w200-dpr4.jpg": "w200-dpr4.jpg: -dpr4",
        }.items():
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/{name}")
            self.assert_error(response, 400, message)
        self.assert_no_partial_files()


class AllowListTests(ServerTestCase):
    async def start_locked(self) -> None:
        self.secrets_file = os.path.abspath(self.mktemp())
        with open(self.secrets_file, "w") as secrets:
            secrets.write("a-secret\n")
        await self.start_server(
            allowed_variants=("w200", "x100*", "300x200-fit"),
            signing_secrets_file=self.secrets_file,
        )
        await self.upload_wine()

    def signed(self, method: str, path: str) -> str:
        return Signer("a-secret", self.url).sign_url(method, path, 600)

    async def test_only_the_listed_variants_are_made(self) -> None:
        await self.start_locked()
        base = f"{self.url}/p/{WINE_DIR}"
        for name in ("w200.jpg", "w200.auto", "x100.png", "x100-gsmart.webp", "300x200-fit.jpg"):
            self.assertEqual((await request("GET", f"{base}/{name}")).code, 200, name)
        for name, made in {
            "w300.jpg": "w300.jpg",
            "x200.png": "x200.png",
            "300x200.jpg": "300x200.jpg",
            "full_size.jpg": "full_size.jpg",
            "made-up.png": "full_size.png",
        }.items():
            response = await request("GET", f"{base}/{name}")
            self.assert_error(response, 403, made)
            self.assertEqual(response.json()["code"], "variant_not_allowed")
        for name in ("original", "info.json"):
            self.assertEqual((await request("GET", f"{base}/{name}")).code, 200, name)
        attached = await request("POST", f"{base}/notes.txt", data=b"notes")
        self.assertEqual(attached.code, 200)
        self.assertEqual((await request("GET", f"{base}/notes.txt")).body, b"notes")
        batch = await request("POST", f"{base}/process?outputs=w200.webp,w300.jpg")
        self.assert_error(batch, 403, "w300.jpg")
        upload = await self.upload(fixture("wine.jpg"), query="?outputs=x50.jpg")
        self.assert_error(upload, 403, "x50.jpg")

    async def test_a_signed_request_may_ask_for_any_variant(self) -> None:
        await self.start_locked()
        path = f"/p/{WINE_DIR}/w300.jpg"
        signed = await request("GET", self.signed("GET", path))
        self.assertEqual(image_size(signed.body)[:2], (300, 225))
        unsigned = await request("GET", self.url + path)  # stored now, still not for everyone
        self.assertEqual(unsigned.code, 403)
        batch = self.signed("POST", f"/p/{WINE_DIR}/process") + "&outputs=x300.jpg"
        self.assertEqual((await request("POST", batch)).code, 200)
        self.assertEqual((await request("GET", f"{self.url}/p/{WINE_DIR}/x300.jpg")).code, 403)


class GrammarBatchAndSignatureTests(ServerTestCase):
    async def test_process_makes_the_new_names(self) -> None:
        await self.start_server()
        await self.upload_wine()
        names = ["x200-gsmart.webp", "300x200-pad.png", "w32-blur50.webp", "h100-dpr2.jpg"]
        query = "?outputs=" + ",".join(names)
        response = await request("POST", f"{self.url}/p/{WINE_DIR}/process{query}")
        self.assertEqual(response.code, 200, response.body)
        directory = self.local("p", *WINE_DIR.split("/"))
        for name in names:
            self.assertTrue(os.path.exists(os.path.join(directory, name)), name)
        made = await request("GET", f"{self.url}/p/{WINE_DIR}/h100-dpr2.jpg")
        self.assertEqual(image_size(made.body)[:2], (267, 200))

    async def test_a_signed_auto_url_covers_the_format_chosen(self) -> None:
        secrets = os.path.abspath(self.mktemp())
        with open(secrets, "w") as file:
            file.write("a-secret\n")
        await self.start_server(require_signature_for_reads=True, signing_secrets_file=secrets)
        signer = Signer("a-secret", self.url)
        upload = await request("POST", signer.sign_url("POST", "/p", 600), data=fixture("wine.jpg"))
        self.assertEqual(upload.code, 200, upload.body)
        url = signer.sign_url("GET", f"/p/{WINE_DIR}/x200.auto", 600)
        for accept, content_type in ((CHROME, "image/avif"), (CURL, "image/jpeg")):
            response = await request("GET", url, headers={"Accept": accept})
            self.assertEqual(response.code, 200, response.body)
            self.assertEqual(response.header("Content-Type"), content_type)
        unsigned = await request("GET", f"{self.url}/p/{WINE_DIR}/x200.auto")
        self.assertEqual(unsigned.code, 401)
