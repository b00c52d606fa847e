"""Human-readable summaries of a conversion and of a verification."""

from __future__ import annotations

from pathlib import Path

from sslpipe.shards.convert import ConvertResult
from sslpipe.shards.manifest import rejected_path
from sslpipe.shards.verify import SplitReport


def conversion_summary(result: ConvertResult, out: Path, workers: int) -> str:
    m, t = result.manifest, result.manifest.totals
    lines = [f"{m.split}: found {t['found']:,} = written {t['written']:,} + rejected {t['rejected']:,}"
             + (f"   ({_plural(t['hidden_ignored'], 'hidden entry', 'hidden entries')} ignored)"
                if t["hidden_ignored"] else "")]
    if m.shards:
        first, last = m.shards[0]["name"], m.shards[-1]["name"]
        pattern = first if first == last else f"{m.split}-{{{first[-10:-4]}..{last[-10:-4]}}}.tar"
        empty = t.get("per_class", []).count(0)
        classes = f"{len(m.classes)} classes" if m.labelled else "unlabeled"
        classes += f" ({empty} without samples)" if empty else ""
        lines.append(f"  shards    {Path(out) / pattern}: {_plural(len(m.shards), 'shard')}, "
                     f"{_size(t['bytes'])}, {classes}")
    reencoded = sum(t["reencoded"].values())
    lines.append(f"  images    kept {t['kept']:,} original JPEGs; re-encoded {reencoded:,}"
                 + (f" ({_counts(t['reencoded'])})" if reencoded else ""))
    if t["rejected"]:
        lines.append(f"  rejected  {_counts(t['rejected_by_reason'])} -> {rejected_path(out, m.split)}")
    if result.already_done:
        lines.append("  already complete: nothing to do (--overwrite converts again)")
    else:
        rate = result.processed / result.seconds if result.seconds else 0.0
        resumed = f"; resumed after {result.resumed_from} complete shards" if result.resumed_from else ""
        lines.append(f"  time      {result.seconds:.1f} s, {rate:,.1f} img/s with {workers} workers{resumed}")
    return "\n".join(lines)


def verify_summary(reports: list[SplitReport], max_problems: int = 50) -> str:
    lines = []
    for r in reports:
        status = "OK" if r.ok else f"{len(r.problems)} problems"
        lines.append(f"{r.split}: {_plural(r.shards, 'shard')}, {r.samples:,} samples, {_size(r.bytes)}, "
                     f"{r.decoded:,} images decoded by DALI: {status}")
        lines += [f"  {p}" for p in r.problems[:max_problems]]
        if len(r.problems) > max_problems:
            lines.append(f"  ... and {len(r.problems) - max_problems} more")
    return "\n".join(lines)


def _plural(n: int, one: str, many: str = "") -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _counts(counts: dict) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in counts.items())


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
