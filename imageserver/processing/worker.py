"""The worker subprocess: answers `commands` by running `operations` (ampoule's AMP child).

It sees only the environment the pool gives it (``VIPS_CONCURRENCY=1``, untrusted loaders blocked),
and is killed and replaced by the pool when a job runs past its timeout.
"""

from __future__ import annotations

from ampoule.child import AMPChild

from imageserver.processing import commands, operations
from imageserver.store import move_into_place, remove_quietly


class Worker(AMPChild):
    """One pyvips worker; each job is independent (libvips' operation cache is off)."""

    @commands.Identify.responder
    def identify(self, path: str, max_pixels: int) -> dict[str, object]:
        width, height, content_type = operations.identify(path, max_pixels)
        return {"width": width, "height": height, "content_type": content_type}

    @commands.Render.responder
    def render(
        self,
        source: str,
        temporary: str,
        destination: str,
        width: int,
        height: int,
        quality: int,
        output_format: str,
        max_pixels: int,
        max_dimension: int,
    ) -> dict[str, object]:
        try:
            out_width, out_height = operations.render(
                source,
                temporary,
                width,
                height,
                quality,
                output_format,
                max_pixels,
                max_dimension,
            )
            move_into_place(temporary, destination)
        except BaseException:
            remove_quietly(temporary)
            raise
        return {"width": out_width, "height": out_height}

    @commands.Warm.responder
    def warm(self) -> dict[str, object]:
        return {}
