"""What a method needs of the spec's views, checked before the first step.

    def views_needed(self):
        return ViewsNeeded(count=2, same_size=True, why="two views of each image are the positives")

The loop refuses a spec that does not fit with one message naming the method, the spec and its
views, instead of training wrongly (SimCLR on one view would pair different images) or failing
deep inside the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.spec import PipelineSpec


@dataclass(frozen=True)
class ViewsNeeded:
    """count: exactly this many views (None: any number from `at_least`); same_size: all views of
    one size; groups: (spec group name, at least this many views) pairs that must be in the spec;
    windows: the loader must return each view's crop window and flip; why: said when refused."""

    count: int | None = None
    at_least: int = 1
    same_size: bool = False
    groups: tuple[tuple[str, int], ...] = ()
    windows: bool = False
    why: str = ""

    def problems(self, spec: PipelineSpec) -> list[str]:
        """What the spec lacks, one phrase each (empty when it fits)."""
        views = spec.views
        found = []
        if self.count is not None and len(views) != self.count:
            found.append(f"exactly {self.count} view{'s' * (self.count != 1)}, not {len(views)}")
        if len(views) < self.at_least:
            found.append(f"at least {self.at_least} views, not {len(views)}")
        if self.same_size and len({v.size for v in views}) > 1:
            found.append(f"views of one size, not {sorted({v.size for v in views})} px")
        counts = {g.name: g.count for g in spec.groups}
        for name, minimum in self.groups:
            if counts.get(name, 0) < minimum:
                have = f"{counts[name]}" if name in counts else "none"
                found.append(f"at least {minimum} views named {name!r}, not {have}")
        return found

    def check(self, spec: PipelineSpec, method: str, setting: str = "data.pipeline") -> None:
        """Raise an `SslpipeError` naming what `spec` lacks for `method`."""
        found = self.problems(spec)
        if found:
            because = f" ({self.why})" if self.why else ""
            raise SslpipeError(f"method {method} needs {' and '.join(found)}{because}; {setting} is "
                               f"{spec.describe()}: choose a spec with such views")
