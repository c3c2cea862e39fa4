"""The webhook outbox (docs/webhooks.md): every event on disk before it is sent, so that neither a
receiver's outage nor a crash of ours loses it.

``.webhooks/outbox/`` beside the store holds one small JSON file per event still to be delivered,
written atomically (a temporary name in the same directory, then a rename), as the upload journal
writes its markers; a delivered event's file is removed.  ``.webhooks/dead/`` holds the events that
were retried for ``--webhook-retry-for`` without success: the dead letters, which
``image-server webhooks list`` shows and ``redeliver`` sends again.

The directories are listed once, at start-up; from then on an index in memory (oldest first) says
what each holds, so emitting an event, the outbox's bound and ``/metrics`` cost no listing.  Other
processes (the ``webhooks`` command) only ever remove dead letters, never add to the outbox, so the
server's index of the outbox stays exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass

from twisted.logger import Logger

from imageserver.store import DIRECTORY_MODE, remove_quietly

log = Logger()

OUTBOX_DIRECTORY = ".webhooks"
PENDING = "outbox"
DEAD = "dead"
# Event files end so; a temporary file starts with a dot and is never read back.
SUFFIX = ".json"


@dataclass
class Letter:
    """One event: its id (the same on every attempt), wire name, the wall-clock time it was made
    (its retry deadline counts from there, across restarts), and the exact body to send."""

    id: str
    event: str
    created: float
    body: bytes
    attempts: int = 0
    last_error: str = ""

    def encode(self) -> bytes:
        fields = {
            "id": self.id,
            "event": self.event,
            "created": self.created,
            "body": self.body.decode(),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> Letter:
        fields = json.loads(data)
        return cls(
            str(fields["id"]),
            str(fields["event"]),
            float(fields["created"]),
            str(fields["body"]).encode(),
            int(fields.get("attempts", 0)),
            str(fields.get("last_error", "")),
        )


def is_event_id(text: str) -> bool:
    """Ids are 32 lower-case hex digits: anything else never names a file of ours."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def new_id() -> str:
    return secrets.token_hex(16)


class Outbox:
    """The two folders under ``directory`` and, once `load` has run, the index of both."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pending_directory = os.path.join(directory, PENDING)
        self.dead_directory = os.path.join(directory, DEAD)
        # Insertion order is age order: events are added as they are made.
        self._pending: dict[str, Letter] = {}
        self._dead: dict[str, float] = {}

    def prepare(self) -> None:
        """Create the folders."""
        for folder in (self.pending_directory, self.dead_directory):
            os.makedirs(folder, mode=DIRECTORY_MODE, exist_ok=True)

    def load(self) -> list[Letter]:
        """Index what the folders hold (the events of every process using them); the outbox's
        events, oldest first."""
        self._pending = {letter.id: letter for letter in _read_folder(self.pending_directory)}
        self._dead = {letter.id: letter.created for letter in _read_folder(self.dead_directory)}
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def dead(self) -> int:
        return len(self._dead)

    def oldest(self) -> Letter | None:
        return next(iter(self._pending.values()), None)

    def oldest_dead(self) -> str | None:
        return next(iter(self._dead), None)

    def add(self, letter: Letter) -> None:
        """Write the event down; it is in the outbox once this returns."""
        _write(self.pending_directory, letter)
        self._pending[letter.id] = letter

    def cross_off(self, letter_id: str) -> None:
        """Delivered (or dropped): forget it."""
        remove_quietly(self._pending_path(letter_id))
        self._pending.pop(letter_id, None)

    def bury(self, letter: Letter) -> None:
        """Move an event to the dead letters, with its attempts and last error.

        Written there before it leaves the outbox, so a crash in between leaves it in both, and
        the next start tries it once more: never in neither.
        """
        _write(self.dead_directory, letter)
        self._dead[letter.id] = letter.created
        self.cross_off(letter.id)

    def forget_dead(self, letter_id: str) -> None:
        remove_quietly(os.path.join(self.dead_directory, letter_id + SUFFIX))
        self._dead.pop(letter_id, None)

    def _pending_path(self, letter_id: str) -> str:
        return os.path.join(self.pending_directory, letter_id + SUFFIX)


def dead_letters(directory: str) -> list[Letter]:
    """The dead letters under an outbox ``directory``, oldest first (for the command line)."""
    return _read_folder(os.path.join(directory, DEAD), drop_unreadable=False)


def remove_dead_letter(directory: str, letter_id: str) -> None:
    remove_quietly(os.path.join(directory, DEAD, letter_id + SUFFIX))


def _write(folder: str, letter: Letter) -> None:
    temporary = os.path.join(folder, f".{letter.id}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "wb") as out:
            out.write(letter.encode())
        os.replace(temporary, os.path.join(folder, letter.id + SUFFIX))
    except BaseException:
        remove_quietly(temporary)
        raise


def _read_folder(folder: str, drop_unreadable: bool = True) -> list[Letter]:
    """The events of a folder, oldest first; temporary files a crash left are removed, and so
    are unreadable files (logged) when ``drop_unreadable``."""
    letters = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith("."):
            if drop_unreadable:
                remove_quietly(path)
            continue
        try:
            with open(path, "rb") as event_file:
                letter = Letter.decode(event_file.read())
            if not is_event_id(letter.id) or name != letter.id + SUFFIX:
                raise ValueError(name)
        except FileNotFoundError:
            continue  # removed meanwhile by another process
        except (OSError, ValueError, KeyError, TypeError):
            log.warn("dropping an unreadable webhook event file {path}", path=path)
            if drop_unreadable:
                with contextlib.suppress(OSError):
                    os.remove(path)
            continue
        letters.append(letter)
    letters.sort(key=lambda letter: letter.created)
    return letters
