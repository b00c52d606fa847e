"""A run at a glance: its loss curve (and online kNN accuracy) beside the evaluation of its backbone
against a random one, as one PNG. Needs matplotlib (the `demo` extra)."""

from __future__ import annotations

from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.train.run_folder import RunFolder


def plot_run(run_dir: Path, results: dict, out: Path) -> Path:
    """Draw `<run_dir>/metrics.jsonl` and `results` ({backbone: {protocol: {"top1", ...}}}) to `out`."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SslpipeError(f"plotting needs matplotlib: pip install 'sslpipe[demo]' ({e})") from None
    rows = RunFolder(run_dir).read_metrics()
    steps = [r for r in rows if "loss" in r]
    knn = [r for r in rows if "knn_top1" in r]

    figure, (curve, bars) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    curve.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue")
    curve.set_xlabel("step")
    curve.set_ylabel("pretraining loss", color="tab:blue")
    curve.set_title(f"pretraining: {run_dir.name}")
    if knn:
        accuracy = curve.twinx()
        accuracy.plot([r["step"] for r in knn], [r["knn_top1"] for r in knn], "o-", color="tab:orange")
        accuracy.set_ylabel("online kNN top-1 (%)", color="tab:orange")

    names = list(results)
    colours = {"pretrained": "tab:green", "random": "tab:gray"}
    protocols = list(results[names[0]])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [results[name][p]["top1"] for p in protocols]
        positions = [j + (i - (len(names) - 1) / 2) * width for j in range(len(protocols))]
        drawn = bars.bar(positions, values, width, label=f"{name} backbone", color=colours.get(name))
        bars.bar_label(drawn, fmt="%.1f", fontsize=8)
    bars.set_xticks(range(len(protocols)), [_label(p) for p in protocols])
    bars.set_ylabel("top-1 accuracy on the held-out split (%)")
    bars.set_ylim(0, 105)
    bars.legend(loc="upper left")
    bars.set_title("evaluation")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def _label(protocol: str) -> str:
    if protocol.startswith("finetune_"):
        return f"fine-tune {float(protocol.split('_')[1]):.0%}"
    return {"knn": "kNN", "linear": "linear probe", "linear_augmented": "linear probe\n(augmented)"}.get(
        protocol, protocol)
