"""The `sslpipe` command: argument parsing and printing only; the work lives in the modules."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

from sslpipe import __version__
from sslpipe.errors import SslpipeError
from sslpipe.train.stop import TrainingStopped

# The cores this process may use (a container or a batch job may allow fewer than the machine has).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except TrainingStopped as e:
        if e.main_process:
            print(f"sslpipe: {e}\ncontinue with: {_resume_command(args)}", file=sys.stderr)
        return e.exit_code
    except SslpipeError as e:
        print(f"sslpipe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsslpipe: interrupted{getattr(args, 'on_interrupt', '')}", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe", description="GPU input pipelines for self-supervised visual pretraining")
    parser.add_argument("--version", action="version", version=f"sslpipe {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="turn ImageNet or an image folder into WebDataset shards")
    sources = convert.add_subparsers(required=True, metavar="SOURCE")
    imagenet = sources.add_parser("imagenet", help="an ILSVRC2012 root (classic devkit or Kaggle layout)")
    imagenet.add_argument("source", type=Path, metavar="ROOT",
                          help="the folder holding train/ and val/ (or ILSVRC/)")
    imagenet.add_argument("out", type=Path, metavar="OUT", help="output folder for the shards")
    imagenet.add_argument("--split", choices=["train", "val", "both"], default="both")
    imagenet.add_argument("--val-labels", type=Path,
                          help="ILSVRC2012_validation_ground_truth.txt or LOC_val_solution.csv "
                               "(default: looked for under ROOT)")
    imagenet.add_argument("--meta", type=Path, help="the devkit's meta.mat (default: under ROOT)")
    imagenet.add_argument("--synsets", type=Path, help="LOC_synset_mapping.txt, for class names")
    _conversion_options(imagenet)
    imagenet.set_defaults(run=_run_convert_imagenet)

    folder = sources.add_parser("folder", help="an ImageFolder tree (class = subfolder) or a flat folder")
    folder.add_argument("source", type=Path, metavar="SRC")
    folder.add_argument("out", type=Path, metavar="OUT")
    folder.add_argument("--split", default="train", help="name of the split, used in file names")
    folder.add_argument("--unlabeled", action="store_true", help="ignore subfolders; every label is -1")
    _conversion_options(folder)
    folder.set_defaults(run=_run_convert_folder)

    verify = commands.add_parser("verify", help="re-read every shard and check it against its manifest")
    verify.add_argument("out", type=Path)
    verify.add_argument("--split", action="append", help="only this split (repeatable)")
    verify.add_argument("--no-decode", action="store_true", help="skip decoding the images with DALI")
    verify.add_argument("--threads", type=_at_least(1), default=CORES, help="DALI decoding threads")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_run_verify)

    preview = commands.add_parser("preview", help="draw a spec's views of a few images into a PNG grid")
    preview.add_argument("spec", help="a pipeline spec: a YAML path or a shipped name (simclr, byol, ...)")
    preview.add_argument("shards", help="shard pattern, e.g. 'out/train-*.tar' (quote it)")
    preview.add_argument("-o", "--out", type=Path, default=Path("views.png"), help="the PNG to write")
    preview.add_argument("--images", type=_at_least(1), default=8, help="rows: images (default 8)")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    preview.add_argument("--method", help="draw what this pretext method (rotnet, jigsaw, ...) makes of the "
                                          "spec's views instead of the views")
    preview.set_defaults(run=_run_preview)

    train = commands.add_parser(
        "train", help="pretrain with a recipe (under `accelerate launch` for several processes)",
        description="Pretrain with a recipe. For several processes: "
                    "accelerate launch -m sslpipe.train RECIPE ...")
    train.add_argument("recipe", help="a recipe YAML (recipes/simclr_small.yaml) or a shipped recipe's name "
                                      "(simclr_small)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. optim.lr=0.5 data.batch_size=512")
    train.add_argument("--resume", nargs="?", const="auto", metavar="PATH",
                       help="continue from this run's last checkpoint, or from PATH (a .pt or a run folder)")
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser(
        "eval", help="kNN, linear probe, semi-supervised fine-tuning of a run's backbone (vs a random one)")
    evaluate.add_argument("target", type=Path, metavar="RUN", help="a run folder or a checkpoint (.pt)")
    evaluate.add_argument("--train", help="labelled train shards (default: the run's eval.train, data.train)")
    evaluate.add_argument("--val", help="labelled held-out shards (default: the run's eval.val)")
    evaluate.add_argument("--pipeline", help="evaluation spec (default: the run's eval.pipeline)")
    evaluate.add_argument("--finetune-pipeline",
                          help="spec of the fine-tuning and augmented probe "
                               "(default: the run's eval.finetune_pipeline)")
    evaluate.add_argument("--size", type=_at_least(1),
                          help="rescale both specs to this size (default: the run's eval.size)")
    evaluate.add_argument("--semisup", type=_fraction, nargs="*", default=[], metavar="FRACTION",
                          help="fine-tune on these class-balanced fractions of the labels, e.g. 0.01 0.1")
    evaluate.add_argument("--knn-k", type=_at_least(1), help="neighbours (default: 200; 20 for small sets)")
    evaluate.add_argument("--linear-epochs", type=_at_least(1), default=100)
    evaluate.add_argument("--augmented-probe-epochs", type=_at_least(0), default=0, metavar="N",
                          help="also the linear probe trained on augmented views for N epochs (slower)")
    evaluate.add_argument("--finetune-epochs", type=_at_least(1), default=30)
    evaluate.add_argument("--no-random", action="store_true", help="skip the random-initialisation baseline")
    evaluate.add_argument("--device", help="cpu or cuda (default: cuda with a GPU)")
    evaluate.set_defaults(run=_run_eval)

    export = commands.add_parser("export", help="write a run's backbone as safetensors (torchvision's keys)")
    export.add_argument("target", type=Path, metavar="RUN", help="a run folder or a checkpoint (.pt)")
    export.add_argument("-o", "--out", type=Path, help="output folder (default: RUN/export)")
    export.set_defaults(run=_run_export)

    demo = commands.add_parser("demo", help="the end-to-end example on data built from scikit-image photos")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    demo.add_argument("--workers", type=_at_least(1), default=min(4, CORES))
    demo.add_argument("--device", help="where it runs: cpu or cuda (default: cuda with a GPU)")
    demo.add_argument("--quick", action="store_true",
                      help="a smoke test of every step: tiny dataset, two epochs (meaningless accuracies)")
    demo.set_defaults(run=_run_demo)
    return parser


def _conversion_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("conversion")
    group.add_argument("--seed", type=int, default=0, help="seed of the global shuffle (default 0)")
    group.add_argument("--shard-samples", type=_at_least(0), default=1000,
                       help="at most this many samples per shard; 0 = no limit (default 1000)")
    group.add_argument("--shard-mb", type=_at_least(0, float), default=256,
                       help="at most about this many MiB per shard; 0 = no limit (default 256)")
    group.add_argument("--workers", type=_at_least(1), default=CORES,
                       help=f"processes reading, checking and re-encoding images (default: {CORES}, "
                            "the cores available)")
    group.add_argument("--quality", type=_at_least(1), default=95,
                       help="JPEG quality of re-encoded images, 1..100 (default 95)")
    group.add_argument("--baseline", action="store_true",
                       help="also re-encode progressive JPEGs (the GPU hardware decoder takes baseline only)")
    group.add_argument("--short-side", type=_at_least(1),
                       help="downscale images whose shorter side is longer than this")
    group.add_argument("--max-side", type=_at_least(1),
                       help="downscale images whose longer side is longer than this")
    group.add_argument("--overwrite", action="store_true",
                       help="replace an existing conversion of the same split in OUT")
    group.add_argument("--verify", action="store_true", help="run `sslpipe verify` on the result")
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(on_interrupt="; the complete shards are kept and the same command resumes")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction in (0, 1] is needed, got {text}")
    return value


def _at_least(low, kind=int):
    """An argparse type: a finite number of `kind`, at least `low`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text} is not a number of at least {low}")
        return value

    return parse


def _options(args):
    from sslpipe.shards.convert import ConvertOptions
    from sslpipe.shards.images import ImagePolicy

    return ConvertOptions(
        seed=args.seed,
        shard_samples=args.shard_samples or None,
        shard_bytes=int(args.shard_mb * 2**20) or None,
        image=ImagePolicy(args.quality, args.baseline, args.short_side, args.max_side))


def _run_convert_imagenet(args) -> int:
    from sslpipe.shards.imagenet import LabelFiles, imagenet_splits

    splits = ["train", "val"] if args.split == "both" else [args.split]
    labels = LabelFiles(args.val_labels, args.meta, args.synsets)
    options = _options(args)  # checked before the (slow) scan of the source
    print(f"scanning {args.source} ...", flush=True)
    return _convert(imagenet_splits(args.source, splits, labels), options, args)


def _run_convert_folder(args) -> int:
    from sslpipe.shards.folder import folder_split

    options = _options(args)
    print(f"scanning {args.source} ...", flush=True)
    return _convert([folder_split(args.source, args.split, args.unlabeled)], options, args)


def _convert(sources, options, args) -> int:
    from sslpipe.shards.convert import convert_split
    from sslpipe.shards.report import conversion_summary

    empty = True
    for source in sources:
        result = convert_split(source, args.out, options, workers=args.workers,
                               overwrite=args.overwrite, progress=not args.quiet)
        print(conversion_summary(result, args.out, args.workers), flush=True)
        empty = empty and not result.manifest.totals["written"]
    if empty:
        raise SslpipeError("no image could be written: every file was rejected "
                           "(see the .rejected.jsonl files)")
    if args.verify:
        return _verify(args.out, [s.split for s in sources], decode=True, threads=args.workers,
                       quiet=args.quiet)
    return 0


def _run_verify(args) -> int:
    return _verify(args.out, args.split, decode=not args.no_decode, threads=args.threads, quiet=args.quiet)


def _verify(out, splits, decode, threads, quiet) -> int:
    from sslpipe.shards.report import verify_summary
    from sslpipe.shards.verify import verify_output

    reports = verify_output(out, splits, decode=decode, threads=threads, progress=not quiet)
    print(verify_summary(reports), flush=True)
    return 0 if all(r.ok for r in reports) else 1


def _run_preview(args) -> int:
    from sslpipe.methods.preview import render_method_preview
    from sslpipe.pipeline.preview import render_preview

    if args.method:
        path = render_method_preview(args.method, args.spec, args.shards, args.out, images=args.images,
                                     seed=args.seed, device=args.device)
    else:
        path = render_preview(args.spec, args.shards, args.out, images=args.images, seed=args.seed,
                              device=args.device)
    print(f"wrote {path}")
    return 0


def _run_train(args) -> int:
    from sslpipe.train.config import load_config
    from sslpipe.train.loop import train

    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        # `--resume optim.lr=0.1`: argparse gave the override to --resume as its PATH
        args.overrides, args.resume = [*args.overrides, args.resume], "auto"

    run_dir = train(load_config(args.recipe, args.overrides), resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def _resume_command(args) -> str:
    """The command that continues a stopped run (under a launcher, its own command with these)."""
    words = ["sslpipe", "train", args.recipe, *args.overrides, "--resume"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by accelerate launch, torchrun
        launch = shlex.join(words[2:])
        return f"the same launch with --resume: accelerate launch ... -m sslpipe.train {launch}"
    return shlex.join(words)


def _run_eval(args) -> int:
    from sslpipe.runs.evaluate import evaluate_run, results_table

    report = evaluate_run(args.target, train=args.train, val=args.val, pipeline=args.pipeline,
                          finetune_pipeline=args.finetune_pipeline, size=args.size,
                          semisup=tuple(args.semisup), random_baseline=not args.no_random, knn_k=args.knn_k,
                          linear_epochs=args.linear_epochs, finetune_epochs=args.finetune_epochs,
                          augmented_probe_epochs=args.augmented_probe_epochs,
                          device=args.device)
    print(f"{report['checkpoint']} (step {report['step']}), evaluated on {report['val']}:")
    print(results_table(report["results"]))
    return 0


def _run_export(args) -> int:
    from sslpipe.runs.export import export_run

    out = export_run(args.target, args.out)
    print(f"wrote {out / 'backbone.safetensors'} (torchvision's ResNet keys, without fc)")
    return 0


def _run_demo(args) -> int:
    from sslpipe.demo import DEFAULT, QUICK, run_demo

    settings = QUICK if args.quick else DEFAULT
    return run_demo(args.out, workers=args.workers, device=args.device, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
