"""Recipes and overrides: typed, checked, and every error names the file or override and the key."""

from pathlib import Path

import pytest
import torch

from sslpipe.errors import SslpipeError
from sslpipe.methods import METHODS
from sslpipe.pipeline.spec import load_spec
from sslpipe.train.config import load_config

ROOT = Path(__file__).parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def recipe(tmp_path, text, name="mine.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_names_a_shipped_pipeline(path):
    config = load_config(path)
    assert config.train.run == path.stem
    assert load_spec(config.data.pipeline).views  # the pipeline exists and parses


def test_the_shipped_recipes_cover_every_method_at_both_scales():
    names = {p.stem for p in RECIPES}
    for method in ("simclr", "mocov2", "swav", "simsiam"):
        assert f"{method}_small" in names and f"{method}_r50_imagenet" in names


def test_paper_hyperparameters_in_the_imagenet_recipes():
    simclr = load_config(ROOT / "recipes" / "simclr_r50_imagenet.yaml")
    assert (simclr.optim.name, simclr.data.batch_size, simclr.method.temperature) == ("lars", 4096, 0.1)
    assert simclr.optim.exclude_bias_and_norm and simclr.model.sync_bn
    moco = load_config(ROOT / "recipes" / "mocov2_r50_imagenet.yaml")
    assert (moco.method.queue_size, moco.method.momentum, moco.method.temperature) == (65536, 0.999, 0.2)
    assert (moco.optim.name, moco.optim.lr, moco.data.batch_size) == ("sgd", 0.03, 256)
    assert moco.train.epochs == 200
    swav = load_config(ROOT / "recipes" / "swav_r50_imagenet.yaml")
    assert (swav.method.prototypes, swav.method.epsilon, swav.method.sinkhorn_iterations) == (3000, 0.05, 3)
    assert load_spec(swav.data.pipeline).name == "swav_multicrop"
    simsiam = load_config(ROOT / "recipes" / "simsiam_r50_imagenet.yaml")
    assert (simsiam.data.batch_size, simsiam.optim.name, simsiam.optim.lr) == (512, "sgd", 0.05)
    assert simsiam.method.fixed_predictor_lr and not simsiam.optim.exclude_bias_and_norm


def test_overrides_replace_values_with_their_types(tmp_path):
    config = load_config(ROOT / "recipes" / "simclr_small.yaml",
                         ["optim.lr=0.5", "method.projector=[256, 64]", "train.max_steps=3",
                          "model.sync_bn=false"])
    assert config.optim.lr == 0.5 and config.method.projector == (256, 64)
    assert config.train.max_steps == 3 and config.model.sync_bn is False
    assert config.optim.name == "lars"  # untouched values keep the recipe's


@pytest.mark.parametrize("text, message", [
    ("method: {name: simclr}\noptim: {lr: fast}\n", r"mine.yaml: optim.lr: expected a number, got 'fast'"),
    ("method: {name: simclr}\noptim: {lrr: 0.1}\n", r"mine.yaml: optim.lrr: unknown key"),
    ("method: {name: simclr, queue_size: 10}\n", r"mine.yaml: method.queue_size: unknown key"),
    ("method: {name: no_such_method}\n", r"mine.yaml: method.name: unknown method 'no_such_method'"),
    ("data: {batch_size: 8}\n", r"mine.yaml: method.name: required"),
    ("method: {name: simclr}\nextra: 1\n", r"mine.yaml: extra: unknown section"),
    ("method: {name: simclr}\noptim: {name: adamw}\n",
     r"mine.yaml: optim.name: expected one of lars, sgd, adam"),
    ("method: {name: simclr}\ndata: {batch_size: 0}\n", r"mine.yaml: data: batch_size must be >= 1"),
    ("method: {name: simclr, temperature: -1}\n", r"mine.yaml: method: temperature must be > 0"),
    ("method: {name: simclr}\nmodel: {sync_bn: 2}\n", r"mine.yaml: model.sync_bn: expected true or false"),
    ("- a list\n", r"mine.yaml: a recipe is a mapping"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(SslpipeError, match=message):
        load_config(recipe(tmp_path, text))


@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", r"override 'optim.lr=abc': optim.lr: expected a number"),
    ("optim.learning_rate=1", r"override 'optim.learning_rate=1': optim.learning_rate: unknown key"),
    ("lr=1", r"override 'lr=1': expected section.key=value"),
    ("optim.lr", r"expected section.key=value"),
    ("trainer.epochs=1", r"trainer: unknown section"),
    ("train.epochs=1.5", r"train.epochs: expected an integer, got 1.5"),
    ("method.name=nope", r"method.name: unknown method 'nope'"),
])
def test_bad_overrides_name_the_override_and_key(override, message):
    with pytest.raises(SslpipeError, match=message):
        load_config(ROOT / "recipes" / "simclr_small.yaml", [override])


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=0.1", "optim.lr=0.2"],
     r"override 'optim.lr=0.2': optim.lr: already set by override 'optim.lr=0.1' \(give each key once\)"),
    (["optim.lr=0.1", "train.epochs=2", " optim.lr=0.1"],  # the same value too: one of them is a slip
     r"override ' optim.lr=0.1': optim.lr: already set by override 'optim.lr=0.1'"),
    (["data.train=a-000000.tar", "data.train=a-000001.tar"],  # a brace list split by a shell
     r"data.train: already set by override 'data.train=a-000000.tar'"),
    (["method.temperature=0.2", "method.temperature=0.3"], r"method.temperature: already set"),
])
def test_a_key_overridden_twice_is_refused_naming_both(overrides, message):
    with pytest.raises(SslpipeError, match=message):
        load_config(ROOT / "recipes" / "simclr_small.yaml", overrides)


def test_overrides_of_different_keys_in_one_section_combine():
    config = load_config(ROOT / "recipes" / "simclr_small.yaml", ["optim.lr=0.2", "optim.momentum=0.8"])
    assert (config.optim.lr, config.optim.momentum) == (0.2, 0.8)


def test_a_missing_recipe_is_named(tmp_path):
    with pytest.raises(SslpipeError, match="nowhere.yaml: no such recipe file"):
        load_config(tmp_path / "nowhere.yaml")


def test_every_method_config_has_defaults_for_all_fields():
    for cls in METHODS.values():
        cls.Config()  # a recipe may give only `method: {name: ...}`


@pytest.mark.parametrize("name, kind, processes, machines",
                         [("1gpu", "NO", 1, 1), ("8gpu", "MULTI_GPU", 8, 1),
                          ("multinode", "MULTI_GPU", 32, 4)])
def test_accelerate_configs_load(name, kind, processes, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "recipes" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.name == kind
    assert (config.num_processes, config.num_machines) == (processes, machines)
    assert config.mixed_precision == "bf16"


def test_a_shipped_recipe_loads_by_name():
    config = load_config("simclr_small", ["train.epochs=1"])
    assert config.train.run == "simclr_small" and config.method_name == "simclr" and config.train.epochs == 1
    assert config.to_dict()["method"]["name"] == "simclr"
    with pytest.raises(SslpipeError, match="simclr_smal: no such recipe file"):
        load_config("simclr_smal")


def test_choices_come_from_the_registries(tmp_path, monkeypatch):
    from sslpipe.models import BACKBONES
    from sslpipe.optim import OPTIMIZERS

    with pytest.raises(SslpipeError, match=r"model.backbone: expected one of " + ", ".join(BACKBONES)):
        load_config(recipe(tmp_path, "method: {name: simclr}\nmodel: {backbone: vit}\n"))
    with pytest.raises(SslpipeError, match=r"optim.name: expected one of " + ", ".join(OPTIMIZERS)):
        load_config(recipe(tmp_path, "method: {name: simclr}\noptim: {name: adamw}\n"))
    monkeypatch.setitem(METHODS, "simclr2", METHODS["simclr"])  # a new method: its registry line suffices
    config = load_config(recipe(tmp_path, "method: {name: simclr2, temperature: 0.3}\n"))
    assert config.method_name == "simclr2" and config.method.temperature == 0.3


def test_adam_takes_momentum_as_beta1_and_its_own_beta2(tmp_path):
    from sslpipe.train.loop import build_method, build_optimizer

    config = load_config(recipe(tmp_path, "method: {name: rotnet}\n"
                                          "optim: {name: adam, lr: 3.0e-5, momentum: 0.9, beta2: 0.99}\n"))
    optimizer = build_optimizer(config, build_method(config), 3e-5)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99) and optimizer.param_groups[0]["lr"] == 3e-5
    with pytest.raises(SslpipeError, match=r"beta2 must be in \[0, 1\), got 1.0"):
        load_config(recipe(tmp_path, "method: {name: rotnet}\noptim: {name: adam, beta2: 1.0}\n"))
