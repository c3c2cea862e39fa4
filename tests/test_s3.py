"""S3 as the durable store, against moto on 127.0.0.1 with signatures checked (issue 3)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults

from imageserver.backoff import Backoff
from imageserver.collector import GarbageCollector
from imageserver.paths import partition
from imageserver.s3 import Bucket, ChainCredentials, S3Client, S3Error
from imageserver.service import ImageServer
from tests.processes import IMAGE_SERVER, free_port, start_process
from tests.s3support import FaultyProxy, moto
from tests.support import (
    WINE_DIR,
    WINE_HASH,
    ServerTestCase,
    fixture,
    image_size,
    request,
)

WINE_KEY = f"p/{WINE_DIR}"


class S3TestCase(ServerTestCase):
    async def start_s3_server(
        self, endpoint: str = "", secret: str = "", bucket: str = "", **overrides: Any
    ):  # type: ignore[no-untyped-def]
        self.moto = moto()
        self.bucket = bucket or self.moto.new_bucket()
        server = await self.start_server(
            aws_bucket=self.bucket,
            aws_region="us-east-1",
            s3_endpoint=endpoint or self.moto.endpoint,
            aws_access_key_id=self.moto.access_key,
            aws_secret_key=secret or self.moto.secret_key,
            **overrides,
        )
        server.uploads.quick_retries = Backoff(first=0.05, factor=1.0, retries=2)
        server.uploads.background_retries = Backoff(first=0.1, factor=2.0, longest=0.2)
        return server

    def objects(self) -> dict[str, dict[str, Any]]:
        return self.moto.objects(self.bucket)


class UploadTests(S3TestCase):
    async def test_upload_stores_everything_before_answering(self) -> None:
        await self.start_s3_server()
        response = await self.upload(fixture("wine.jpg"), query="?outputs=x100.jpg,x100.webp")
        self.assertEqual(response.code, 200)
        stored = self.objects()
        self.assertEqual(
            sorted(stored),
            [f"{WINE_KEY}/{n}" for n in ("info.json", "original", "x100.jpg", "x100.webp")],
        )
        self.assertEqual(stored[f"{WINE_KEY}/original"]["body"], fixture("wine.jpg"))
        types = {key.rsplit("/", 1)[1]: item["content_type"] for key, item in stored.items()}
        self.assertEqual(
            types,
            {
                "original": "image/jpeg",
                "info.json": "application/json",
                "x100.jpg": "image/jpeg",
                "x100.webp": "image/webp",
            },
        )
        for item in stored.values():
            self.assertEqual(item["cache_control"], "public, max-age=31536000, immutable")
        self.assertEqual(self.server.uploads.pending, 0)

    async def test_a_failing_batch_still_stores_the_outputs_it_made(self) -> None:
        """Of a 4x4000 source, w1000.png would be 1000x1000000 and fails in the worker (its name
        parses); w1.png is made, and reaches the bucket though the answer is the 400."""
        from PIL import Image

        await self.start_s3_server()
        tall = io.BytesIO()
        Image.new("RGB", (4, 4000), "blue").save(tall, "PNG")
        response = await self.upload(tall.getvalue(), query="?outputs=w1.png,w1000.png")
        self.assert_error(response, 400, "the variant would be 1000x1000000, over the maximum")
        digest = hashlib.md5(tall.getvalue()).hexdigest()
        directory = partition(digest)
        made = f"p/{directory}/w1.png"
        await self.wait_for(lambda: made in self.objects(), "w1.png in the bucket")
        with open(self.local(made), "rb") as local:
            self.assertEqual(self.objects()[made]["body"], local.read())
        self.assertNotIn(f"p/{directory}/w1000.png", self.objects())
        await self.wait_for(lambda: self.server.uploads.pending == 0, "no pending upload")

    async def test_odd_keys(self) -> None:
        """A base path and an attachment name with spaces, '+' and unicode round-trip exactly."""
        await self.start_s3_server(remote_base_path="my images+ü/")
        await self.upload_wine()
        name = "receipt no+1 für.pdf"
        url = f"{self.url}/p/{WINE_DIR}/" + "receipt%20no%2B1%20f%C3%BCr.pdf"
        response = await request("POST", url, data=b"%PDF-1.4")
        self.assertEqual(response.code, 200)
        stored = self.objects()
        self.assertIn(f"my images+ü/{WINE_KEY}/{name}", stored)
        self.assertIn(f"my images+ü/{WINE_KEY}/original", stored)
        os.remove(self.local("p", WINE_DIR, name))
        served = await request("GET", url)
        self.assertEqual(served.body, b"%PDF-1.4")

    async def test_variant_made_by_a_get_is_uploaded_in_the_background(self) -> None:
        await self.start_s3_server()
        await self.upload_wine()
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w120.jpg")
        self.assertEqual(response.code, 200)
        await self.wait_for(lambda: f"{WINE_KEY}/w120.jpg" in self.objects(), "the upload")
        self.assertEqual(self.objects()[f"{WINE_KEY}/w120.jpg"]["body"], response.body)

    async def test_a_5xx_twice_then_success(self) -> None:
        moto_server = moto()
        proxy = FaultyProxy(self, moto_server.endpoint)
        await self.start_s3_server(endpoint=proxy.endpoint)
        proxy.fail("PUT", 2, status=500)
        await self.upload_wine()
        self.assertIn(f"{WINE_KEY}/original", self.objects())
        self.assertEqual(proxy.puts_of("/original") + proxy.puts_of("/info.json"), 4)
        self.assertEqual(self.server.uploads.pending, 0)
        # Bodies stream from disk unhashed, and the signature says so (AWS checks it; moto not).
        self.assertEqual(set(proxy.payload_hashes), {"UNSIGNED-PAYLOAD"})

    async def test_wrong_secret(self) -> None:
        """Every request is refused (403): uploads are kept locally and queued; the instance stays
        ready, and says why the bucket is out of reach."""
        await self.start_s3_server(secret="not the secret")
        await self.wait_for(lambda: self.server.remote.state != "unchecked", "the first check")
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual(ready.code, 200)
        self.assertTrue(
            ready.json()["bucket"].startswith("unreachable: S3 Http403 (403): "),
            ready.json(),
        )
        response = await self.upload(fixture("wine.jpg"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.objects(), {})
        self.assertTrue(os.path.isfile(self.local("p", WINE_DIR, "original")))
        self.assertEqual(self.server.uploads.pending, 2)
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        self.assertIn('image_server_s3_upload_failures_total{code="SignatureDoesNotMatch"}', page)
        self.assertIn("image_server_s3_uploads_pending 2.0", page)

    async def test_unreachable_bucket_at_start(self) -> None:
        """The server starts, takes uploads and serves local files, and stays ready: readiness is
        the instance's own state, the bucket's is reported beside it."""
        await self.start_s3_server(endpoint=f"http://127.0.0.1:{free_port()}")
        await self.wait_for(lambda: self.server.remote.state != "unchecked", "the first check")
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual(ready.code, 200)
        self.assertEqual(ready.json()["message"], "OK")
        self.assertTrue(ready.json()["bucket"].startswith("unreachable: "), ready.json())
        status = await request("GET", f"{self.url}/status_check")
        self.assertEqual((status.code, status.json()), (200, {"message": "OK"}))
        await self.upload_wine()
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w100.jpg")
        self.assertEqual(response.code, 200)
        self.assertEqual((await request("GET", f"{self.url}/p/{WINE_DIR}/original")).code, 200)

    async def test_nothing_lost_across_a_restart(self) -> None:
        """Uploads failing when the server stops are made after it starts again."""
        moto_server = moto()
        proxy = FaultyProxy(self, moto_server.endpoint)
        await self.start_s3_server(endpoint=proxy.endpoint)
        proxy.fail("PUT", 1000, status=503)
        await self.upload(fixture("wine.jpg"), query="?outputs=x50.jpg")
        self.assertEqual(self.server.uploads.pending, 3)
        await self.server.stopService()
        self.assertEqual(self.objects(), {})
        base = self.base_path
        await self.start_s3_server(bucket=self.bucket, local_base_path=base)
        await self.wait_for(lambda: self.server.uploads.pending == 0, "the journal to drain")
        self.assertEqual(len(self.objects()), 3)


class RaceTests(S3TestCase):
    """Timings that used to lose data, made deterministic by a proxy that holds requests."""

    async def test_a_slow_read_back_never_replaces_a_newer_upload(self) -> None:
        proxy = FaultyProxy(self, moto().endpoint)
        await self.start_s3_server(endpoint=proxy.endpoint)
        url = f"{self.url}/p/{WINE_DIR}/notes.txt"
        await request("POST", url, data=b"version 1")
        os.remove(self.local("p", WINE_DIR, "notes.txt"))
        release = proxy.hold("GET")
        reading = ensureDeferred(request("GET", url))
        await self.wait_for(lambda: proxy.gets_of("/notes.txt") == 1, "the read-back to be held")
        del proxy.gates[b"GET"]
        self.assertEqual((await request("POST", url, data=b"version 2")).code, 200)
        release.callback(None)
        await reading
        with open(self.local("p", WINE_DIR, "notes.txt"), "rb") as stored:
            self.assertEqual(stored.read(), b"version 2")
        self.assertEqual(self.objects()[f"{WINE_KEY}/notes.txt"]["body"], b"version 2")
        self.assertEqual(self.server.uploads.pending, 0)

    async def test_uploads_go_on_when_the_client_leaves(self) -> None:
        proxy = FaultyProxy(self, moto().endpoint)
        await self.start_s3_server(endpoint=proxy.endpoint)
        release = proxy.hold("PUT")
        leaving = ensureDeferred(self.upload(fixture("wine.jpg")))
        await self.wait_for(lambda: proxy.puts_of("/original") == 1, "the upload to start")
        leaving.cancel()
        self.failureResultOf(leaving)
        release.callback(None)
        await self.wait_for(lambda: self.server.uploads.pending == 0, "the uploads to finish")
        self.assertIn(f"{WINE_KEY}/original", self.objects())

    async def test_no_credentials_anywhere(self) -> None:
        """The AWS chain finds nothing: uploads wait in the journal, ready says why."""
        self.moto = moto()
        self.bucket = self.moto.new_bucket()
        environment = {
            name: value for name, value in os.environ.items() if not name.startswith("AWS_")
        }
        environment.update(
            AWS_EC2_METADATA_DISABLED="true",
            AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
            AWS_CONFIG_FILE="/nonexistent",
        )
        self.patch(os, "environ", environment)
        await self.start_server(
            aws_bucket=self.bucket, s3_endpoint=self.moto.endpoint, aws_region="us-east-1"
        )
        self.server.uploads.quick_retries = Backoff(retries=0)
        await self.wait_for(lambda: self.server.remote.state != "unchecked", "the check")
        ready = await request("GET", f"{self.admin_url}/probe/ready")
        self.assertEqual(ready.code, 200)
        self.assertRegex(ready.json()["bucket"], r"^unreachable: .*credentials")
        await self.upload_wine()
        self.assertEqual(self.server.uploads.pending, 2)
        page = (await request("GET", f"{self.admin_url}/metrics")).body.decode()
        self.assertIn('image_server_s3_upload_failures_total{code="NoCredentials"}', page)


class ReadBackTests(S3TestCase):
    async def test_wiped_local_store_loses_nothing(self) -> None:
        await self.start_s3_server()
        await self.upload(fixture("wine.jpg"), query="?outputs=x100.jpg")
        made = (await request("GET", f"{self.url}/p/{WINE_DIR}/x100.jpg")).body
        shutil.rmtree(self.local("p"))
        for name in ("original", "info.json", "x100.jpg"):
            response = await request("GET", f"{self.url}/p/{WINE_DIR}/{name}")
            self.assertEqual(response.code, 200, name)
        self.assertEqual((await request("GET", f"{self.url}/p/{WINE_DIR}/x100.jpg")).body, made)
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w60.jpg")
        self.assertEqual(image_size(response.body)[:2], (60, 45))

    async def test_variant_in_the_bucket_is_never_regenerated(self) -> None:
        await self.start_s3_server()
        await self.upload_wine()
        marker = fixture("a.jpg")
        self.moto.client().put_object(Bucket=self.bucket, Key=f"{WINE_KEY}/w77.jpg", Body=marker)
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w77.jpg")
        self.assertEqual(response.body, marker)

    async def test_concurrent_misses_share_one_read(self) -> None:
        moto_server = moto()
        proxy = FaultyProxy(self, moto_server.endpoint)
        await self.start_s3_server(endpoint=proxy.endpoint)
        await self.upload_wine()
        shutil.rmtree(self.local("p"))
        responses = await gatherResults(
            [ensureDeferred(request("GET", f"{self.url}/p/{WINE_DIR}/original")) for _ in range(10)]
        )
        self.assertEqual({r.body for r in responses}, {fixture("wine.jpg")})
        self.assertEqual(proxy.gets_of(f"{WINE_DIR}/original"), 1)

    async def test_unknown_image(self) -> None:
        await self.start_s3_server()
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w10.jpg")
        self.assert_error(response, 404, f"image p/{WINE_HASH} does not exist")

    async def test_bucket_written_by_the_go_server(self) -> None:
        """Objects laid out as the Go server writes them serve through ours."""
        await self.start_s3_server(remote_base_path="images/")
        s3 = self.moto.client()
        details = (
            b'{"hash":"6e0072682e66287b662827da75b244a3","height":600,"width":800,'
            b'"content_type":"image/jpeg"}'
        )
        for name, body, kind in (
            ("original", fixture("wine.jpg"), "image/jpeg"),
            ("info.json", details, "application/json"),
        ):
            s3.put_object(
                Bucket=self.bucket, Key=f"images/{WINE_KEY}/{name}", Body=body, ContentType=kind
            )
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/w200.jpg")
        self.assertEqual(image_size(response.body), (200, 150, "JPEG"))
        info = await request("GET", f"{self.url}/p/{WINE_DIR}/info.json")
        self.assertEqual(info.body, details)

    async def test_batch_makes_only_what_the_bucket_lacks(self) -> None:
        await self.start_s3_server()
        await self.upload_wine()
        self.moto.client().put_object(
            Bucket=self.bucket, Key=f"{WINE_KEY}/x100.jpg", Body=b"made elsewhere"
        )
        url = f"{self.url}/p/{WINE_DIR}/process?outputs=x100.jpg,x200.jpg"
        self.assertEqual((await request("POST", url)).code, 200)
        self.assertFalse(os.path.exists(self.local("p", WINE_DIR, "x100.jpg")))
        self.assertIn(f"{WINE_KEY}/x200.jpg", self.objects())
        self.assertEqual(self.objects()[f"{WINE_KEY}/x100.jpg"]["body"], b"made elsewhere")

    async def test_listing_follows_pages(self) -> None:
        await self.start_s3_server()
        s3 = self.moto.client()
        for index in range(5):
            s3.put_object(Bucket=self.bucket, Key=f"a/{index}", Body=b"x")
        keys = await self.server.remote.client.list_keys("a/", page_size=2)
        self.assertEqual(keys, [f"a/{index}" for index in range(5)])


class CollectorTests(S3TestCase):
    def age(self, *relative: str) -> None:
        """Make files, and every directory of the store, an hour old."""
        old = time.time() - 3600
        for path in relative:
            os.utime(self.local(path), (old, old))
        for directory, _, _ in os.walk(self.local("p")):
            os.utime(directory, (old, old))

    def collector(self) -> GarbageCollector:
        [found] = [s for s in self.server if isinstance(s, GarbageCollector)]
        return found

    async def test_old_files_in_the_bucket_are_collected(self) -> None:
        await self.start_s3_server(max_file_age=1)
        await self.upload(fixture("wine.jpg"), query="?outputs=x100.jpg")
        directory = f"p/{WINE_DIR}"
        local_only = f"{directory}/notes.txt"
        with open(self.local(local_only), "w") as notes:
            notes.write("not uploaded yet")
        self.age(f"{directory}/original", f"{directory}/info.json", local_only)
        deleted = await self.collector().collect()
        self.assertEqual(deleted, 2)
        self.assertEqual(sorted(os.listdir(self.local(directory))), ["notes.txt", "x100.jpg"])
        # The file the bucket lacked was queued for upload, not deleted.
        await self.wait_for(lambda: f"{local_only}" in self.objects(), "notes.txt to be uploaded")
        # In the bucket is not yet crossed off the journal: the collector rightly waits for that.
        uploads = self.server.uploads
        await self.wait_for(lambda: not uploads.is_pending(local_only), "the upload's marker")
        self.age(local_only, f"{directory}/x100.jpg")
        self.assertEqual(await self.collector().collect(), 2)
        self.assertFalse(os.path.exists(self.local("p")), "empty directories are removed")
        # Everything is still served, read back from the bucket.
        response = await request("GET", f"{self.url}/p/{WINE_DIR}/x100.jpg")
        self.assertEqual(response.code, 200)

    async def test_pending_uploads_are_never_collected(self) -> None:
        moto_server = moto()
        proxy = FaultyProxy(self, moto_server.endpoint)
        await self.start_s3_server(endpoint=proxy.endpoint)
        await self.upload_wine()
        proxy.fail("PUT", 1000, status=500)
        await request("GET", f"{self.url}/p/{WINE_DIR}/w30.jpg")
        relative = f"p/{WINE_DIR}/w30.jpg"
        self.assertTrue(self.server.uploads.is_pending(relative))
        self.age(relative)
        await self.collector().collect()
        self.assertTrue(os.path.exists(self.local(relative)))

    async def test_another_process_pending_uploads_are_never_collected(self) -> None:
        """A main process's collector leaves a file whose upload another main process on the same
        store has pending, though the bucket holds an older version of it."""
        await self.start_s3_server(max_file_age=1)
        await self.upload_wine()
        proxy = FaultyProxy(self, self.moto.endpoint)
        proxy.fail("PUT", 1000, status=500)
        secondary = ImageServer(
            dataclasses.replace(
                self.server.config, s3_endpoint=proxy.endpoint, processes=2, processor_concurrency=2
            ),
            reactor,
            process_index=1,
        )
        secondary.startService()
        self.addCleanup(secondary.stopService)
        await self.wait_for(lambda: secondary.pool.ready, "the second process's workers", 600)
        port = secondary.main_port._port.getHost().port
        relative = f"p/{WINE_DIR}/w30.jpg"
        # Made by the other process, whose upload of it fails; an older copy is in the bucket.
        self.assertEqual((await request("GET", f"http://127.0.0.1:{port}/{relative}")).code, 200)
        await self.wait_for(
            lambda: ("PUT", f"/{self.bucket}/{relative}") in proxy.requests, "a PUT"
        )
        self.moto.client().put_object(Bucket=self.bucket, Key=relative, Body=b"an older version")
        self.age(relative)
        await self.collector().collect()
        self.assertTrue(os.path.exists(self.local(relative)))
        # Once the other process's journal has no marker for it, the same pass deletes it.
        os.remove(self.local(".pending", hashlib.md5(relative.encode()).hexdigest() + ".json"))
        await self.collector().collect()
        self.assertFalse(os.path.exists(self.local(relative)))

    async def test_no_collector_without_a_bucket(self) -> None:
        await self.start_server()
        self.assertEqual([s for s in self.server if isinstance(s, GarbageCollector)], [])
        self.assertIsNone(self.server.remote)


class ScaleOutTests(S3TestCase):
    """Two server processes, separate local directories, one bucket (docs/scaling.md)."""

    async def test_two_instances_share_one_bucket(self) -> None:
        self.moto = moto()
        self.bucket = self.moto.new_bucket()
        flags = [
            "--aws_bucket", self.bucket,
            "--aws_region", "us-east-1",
            "--s3-endpoint", self.moto.endpoint,
            "--aws_access_key_id", self.moto.access_key,
            "--aws_secret_key", self.moto.secret_key,
            "--processor_concurrency", "1",
        ]  # fmt: skip
        first = await start_process(self, [IMAGE_SERVER, "server"], flags)
        second = await start_process(self, [IMAGE_SERVER, "server"], flags)
        uploaded = await request(
            "POST", f"{first.url}/p?outputs=x100.jpg", data=fixture("wine.jpg")
        )
        self.assertEqual(uploaded.json()["hash"], WINE_HASH)
        # The second instance serves the upload and makes new variants from the bucket's original.
        for name, size in (("x100.jpg", (100, 100)), ("w64.webp", (64, 48))):
            response = await request("GET", f"{second.url}/p/{WINE_DIR}/{name}")
            self.assertEqual(image_size(response.body)[:2], size, name)
        # Wiping the first instance's local directory loses nothing.
        shutil.rmtree(os.path.join(first.store, "p"))
        original = await request("GET", f"{first.url}/p/{WINE_DIR}/original")
        self.assertEqual(original.body, fixture("wine.jpg"))
        await self.wait_for(
            lambda: f"{WINE_KEY}/w64.webp" in self.objects(), "the second instance's upload"
        )
        again = await request("GET", f"{first.url}/p/{WINE_DIR}/w64.webp")
        self.assertEqual(again.code, 200)


class ClientTests(S3TestCase):
    """The S3 client's own operations and addressing."""

    def test_addressing(self) -> None:
        aws = Bucket("images", "eu-west-1")
        self.assertEqual(
            aws.url("p/a b+ü.jpg"), "https://images.s3.eu-west-1.amazonaws.com/p/a%20b%2B%C3%BC.jpg"
        )
        self.assertEqual(aws.url(), "https://images.s3.eu-west-1.amazonaws.com/")
        dotted = Bucket("images.example.com", "eu-west-1")
        self.assertEqual(dotted.url("k"), "https://s3.eu-west-1.amazonaws.com/images.example.com/k")
        self.assertEqual(dotted.url(), "https://s3.eu-west-1.amazonaws.com/images.example.com")
        custom = Bucket("images", "us-east-1", "http://127.0.0.1:9000/")
        self.assertEqual(
            custom.url("k", {"prefix": "a/b"}), "http://127.0.0.1:9000/images/k?prefix=a%2Fb"
        )

    async def test_head_delete_and_errors(self) -> None:
        await self.start_s3_server()
        client = self.server.remote.client
        path = self.local("upload.bin")
        with open(path, "wb") as data:
            data.write(b"0123456789")
        await client.put_file("x/y", path, "application/octet-stream", "no-store")
        self.assertTrue(await client.exists("x/y"))
        await client.delete("x/y")
        self.assertFalse(await client.exists("x/y"))
        missing_bucket = S3Client(
            client._http,
            Bucket("no-such-bucket", "us-east-1", self.moto.endpoint),
            client._credentials,
            reactor,
            timeout=5,
        )
        error = await self.assertFailure(ensureDeferred(missing_bucket.list_keys("")), S3Error)
        self.assertEqual((error.status, error.code), (404, "NoSuchBucket"))

    async def test_acl(self) -> None:
        await self.start_s3_server(s3_acl="public-read")
        await self.upload_wine()
        grants = self.moto.client().get_object_acl(Bucket=self.bucket, Key=f"{WINE_KEY}/original")[
            "Grants"
        ]
        self.assertIn(
            "http://acs.amazonaws.com/groups/global/AllUsers",
            [grant["Grantee"].get("URI") for grant in grants],
        )

    async def test_credentials_from_the_aws_chain(self) -> None:
        """Without key flags, the standard chain (here: the environment) signs the requests."""
        self.moto = moto()
        self.bucket = self.moto.new_bucket()
        self.patch(
            os,
            "environ",
            dict(
                os.environ,
                AWS_ACCESS_KEY_ID=self.moto.access_key,
                AWS_SECRET_ACCESS_KEY=self.moto.secret_key,
                AWS_EC2_METADATA_DISABLED="true",
            ),
        )
        await self.start_server(
            aws_bucket=self.bucket, s3_endpoint=self.moto.endpoint, aws_region="us-east-1"
        )
        self.assertIsInstance(self.server.remote.client._credentials, ChainCredentials)
        await self.upload_wine()
        self.assertIn(f"{WINE_KEY}/original", self.objects())
