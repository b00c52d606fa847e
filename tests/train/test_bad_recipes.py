"""Bad recipes and overrides: each ends in one `sslpipe: error:` line naming the key, file or
setting at fault, before any training (a segfault in DALI, a traceback, a run that trains
wrongly or an error after the first epoch are what these cases once gave)."""

import re
from pathlib import Path

import pytest

from sslpipe.cli import main

ROOT = Path(__file__).parents[2]
SMALL = {"simclr": ["method.projector=[64, 32]"],
         "mocov2": ["method.head=[64, 32]", "method.queue_size=32", "method.bn_splits=2"],
         "swav": ["method.projector=[64, 32]", "method.prototypes=20", "method.queue_length=16"],
         "simsiam": ["method.projector=[64, 64]", "method.predictor_hidden=16"]}
SMALL_SIMCLR = (ROOT / "pipelines" / "small_simclr.yaml").read_text()
SPECS = {"one": SMALL_SIMCLR.replace("count: 2", "count: 1"),
         "eight": SMALL_SIMCLR.replace("count: 2", "count: 8"),
         "two_plus_two": (ROOT / "pipelines" / "small_swav_multicrop.yaml").read_text().replace("count: 4",
                                                                                               "count: 2")}

# (method, overrides, what the one error line says); {shards} and {specs} are filled in.
CASES = {
    # the views a method needs (views.py): wrong training, not an error, before
    "simclr on one view": ("simclr", ["data.pipeline={specs}/one.yaml"],
                           r"method simclr needs exactly 2 views, not 1"),
    "simclr on eight views": ("simclr", ["data.pipeline={specs}/eight.yaml"],
                              r"needs exactly 2 views, not 8"),
    "swav global_crops=3 on 2+2": ("swav", ["data.pipeline={specs}/two_plus_two.yaml",
                                        "method.global_crops=3"],
                                   r"at least 3 views named 'global', not 2"),
    "mocov2 on one view": ("mocov2", ["data.pipeline={specs}/one.yaml"],
                           r"method mocov2 needs exactly 2 views"),
    "simsiam on one view": ("simsiam", ["data.pipeline={specs}/one.yaml"], r"method simsiam needs exactly 2"),
    "swav on one view": ("swav", ["data.pipeline={specs}/one.yaml"], r"method swav needs at least 2 views"),
    # numbers out of range
    "negative clip_grad_norm": ("simclr", ["optim.clip_grad_norm=-1"], r"optim: clip_grad_norm must be > 0"),
    "infinite lr": ("simclr", ["optim.lr=.inf"], r"optim.lr: expected a finite number, got inf"),
    "nan lr": ("simclr", ["optim.lr=.nan"], r"optim.lr: expected a finite number, got nan"),
    "negative shuffle_buffer": ("simclr", ["data.shuffle_buffer=-5"],
                                r"data: shuffle_buffer must be >= 1, got -5"),
    "zero shuffle_buffer": ("simclr", ["data.shuffle_buffer=0"], r"data: shuffle_buffer must be >= 1, got 0"),
    "negative num_threads": ("simclr", ["data.num_threads=-2"], r"data: num_threads must be >= 1"),
    "zero num_threads": ("simclr", ["data.num_threads=0"], r"data: num_threads must be >= 1"),
    "negative eta": ("simclr", ["optim.eta=-1"], r"optim: eta must be > 0, got -1.0"),
    "momentum 1": ("simclr", ["optim.momentum=1"], r"optim: momentum must be in \[0, 1\)"),
    "final_lr_ratio above 1": ("simclr", ["optim.final_lr_ratio=2"], r"final_lr_ratio must be <= 1"),
    "negative max_steps": ("simclr", ["train.max_steps=-3"], r"train: max_steps must be >= 1"),
    "zero max_steps": ("simclr", ["train.max_steps=0"], r"train: max_steps must be >= 1"),
    "zero epochs": ("simclr", ["train.epochs=0"], r"train: epochs must be >= 1"),
    "negative checkpoint_every": ("simclr", ["train.checkpoint_every=-1"], r"checkpoint_every must be >= 0"),
    "a run name leaving train.out": ("simclr", ["train.run=../../elsewhere"], r"train: run must be a name"),
    "zero batch": ("simclr", ["data.batch_size=0"], r"data: batch_size must be >= 1"),
    "simsiam at batch 1": ("simsiam", ["data.batch_size=1"], r"data.batch_size=1 leaves 1 image per process"),
    "simclr at batch 1": ("simclr", ["data.batch_size=1"], r"data.batch_size=1 leaves 1 image per process"),
    "a batch larger than the data": ("simclr", ["data.batch_size=4096"], r"fewer than one batch of 4096"),
    "zero temperature": ("simclr", ["method.temperature=0"], r"method: temperature must be > 0"),
    "an empty projector": ("simclr", ["method.projector=[]"], r"method.projector: expected a non-empty list"),
    "a projector layer of width 0": ("simclr", ["method.projector=[0, 32]"],
                                     r"method simclr: every layer of an MLP needs a width >= 1"),
    "mocov2 queue not a multiple of the batch": ("mocov2", ["method.queue_size=30"],
                                                 r"method.queue_size \(30\) must be a multiple"),
    "mocov2 momentum 2": ("mocov2", ["method.momentum=2"], r"momentum in \[0, 1\] are required"),
    "mocov2 bn_splits 0": ("mocov2", ["method.bn_splits=0"], r"bn_splits must be >= 1"),
    "swav with no prototypes": ("swav", ["method.prototypes=0"], r"prototypes >= 1"),
    "swav epsilon 0": ("swav", ["method.epsilon=0"], r"epsilon > 0"),
    "swav without Sinkhorn iterations": ("swav", ["method.sinkhorn_iterations=0"],
                                         r"sinkhorn_iterations must be >= 1"),
    "swav negative queue": ("swav", ["method.queue_length=-1"], r"queue_length must be >= 0"),
    # the online evaluation, checked before the first step (it once failed after the first epoch)
    "negative eval.knn_k": ("simclr", ["eval.knn_k=-5", "eval.val={shards}"], r"eval: knn_k must be >= 1"),
    "mistyped eval.val": ("simclr", ["eval.val=/nowhere/val-*.tar"],
                          r"eval.val='/nowhere/val-\*.tar': no shards match"),
    "mistyped eval.train": ("simclr", ["eval.val={shards}", "eval.train=/nowhere/t-*.tar"],
                            r"eval.train='/nowhere/t-\*.tar': no shards match"),
    "mistyped eval.pipeline": ("simclr", ["eval.val={shards}", "eval.pipeline=evall"],
                               r"eval.pipeline='evall': no pipeline spec named 'evall'"),
    "eval.size 0": ("simclr", ["eval.size=0"], r"eval: size must be >= 1"),
    "eval.batch_size 0": ("simclr", ["eval.batch_size=0"], r"batch_size >= 1"),
    "eval.knn_temperature 0": ("simclr", ["eval.knn_temperature=0"], r"knn_temperature > 0"),
    # names, types and syntax
    "mistyped data.train": ("simclr", ["data.train=/nowhere/train-*.tar"],
                            r"data.train='/nowhere/train-\*.tar': no shards match"),
    "mistyped data.pipeline": ("simclr", ["data.pipeline=nope"],
                               r"data.pipeline='nope': no pipeline spec named"),
    "unknown key": ("simclr", ["optim.lrr=0.1"], r"optim.lrr: unknown key"),
    "unknown section": ("simclr", ["optimm.lr=0.1"], r"optimm: unknown section"),
    "not YAML": ("simclr", ["method.projector=[64,"], r"the value is not valid YAML"),
    "a word for a number": ("simclr", ["optim.lr=fast"], r"optim.lr: expected a number, got 'fast'"),
    "mistyped backbone": ("simclr", ["model.backbone=resnet19"], r"model.backbone: expected one of"),
    "mistyped optimizer": ("simclr", ["optim.name=adamm"], r"optim.name: expected one of lars, sgd"),
    "mistyped precision": ("simclr", ["train.precision=fp8"], r"train.precision: expected one of"),
    "a key given twice": ("simclr", ["optim.lr=0.1", "optim.lr=0.2"], r"optim.lr: already set by override"),
    "no override syntax": ("simclr", ["lr0.1"], r"expected section.key=value"),
}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specs")
    for name, text in SPECS.items():
        (folder / f"{name}.yaml").write_text(text.replace("name: small_", f"name: {name}_"))
    return folder


@pytest.mark.parametrize("case", CASES)
def test_a_bad_setting_is_one_error_line_naming_it(case, photo_shards, specs, tmp_path, capsys):
    method, overrides, says = CASES[case]
    overrides = [o.format(shards=photo_shards, specs=specs) for o in overrides]
    given = {o.partition("=")[0] for o in overrides}
    base = [f"data.train={photo_shards}", "data.batch_size=8", f"train.out={tmp_path}", "train.epochs=1",
            "train.max_steps=1", "data.num_threads=1", *SMALL[method]]
    base = [o for o in base if o.partition("=")[0] not in given]
    code = main(["train", str(ROOT / "recipes" / f"{method}_small.yaml"), *base, *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("sslpipe: error: "), err
    assert re.search(says, lines[0]), lines[0]
    assert not (tmp_path / f"{method}_small" / "checkpoints").exists()  # nothing trained


def test_a_missing_recipe_is_named(capsys):
    assert main(["train", "recipes/nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "sslpipe: error: recipes/nope.yaml: no such recipe file"
