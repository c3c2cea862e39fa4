"""A worker whose renders are free: the ``ceiling`` phase's stand-in for the real one.

The ceiling phase asks how many misses one main process can hand out and answer when the image
work costs nothing, so that the main process alone is the bottleneck.  `FreeWorker` is the real
`Worker` (same AMP commands, same niceness, same start-up; ``Identify`` and ``Inspect`` stay real,
so uploads are checked as usual) except for ``Render``: the first job of each output format is
rendered for real, and its bytes are kept; every later job of that format writes those bytes to
the temporary path it was given and moves them into place, as the real responder does with its
output.  Stored variants are therefore valid images of a thumbnail's usual size (a few KB), which
the server stores and serves as usual, and a job costs the worker one small file write.

The pool imports the class by its qualified name in the child (ampoule), so this module must be
importable there: `benchmarks.free_server` puts the repository on the workers' ``PYTHONPATH``.
"""

from __future__ import annotations

from typing import cast

from imageserver.names import parse_name
from imageserver.processing import commands
from imageserver.processing.worker import Worker
from imageserver.store import move_into_place, remove_quietly


class FreeWorker(Worker):
    """`Worker`, with ``Render`` answered from a copy of the first output of the same format."""

    def __init__(self) -> None:
        super().__init__()
        # Output format -> (bytes, width, height) of the first variant rendered in that format.
        self._samples: dict[str, tuple[bytes, int, int]] = {}

    @commands.Render.responder
    def render(
        self,
        source: str,
        temporary: str,
        destination: str,
        name: str,
        default_quality: int,
        max_pixels: int,
        max_dimension: int,
    ) -> dict[str, object]:
        """The real answer's shape (width and height of the stored file), without image work.

        The width and height are the sample's: the file stored has them, whatever the name
        asked for, so the answer describes what was stored.
        """
        variant = parse_name(name, default_quality, max_dimension)
        output_format = variant.output_format or ""
        sample = self._samples.get(output_format)
        if sample is None:
            answer = Worker.render(
                self,
                source,
                temporary,
                destination,
                name,
                default_quality,
                max_pixels,
                max_dimension,
            )
            with open(destination, "rb") as made:
                data = made.read()
            width, height = cast(int, answer["width"]), cast(int, answer["height"])
            self._samples[output_format] = (data, width, height)
            return answer
        data, width, height = sample
        try:
            with open(temporary, "wb") as written:
                written.write(data)
            move_into_place(temporary, destination)
        except BaseException:
            remove_quietly(temporary)
            raise
        return {"width": width, "height": height}
