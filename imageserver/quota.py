"""``--max-variants-per-image``: a ceiling on the variants stored for one image.

Variants are made on demand by unsigned GETs, so without a ceiling anyone could fill a disk or a
bucket with ``w1.png`` … ``w1000.png`` of one image.  Each image's count is read once (one listing
of its directory, in the bucket when there is one) and then kept in memory, raised as variants are
admitted, so a request costs no listing.  A variant is admitted before it is made and given back if
making it fails, so concurrent misses cannot slip past the ceiling together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from imageserver.errors import VariantLimit
from imageserver.names import is_variant_name
from imageserver.recent import Recent

# Images whose counts are remembered; the least recently used are listed again when next needed.
REMEMBERED_IMAGES = 10_000


class VariantQuota:
    """Admits new variants of an image while it has fewer than ``limit`` (0: no limit)."""

    def __init__(self, limit: int, list_names: Callable[[str], Awaitable[set[str]]]) -> None:
        self.limit = limit
        self._list_names = list_names
        self._counts: Recent[str, int] = Recent(REMEMBERED_IMAGES)

    async def admit(self, directory: str, name: str) -> None:
        """Count ``name`` as stored in ``directory``, or raise `VariantLimit`."""
        if not self.limit:
            return
        count = self._counts.get(directory)
        if count is None:
            names = await self._list_names(directory)
            count = sum(1 for stored in names if is_variant_name(stored) and stored != name)
            count = max(count, self._counts.get(directory) or 0)  # admitted while listing
        if count >= self.limit:
            self._counts[directory] = count
            raise VariantLimit(
                f"{directory} has {count} stored variants, the most --max-variants-per-image"
                f" allows: {name} is not made (ask for a stored one, or raise the limit)"
            )
        self._counts[directory] = count + 1

    def give_back(self, directory: str) -> None:
        """A variant admitted but not stored after all (its job failed)."""
        count = self._counts.get(directory)
        if count:
            self._counts[directory] = count - 1
