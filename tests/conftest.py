"""Shared fixtures: small ImageNet-layout trees of real photos and their shards, built once per session."""

import os
import shutil
import subprocess

import pytest

from sslpipe.fixtures.imagenet import build_imagenet_fixture
from sslpipe.shards import ConvertOptions, convert_split, imagenet_splits


@pytest.fixture(scope="session")
def imagenet_tree(tmp_path_factory):
    """`imagenet_tree(layout, **sizes)` -> (root, description), built once per session; never
    modify it (see `imagenet_copy`)."""
    built = {}

    def build(layout="classic", **sizes):
        name = (layout, *sorted(sizes.items()))
        if name not in built:
            root = tmp_path_factory.mktemp(f"imagenet-{layout}") / "root"
            built[name] = root, build_imagenet_fixture(root, layout=layout, **sizes)
        return built[name]

    return build


@pytest.fixture
def imagenet_copy(imagenet_tree, tmp_path):
    """`imagenet_copy(layout)` -> (root, description) of a private copy that a test may change."""
    def copy(layout="classic"):
        source, description = imagenet_tree(layout)
        root = tmp_path / f"imagenet-{layout}"
        shutil.copytree(source, root)
        return root, description

    return copy


@pytest.fixture(scope="session")
def photo_shards(imagenet_tree, tmp_path_factory):
    """Pattern of the fixture's train photos (5 classes x 8, quirks rejected by the converter)."""
    root, _ = imagenet_tree("classic")
    out = tmp_path_factory.mktemp("photo-shards")
    for source in imagenet_splits(root, ["train"]):
        convert_split(source, out, ConvertOptions(shard_samples=16), progress=False)
    return str(out / "train-*.tar")


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(name, options)` -> `tmp_path/name` with a tmpfs mounted there ("size=60m",
    "ro,size=64k"), for disks that really fill up; called again with the same name it remounts
    (a resize). Root only, else the test is skipped; unmounted after the test."""
    mounted = []

    def mount(name: str, options: str):
        where = tmp_path / name
        again = where in mounted
        if not again:
            if os.geteuid() != 0:
                pytest.skip("mounting a tmpfs needs root")
            where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"remount,{options}" if again else options,
                               "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode and not again:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        if not again:
            mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=True)
