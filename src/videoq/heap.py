"""The garbage collector set up for a long-running process (the API's, a worker's), once it
has imported and built what it runs with.

What start-up built (modules, settings, the app or the worker's state: hundreds of thousands
of objects) lives as long as the process, so it is frozen: kept out of the collector's
passes, which would otherwise walk all of it again and again under load (the API's, twice a
second under 32 clients) and stall everything in flight. And the youngest generation is
collected after more objects than Python's 700: a request or a job makes a few hundred,
mostly freed by reference counting, so at 700 the collector ran for little (the API's, 300
times a second)."""

from __future__ import annotations

import gc


def settle(young_generation: int) -> None:
    """Collect once, freeze what is left, and collect the youngest generation after
    ``young_generation`` objects (the older generations' thresholds as they were)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_generation, *gc.get_threshold()[1:])
