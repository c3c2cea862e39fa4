"""The private parts of Twisted and ampoule that the server relies on, one test for each.

No public API gives what these give: the request line while a body arrives, a say in the
``100 Continue``, a job written to its worker at once.  constraints.txt pins the versions they
were written against; when a new version changes one of them, its test here fails and names the
use and the file to adapt, before the server misbehaves in some roundabout way.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import time
from importlib.metadata import version
from typing import Any

from ampoule import child as ampoule_child
from ampoule import commands as ampoule_commands
from ampoule import main as ampoule_main
from ampoule import pool as ampoule_pool
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport, IWriteDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.trial import unittest
from twisted.web import http

from imageserver.processes import SharedTCPServer, bound_port
from imageserver.processing import libheif
from imageserver.processing import pool as pool_module

SITE = "imageserver/site.py"
POOL = "imageserver/processing/pool.py"
LIBHEIF = "imageserver/processing/libheif.py"
PROCESSES = "imageserver/processes.py"


def changed(use: str, user: str, distribution: str, what: str) -> str:
    """The failure message: which private use broke, where it is used, and what to do."""
    return (
        f"{use} changed under {user} with {distribution} {version(distribution)}: {what}. "
        f"Adapt {user} to it, or keep {distribution} at the version in constraints.txt."
    )


def connected(channel: http.HTTPChannel) -> StringTransport:
    """Connect ``channel`` to a transport that keeps what it is sent, on a clock of its own."""
    transport = StringTransport()
    channel.callLater = Clock().callLater  # type: ignore[method-assign, assignment]
    channel.makeConnection(transport)
    return transport


class ChannelTests(unittest.SynchronousTestCase):
    def test_the_request_line_waits_on_the_channel_until_the_body_is_in(self) -> None:
        """`SpoolingRequest.gotLength` and `_cut_off` read ``channel._command`` and ``_path``:
        Twisted gives a request its method and URI only once its whole body has arrived."""
        use = "HTTPChannel._command/_path (the request line before requestReceived)"
        seen: list[tuple[object, object]] = []

        class Request(http.Request):
            def gotLength(self, length: int | None) -> None:
                seen.append((getattr(channel, "_command", None), getattr(channel, "_path", None)))
                super().gotLength(length)

            def handleContentChunk(self, data: bytes) -> None:
                seen.append((getattr(channel, "_command", None), getattr(channel, "_path", None)))
                super().handleContentChunk(data)

        channel = http.HTTPChannel()
        channel.requestFactory = Request
        connected(channel)
        channel.dataReceived(b"POST /p?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        self.assertEqual(
            seen,
            [(b"POST", b"/p?x=1")] * 2,
            changed(use, SITE, "twisted", "not on the channel from gotLength until the body is in"),
        )

    def test_the_100_continue_is_sent_by_a_method_that_can_refuse_the_body(self) -> None:
        """`ImageChannel._send100Continue` answers a refused body instead of the go: Twisted must
        call it, with no argument, once the request has its length (and so its content), and a
        length of 0 set in it must end the request without its body."""
        use = "HTTPChannel._send100Continue"
        signature = inspect.signature(http.HTTPChannel._send100Continue)
        self.assertEqual(
            list(signature.parameters),
            ["self"],
            changed(use, SITE, "twisted", f"its signature is now {signature}"),
        )
        head = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
        events: list[str] = []

        class Request(http.Request):
            def gotLength(self, length: int | None) -> None:
                events.append("gotLength")
                super().gotLength(length)

            def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
                events.append("requestReceived")
                super().requestReceived(command, path, version)

        class Refusing(http.HTTPChannel):
            requestFactory = Request

            def _send100Continue(self) -> None:
                events.append("_send100Continue")
                self.length = 0

        refusing = Refusing()
        transport = connected(refusing)
        refusing.dataReceived(head)
        self.assertEqual(
            (events, transport.value()),
            (["gotLength", "_send100Continue", "requestReceived"], b""),
            changed(use, SITE, "twisted", "not called after gotLength, or the body still awaited"),
        )
        accepting = http.HTTPChannel()
        transport = connected(accepting)
        accepting.dataReceived(head)
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 100 Continue\r\n\r\n",
            changed(use, SITE, "twisted", "it no longer sends the 100 Continue"),
        )


class Child:
    """A worker as the pool sees it, answering when the test says."""

    def __init__(self) -> None:
        self.jobs: list[tuple[type[amp.Command], dict[str, Any], Deferred[dict[str, Any]]]] = []

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        answer: Deferred[dict[str, Any]] = Deferred()
        self.jobs.append((command, arguments, answer))
        return answer


class Starter:
    def __init__(self, child: Child) -> None:
        self.child = child

    def startAMPProcess(self, ampChild: Any, **options: Any) -> tuple[Child, Deferred[None]]:
        return self.child, Deferred()


class PoolTests(unittest.TestCase):
    def test_every_job_reaches_its_worker_through_cb_dowork(self) -> None:
        """`_Pool._cb_doWork` writes each job out at once: it relies on ampoule sending every job
        through ``_cb_doWork(command, **arguments)``, both one given to an idle worker and one
        taken from the queue when a worker finishes, and on the job having been handed to a
        worker taken from ``ready`` by the time it returns."""
        use = "ampoule ProcessPool._cb_doWork"
        signature = inspect.signature(ampoule_pool.ProcessPool._cb_doWork)
        parameters = list(signature.parameters.values())
        self.assertTrue(
            parameters[1].name == "command" and parameters[-1].kind is parameters[-1].VAR_KEYWORD,
            changed(use, POOL, "ampoule", f"its signature is now {signature}"),
        )
        worker = Child()
        handed: list[tuple[set[Any], int]] = []

        class Pool(ampoule_pool.ProcessPool):
            def _cb_doWork(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
                idle = set(self.ready)
                job: Deferred[Any] = super()._cb_doWork(command, **arguments)
                handed.append((idle - self.ready, len(worker.jobs)))
                return job

        pool = Pool(starter=Starter(worker), min=1, max=1, recycleAfter=0)
        self.addCleanup(pool.looping.stop)
        pool.start()
        first, second = pool.doWork(amp.Command, n=1), pool.doWork(amp.Command, n=2)
        worker.jobs[0][2].callback({"n": 1})
        worker.jobs[1][2].callback({"n": 2})
        self.assertEqual(
            ([arguments for _, arguments, _ in worker.jobs], handed),
            ([{"n": 1}, {"n": 2}], [({worker}, 1), ({worker}, 2)]),
            changed(use, POOL, "ampoule", "jobs no longer handed out through it"),
        )
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second)),
            ({"n": 1}, {"n": 2}),
            changed(use, POOL, "ampoule", "its Deferred is no longer the job's"),
        )

    async def test_a_child_leads_to_its_process_and_the_pipe_to_it(self) -> None:
        """`_process` takes a child (ampoule's AMP protocol) to its Twisted process, by
        ``child.transport.transport``: `WorkerPool.worker_pids` reads its ``pid``, and
        `_Pool._cb_doWork` its ``pipes[TO_CHILD]``, whose ``doWrite`` must send what the child's
        protocol wrote, there and then."""
        use = "child.transport.transport.pipes (ampoule's connector, Twisted's Process)"
        starter = ampoule_main.ProcessStarter(packages=("twisted",))
        child, finished = starter.startAMPProcess(ampoule_child.AMPChild)
        self.addCleanup(_ended, child, finished)
        try:
            process = pool_module._process(child)
            pipe = process.pipes.get(ampoule_main.TO_CHILD)
        except AttributeError as error:
            self.fail(changed(use, POOL, "ampoule", str(error)))
        self.assertTrue(
            IProcessTransport.providedBy(process) and IWriteDescriptor.providedBy(pipe),
            changed(use, POOL, "twisted", f"got {process!r} and {pipe!r}"),
        )
        answer = child.callRemote(ampoule_commands.Shutdown)
        pipe.doWrite()
        # The reactor does not turn in this loop: the child can only have had its Shutdown, and
        # so have ended, if doWrite sent it.
        deadline = time.monotonic() + 30
        while _running(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = not _running(process.pid)
        await answer
        self.assertTrue(ended, changed(use, POOL, "twisted", "doWrite did not send the job"))


def _ended(child: Any, finished: Deferred[Any]) -> Deferred[Any]:
    """Wait for ``child``'s process to end, killed if a failure left it running."""
    if not finished.called:
        with contextlib.suppress(ProcessExitedAlready):  # and waiting for its pipes to close
            child.transport.signalProcess("KILL")
    return finished.addErrback(lambda _: None)


def _running(pid: int) -> bool:
    """Whether ``pid`` is still running (not ended, nor ended and waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


class WorkerStartTests(unittest.SynchronousTestCase):
    def test_the_bootstrap_gets_the_reactor_and_the_child_last(self) -> None:
        """`pool.WORKER_BOOTSTRAP` (our worker start-up, for its logging) reads the child's
        reactor and class from the last two arguments; `_WorkerConnector` relies on the
        connector's ``amp``; `_Pool` silences ``dumpStats``."""
        use = "ProcessStarter.startAMPProcess's arguments to the bootstrap"
        seen: list[tuple[Any, ...]] = []

        class Recording(ampoule_main.ProcessStarter):
            def startPythonProcess(self, prot: Any, *args: Any) -> Any:
                seen.append((prot, *args))
                return None, Deferred()

        starter = Recording(childReactor="poll")
        starter.connectorFactory = pool_module._WorkerConnector
        starter.startAMPProcess(ampoule_child.AMPChild, ampChildArgs=("one",))
        prot, *args = seen[0]
        self.assertEqual(
            args,
            ["one", "poll", "ampoule.child.AMPChild"],
            changed(use, POOL, "ampoule", f"the bootstrap was given {args}"),
        )
        self.assertIsInstance(
            prot.amp,
            amp.AMP,
            changed("AMPConnector.amp", POOL, "ampoule", "the connector keeps no AMP protocol"),
        )
        self.assertIn(
            "dumpStats",
            vars(ampoule_pool.ProcessPool),
            changed("ProcessPool.dumpStats", POOL, "ampoule", "the start-up dump moved"),
        )


class BundledLibheifTests(unittest.SynchronousTestCase):
    def test_pi_heifs_bundled_libheif_is_the_one_bound(self) -> None:
        """`libheif` binds with ctypes the libheif that the pi-heif wheel bundles (in
        ``pi_heif.libs/``), declared from the headers of ``libheif.VERSION``: found elsewhere, or
        of another version, its functions and structures may not be the ones declared."""
        use = "the libheif bundled in pi_heif.libs, bound with ctypes"
        try:
            path = libheif.library_path()
            bound = libheif.version()
        except (ImportError, OSError, AttributeError) as error:
            self.fail(changed(use, LIBHEIF, "pi-heif", str(error)))
        self.assertIn(
            "/pi_heif.libs/libheif-",
            path,
            changed(use, LIBHEIF, "pi-heif", f"the library is now {path}"),
        )
        self.assertEqual(
            bound,
            libheif.VERSION,
            changed(use, LIBHEIF, "pi-heif", f"it bundles libheif {bound}"),
        )


class SharedPortTests(unittest.TestCase):
    async def test_the_server_service_gets_its_port_from_getport(self) -> None:
        """`SharedTCPServer` overrides ``internet.TCPServer._getPort``, which Twisted's server
        services call to listen (in ``privilegedStartService``), to bind with ``SO_REUSEPORT``
        through ``tcp.Port.createInternetSocket``: two of them share one port."""
        use = "TCPServer._getPort (SO_REUSEPORT for several main processes)"
        first = SharedTCPServer(0, protocol.Factory(), interface="127.0.0.1")
        first.startService()
        self.addCleanup(first.stopService)
        port = bound_port(first)
        second = SharedTCPServer(port, protocol.Factory(), interface="127.0.0.1")
        try:
            second.startService()
        except CannotListenError as error:
            self.fail(changed(use, PROCESSES, "twisted", f"the port was not shared: {error}"))
        self.addCleanup(second.stopService)
        listening = second._port
        self.assertTrue(
            listening is not None
            and listening.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),
            changed(use, PROCESSES, "twisted", "the service no longer listens through _getPort"),
        )
