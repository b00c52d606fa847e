"""The batch contract of the loader: global sample index, lazy keys, size groups, crop windows
and flips, and the errors and resume checks around them."""

import numpy as np
import pytest
import torch
from pipeline_data import HEIGHT, WIDTH, resized
from test_loader import copy_shards, crop_only, measured_windows

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.shardlist import resolve_shards
from sslpipe.pipeline.spec import load_spec, parse_spec
from sslpipe.shards.writer import ShardWriter, read_index


def all_keys(pattern):
    return [key for shard in resolve_shards(pattern) for key in shard.keys]


def test_the_global_index_is_the_position_in_the_shard_list_whatever_the_epoch_and_ranks(coordinate_shards):
    keys = all_keys(coordinate_shards)
    seen = {}
    for world_size in (1, 2, 7):
        for rank in range(world_size):
            loader = ViewLoader(
                crop_only(8), coordinate_shards, batch_size=4, rank=rank, world_size=world_size, seed=3
            )
            for _ in range(2):  # two epochs, reshuffled
                for batch in loader:
                    assert batch.index.dtype == torch.int64 and batch.index.shape == (4,)
                    assert batch.keys == [keys[i] for i in batch.index.tolist()]
                    for i, key in zip(batch.index.tolist(), batch.keys):
                        assert seen.setdefault(i, key) == key
    assert sorted(seen) == list(range(len(keys)))  # every sample, each with one index
    # In evaluation order the index runs through the shards as listed.
    evaluation = [
        i
        for batch in ViewLoader(crop_only(8), coordinate_shards, batch_size=16, train=False)
        for i in batch.index.tolist()
    ]
    assert evaluation == list(range(len(keys)))


def test_views_are_slices_of_their_size_group(coordinate_shards):
    spec = resized("swav_multicrop", 16)
    spec = parse_spec(
        {"views": [{**spec.groups[0].to_dict(), "size": 24}, {**spec.groups[1].to_dict(), "size": 16}]}
    )
    batch = next(iter(ViewLoader(spec, coordinate_shards, batch_size=4)))
    assert [(g.size, g.views) for g in batch.groups] == [(24, (0, 1)), (16, (2, 3, 4, 5, 6, 7))]
    assert batch.names == ("global",) * 2 + ("local",) * 6 and batch.named("local") == [2, 3, 4, 5, 6, 7]
    for group in batch.groups:
        assert group.images.shape == (4 * len(group.views), 3, group.size, group.size)
        for j, i in enumerate(group.views):
            assert torch.equal(batch.views[i], group.images[4 * j : 4 * (j + 1)])
            assert batch.views[i].data_ptr() == group.images[4 * j :].data_ptr()  # the same memory
    assert batch.concat((0, 1)) is batch.groups[0].images
    reordered = batch.concat((3, 2))  # not a group: a copy, in the order asked
    assert torch.equal(reordered, torch.cat([batch.views[3], batch.views[2]]))


@pytest.mark.parametrize("decode", ["once", "roi"])
def test_windows_and_flips_are_the_crops_dali_took(coordinate_shards, decode):
    spec = crop_only(size=32, count=2, scale=[0.2, 0.6], flip=0.5)
    loader = ViewLoader(spec, coordinate_shards, batch_size=8, seed=2, decode=decode, windows=True)
    flips = []
    for batch in loader:
        assert len(batch.windows) == len(batch.flips) == 2
        for view, window, flip in zip(batch.views, batch.windows, batch.flips):
            area, ratio, flipped = measured_windows(view)
            top, left, height, width = window.double().T.numpy()
            np.testing.assert_allclose(height * width, area, rtol=0.12)
            np.testing.assert_allclose(width * WIDTH / (height * HEIGHT), ratio, rtol=0.12)
            assert np.array_equal(flip.numpy(), flipped)
            # The left edge: the smallest x (red) the view shows, the top: the smallest y (green).
            shown = view.double()
            red_left = np.where(flipped, shown[:, 0, :, -1].mean(1), shown[:, 0, :, 0].mean(1))
            np.testing.assert_allclose(left, red_left, atol=0.04)
            np.testing.assert_allclose(top, shown[:, 1, 0, :].mean(1).numpy(), atol=0.04)
            assert ((top >= 0) & (left >= 0) & (top + height <= 1 + 1e-6) & (left + width <= 1 + 1e-6)).all()
            flips += flip.tolist()
    assert 0.3 < np.mean(flips) < 0.7


def test_center_crop_windows(coordinate_shards):
    spec = parse_spec({"views": [{"name": "c", "size": 48, "crop": "center", "resize": 96, "flip": 0.0}]})
    batch = next(iter(ViewLoader(spec, coordinate_shards, batch_size=4, train=False, windows=True)))
    # 160 x 120 -> shorter side 96 (x 0.8): the central 48 px are 60 source px, half the height.
    expected = torch.tensor([(120 - 60) / 2 / 120, (160 - 60) / 2 / 160, 60 / 120, 60 / 160])
    torch.testing.assert_close(batch.windows[0], expected.expand(4, 4))
    assert not batch.flips[0].any()


def test_windows_resume_exactly(coordinate_shards):
    spec = crop_only(size=16, count=2, scale=[0.2, 0.6])
    whole = [
        (b.windows, b.views) for b in ViewLoader(spec, coordinate_shards, batch_size=8, seed=1, windows=True)
    ]
    first = ViewLoader(spec, coordinate_shards, batch_size=8, seed=1, windows=True)
    for _, _ in zip(range(4), first):
        pass
    resumed = ViewLoader(spec, coordinate_shards, batch_size=8, seed=1, windows=True)
    resumed.load_state_dict(first.state_dict())
    for (windows, views), batch in zip(whole[4:], resumed):
        assert all(torch.equal(a, b) for a, b in zip(windows, batch.windows))
        assert all(torch.equal(a, b) for a, b in zip(views, batch.views))
    with pytest.raises(SslpipeError, match="windows=True, this one has False"):
        ViewLoader(spec, coordinate_shards, batch_size=8, seed=1).load_state_dict(first.state_dict())


def test_an_edited_spec_is_refused_on_resume_naming_what_changed(coordinate_shards):
    spec = resized("byol", 16)
    loader = ViewLoader(spec, coordinate_shards, batch_size=8)
    for _, _ in zip(range(2), loader):
        pass
    state = loader.state_dict()
    edited = parse_spec({"name": "byol", "views": [g.to_dict() for g in spec.groups]}, "edited.yaml")
    ViewLoader(edited, coordinate_shards, batch_size=8).load_state_dict(state)  # the same views: fine
    data = [g.to_dict() for g in spec.groups]
    data[1]["blur"]["p"] = 0.5
    edited = parse_spec({"name": "byol", "views": data}, "edited.yaml")
    with pytest.raises(
        SslpipeError,
        match=r"spec 'byol' \(edited.yaml\) differs from the one the saved loader ran "
        r"\('byol'\): views\[1\].blur.p: 0.1 -> 0.5",
    ):
        ViewLoader(edited, coordinate_shards, batch_size=8).load_state_dict(state)


@pytest.mark.parametrize("train", [False, True])
def test_a_label_that_is_not_an_integer_names_shard_and_key_and_stops_the_loader(tmp_path, coordinate_shards,
                                                                                 train):
    tars = copy_shards(coordinate_shards, tmp_path / "shards")
    good = resolve_shards(str(tars[0]))[0]
    writer = ShardWriter(tmp_path / "shards", "train-000009")
    with open(good.path, "rb") as f:  # a real image, so that DALI decodes it
        f.seek(good.offsets[0])
        jpeg = f.read(next(size for ext, _, size, _ in read_index(good.index)[0] if ext == "jpg"))
    for i in range(8):
        writer.add(f"bad{i}", {"jpg": jpeg, "cls": b"cat" if i == 3 else b"1"})
    writer.finish()
    writer.publish()
    loader = ViewLoader(
        crop_only(8), str(tmp_path / "shards" / "train-000009.tar"), batch_size=8, train=train
    )
    with pytest.raises(
        SslpipeError,
        match=r"train-000009.tar: sample 'bad3' has a .cls that is not an integer "
        r"\(b'cat'\); run `sslpipe verify",
    ):
        list(loader)
    for _ in range(2):  # never the next batch instead, or the samples after the epoch's end
        with pytest.raises(SslpipeError, match="this loader stopped on an error .*'bad3' has a .cls"):
            list(loader)
    with pytest.raises(SslpipeError, match="this loader stopped on an error"):
        loader.state_dict()


@pytest.mark.parametrize("size", [48, 16])
def test_a_multi_size_spec_rescaled_keeps_its_proportions_and_runs(coordinate_shards, size):
    spec = load_spec("swav_multicrop", size=size)
    (global_view, local_view) = spec.groups
    assert global_view.size == size and local_view.size == round(96 * size / 224)
    # The local views' explicit 23 taps (the global views' 10%) scale with them.
    assert local_view.blur.kernel_for(local_view.size) == global_view.blur.kernel_for(global_view.size)
    batch = next(iter(ViewLoader(spec, coordinate_shards, batch_size=4)))
    assert [v.shape[-1] for v in batch.views] == [global_view.size] * 2 + [local_view.size] * 6


def test_a_blur_kernel_larger_than_the_view_is_a_clear_error(coordinate_shards):
    spec = parse_spec({"views": [{"name": "v", "size": 8, "blur": {"kernel_size": 23}}]}, "mine.yaml")
    with pytest.raises(SslpipeError, match=r"mine.yaml: a blur kernel of 23 taps does not fit a 8-px view"):
        ViewLoader(spec, coordinate_shards, batch_size=4)
