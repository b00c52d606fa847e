"""The loader end to end on the CPU: shapes, crops and flips, epochs, ranks, resume, errors."""

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_data import COORDINATE_IMAGES, HEIGHT, WIDTH, resized

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.shardlist import resolve_shards
from sslpipe.pipeline.spec import parse_spec
from sslpipe.shards.writer import ShardWriter, read_index

SHIPPED = ["simclr", "mocov2", "byol", "swav_multicrop", "eval"]


def crop_only(size=32, **view):
    """A spec of `count` crop-and-flip views without photometric changes, values left in [0, 1]."""
    return parse_spec({"name": "crop", "views": [{"name": "v", "size": size, "normalize": None, **view}]})


def epoch(loader):
    return [(batch.keys, [v.clone() for v in batch.views], batch.labels.clone()) for batch in loader]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_gives_its_views_on_real_photos(photo_shards, name):
    loader = ViewLoader(name, photo_shards, batch_size=4, seed=0, train=name != "eval")
    batch = next(iter(loader))
    spec = loader.spec
    assert [tuple(v.shape) for v in batch.views] == [(4, 3, v.size, v.size) for v in spec.views]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in batch.views)
    low = (0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    high = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    for v in batch.views:  # normalized values stay inside the normalized [0, 1] range
        channel_min, channel_max = v.amin(dim=(0, 2, 3)), v.amax(dim=(0, 2, 3))
        assert (channel_min >= low - 1e-5).all() and (channel_max <= high + 1e-5).all()
        assert channel_max.max() - channel_min.min() > 1  # real content, not a constant
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (4,)
    assert all(0 <= label < 5 for label in batch.labels.tolist()) and len(batch.keys) == 4
    assert all(key.startswith("n0") for key in batch.keys)


def test_bfloat16_channels_last_and_unnormalized(photo_shards):
    loader = ViewLoader(resized("swav_multicrop", 32), photo_shards, batch_size=4, dtype=torch.bfloat16,
                        channels_last=True, normalize=False)
    batch = next(iter(loader))
    assert len(batch.views) == 8
    for v in batch.views:
        assert v.dtype == torch.bfloat16 and v.is_contiguous(memory_format=torch.channels_last)
        assert v.min() >= 0 and v.max() <= 1


def measured_windows(view: torch.Tensor):
    """Per sample: (area fraction, aspect ratio, flipped) of the source window a view shows."""
    red, green = view[:, 0].double(), view[:, 1].double()
    flipped = red[:, :, 0].mean(1) > red[:, :, -1].mean(1)
    size = view.shape[-1]
    # The view's pixel centres span (size - 1) / size of the window.
    width = (red.amax((1, 2)) - red.amin((1, 2))) * (WIDTH - 1) * size / (size - 1)
    height = (green.amax((1, 2)) - green.amin((1, 2))) * (HEIGHT - 1) * size / (size - 1)
    return (width * height / (WIDTH * HEIGHT)).numpy(), (width / height).numpy(), flipped.numpy()


@pytest.mark.parametrize("decode", ["once", "roi"])
def test_crop_areas_aspect_ratios_and_flips_follow_the_spec(coordinate_shards, decode):
    spec = crop_only(count=2, scale=[0.25, 0.5], ratio=[0.75, 1.3333], flip=0.5)
    loader = ViewLoader(spec, coordinate_shards, batch_size=8, seed=3, decode=decode)
    areas, ratios, flips = [], [], []
    for _ in range(2):  # two epochs: 2 x 15 batches x 2 views x 8 = 480 windows
        for batch in loader:
            for view in batch.views:
                area, ratio, flipped = measured_windows(view)
                areas += list(area)
                ratios += list(ratio)
                flips += list(flipped)
    areas, ratios = np.array(areas), np.array(ratios)
    assert len(areas) == 480
    assert areas.min() > 0.25 * 0.9 and areas.max() < 0.5 * 1.1, (areas.min(), areas.max())
    assert (areas < 0.32).mean() > 0.1 and (areas > 0.43).mean() > 0.1  # spread over the range
    assert ratios.min() > 0.75 * 0.9 and ratios.max() < 1.3333 * 1.1
    assert abs(np.mean(flips) - 0.5) < 4 * np.sqrt(0.25 / len(flips))


def test_no_flip_and_full_scale_crops(coordinate_shards):
    loader = ViewLoader(crop_only(scale=[1.0, 1.0], ratio=[1.3333, 1.3333], flip=0.0), coordinate_shards,
                        batch_size=8)
    area, ratio, flipped = measured_windows(next(iter(loader)).views[0])
    assert not flipped.any() and np.allclose(area, 1.0, atol=0.05) and np.allclose(ratio, 4 / 3, atol=0.07)


def test_eval_center_crop_is_centered_and_deterministic(coordinate_shards):
    spec = parse_spec({"views": [{"name": "c", "size": 48, "crop": "center", "resize": 96, "flip": 0.0,
                                  "normalize": None}]})
    first = epoch(ViewLoader(spec, coordinate_shards, batch_size=16, train=False, seed=1))
    second = epoch(ViewLoader(spec, coordinate_shards, batch_size=16, train=False, seed=2))
    assert [k for k, _, _ in first] == [k for k, _, _ in second]  # evaluation reads in order
    view = first[0][1][0]
    red, green = view[:, 0], view[:, 1]
    # The shorter side (120 px) becomes 96; the centre 48 px square is the middle half.
    assert torch.allclose(red.mean(), torch.tensor(0.5, dtype=red.dtype), atol=0.02)
    assert torch.allclose(green.mean(), torch.tensor(0.5, dtype=green.dtype), atol=0.02)
    assert 0.3 < float(green.amax() - green.amin()) < 0.55


def test_grayscale_fraction_follows_p(coordinate_shards):
    spec = crop_only(count=2, grayscale=0.3)
    gray = []
    for batch in ViewLoader(spec, coordinate_shards, batch_size=8, seed=5):
        for view in batch.views:
            gray += ((view[:, 0] == view[:, 1]) & (view[:, 1] == view[:, 2])).flatten(1).all(1).tolist()
    assert len(gray) == 240 and abs(np.mean(gray) - 0.3) < 4 * np.sqrt(0.21 / 240)


def test_same_seed_same_stream_other_seed_other_stream(coordinate_shards):
    spec = resized("simclr", 24)
    one, two = (epoch(ViewLoader(spec, coordinate_shards, batch_size=8, seed=7)) for _ in range(2))
    other = epoch(ViewLoader(spec, coordinate_shards, batch_size=8, seed=8))
    assert [k for k, _, _ in one] == [k for k, _, _ in two]
    assert all(torch.equal(a, b) for (_, va, _), (_, vb, _) in zip(one, two) for a, b in zip(va, vb))
    assert [k for k, _, _ in one] != [k for k, _, _ in other]


def test_epochs_advance_reshuffle_and_never_repeat_a_sample(coordinate_shards):
    loader = ViewLoader(crop_only(), coordinate_shards, batch_size=8, seed=0)
    assert len(loader) == COORDINATE_IMAGES // 8
    epochs = []
    for _ in range(3):  # no set_epoch: each full pass is the next epoch
        keys = [key for batch in loader for key in batch.keys]
        assert len(keys) == len(loader) * 8 == len(set(keys))
        epochs.append(keys)
    assert loader.epoch == 3 and epochs[0] != epochs[1] != epochs[2]
    fresh = ViewLoader(crop_only(), coordinate_shards, batch_size=8, seed=0)
    fresh.set_epoch(2)
    assert [key for batch in fresh for key in batch.keys] == epochs[2]


def test_breaking_out_continues_the_same_epoch(coordinate_shards):
    loader = ViewLoader(crop_only(), coordinate_shards, batch_size=8, seed=0)
    whole = [batch.keys for batch in ViewLoader(crop_only(), coordinate_shards, batch_size=8, seed=0)]
    parts = []
    for batch in loader:
        parts.append(batch.keys)
        if len(parts) == 4:
            break
    parts += [batch.keys for batch in loader]
    assert parts == whole and loader.epoch == 1


def test_a_loop_stopped_after_the_last_batch_still_moves_to_the_next_epoch(coordinate_shards):
    loader = ViewLoader(crop_only(), coordinate_shards, batch_size=8, seed=0)
    first = [batch.keys for _, batch in zip(range(len(loader)), loader)]  # zip stops before the end
    second = [batch.keys for batch in loader]
    assert len(first) == len(second) == len(loader) and first != second and loader.epoch == 2


@pytest.mark.parametrize("world_size, batch_size", [(2, 8), (7, 4)])
def test_ranks_read_disjoint_parts_with_equal_batch_counts(coordinate_shards, world_size, batch_size):
    loaders = [ViewLoader(crop_only(), coordinate_shards, batch_size, rank=r, world_size=world_size, seed=4)
               for r in range(world_size)]
    assert len({len(loader) for loader in loaders}) == 1
    keys = [[key for batch in loader for key in batch.keys] for loader in loaders]
    assert all(len(k) == len(loaders[0]) * batch_size for k in keys)
    everything = [key for k in keys for key in k]
    assert len(everything) == len(set(everything))  # disjoint
    assert len(everything) >= COORDINATE_IMAGES - world_size * (batch_size - 1)  # only remainders dropped

    evaluation = [ViewLoader(crop_only(), coordinate_shards, batch_size, rank=r, world_size=world_size,
                             train=False) for r in range(world_size)]
    assert len({len(loader) for loader in evaluation}) == 1
    seen = []
    for loader in evaluation:
        batches = list(loader)
        assert len(batches) == len(loader)
        for batch in batches:
            assert batch.views[0].shape[0] == batch.labels.shape[0] == len(batch.keys)
            seen += batch.keys
    assert sorted(seen) == sorted({key for shard in resolve_shards(coordinate_shards) for key in shard.keys})


@pytest.mark.parametrize("stop_at", [(0, 5), (1, 0), (1, 14)])
def test_state_dict_resumes_mid_epoch_exactly(coordinate_shards, stop_at):
    spec = resized("byol", 24)
    reference = ViewLoader(spec, coordinate_shards, batch_size=8, seed=11)
    stream = epoch(reference) + epoch(reference)

    first = ViewLoader(spec, coordinate_shards, batch_size=8, seed=11)
    done = 0
    for _ in range(stop_at[0]):
        done += len(epoch(first))
    for _, _ in zip(range(stop_at[1]), first):
        done += 1
    state = first.state_dict()
    del first
    resumed = ViewLoader(spec, coordinate_shards, batch_size=8, seed=11)
    resumed.load_state_dict(state)
    rest = epoch(resumed) + (epoch(resumed) if stop_at[0] == 0 else [])
    assert len(rest) == len(stream) - done
    for (keys_a, views_a, labels_a), (keys_b, views_b, labels_b) in zip(stream[done:], rest):
        assert keys_a == keys_b and torch.equal(labels_a, labels_b)
        assert all(torch.equal(a, b) for a, b in zip(views_a, views_b))


def test_resume_through_the_readme_loop_keeps_the_position(coordinate_shards):
    """The README's loop calls set_epoch(epoch) first, also right after load_state_dict."""
    spec = resized("simclr", 24)
    reference = ViewLoader(spec, coordinate_shards, batch_size=8, seed=2)
    stream = []
    for number in range(2):
        reference.set_epoch(number)
        stream += [(number, batch.keys) for batch in reference]
    interrupted = ViewLoader(spec, coordinate_shards, batch_size=8, seed=2)
    interrupted.set_epoch(0)
    seen = [(0, batch.keys) for _, batch in zip(range(5), interrupted)]
    state = interrupted.state_dict()
    resumed = ViewLoader(spec, coordinate_shards, batch_size=8, seed=2)
    resumed.load_state_dict(state)
    for number in range(state["epoch"], 2):
        resumed.set_epoch(number)
        seen += [(number, batch.keys) for batch in resumed]
    assert seen == stream


def test_resume_refuses_other_settings(coordinate_shards):
    state = ViewLoader(crop_only(), coordinate_shards, batch_size=8).state_dict()
    with pytest.raises(SslpipeError, match="batch_size=8, this one has 4"):
        ViewLoader(crop_only(), coordinate_shards, batch_size=4).load_state_dict(state)
    with pytest.raises(SslpipeError, match="a position but no DALI checkpoint"):
        ViewLoader(crop_only(), coordinate_shards, batch_size=8).load_state_dict({**state, "position": 3})


# Errors, each naming what is at fault.

def test_missing_or_empty_shards(tmp_path, coordinate_shards):
    with pytest.raises(SslpipeError, match="no shards match .*nothing-"):
        ViewLoader("simclr", str(tmp_path / "nothing-*.tar"), batch_size=8)
    with pytest.raises(SslpipeError, match="is a folder: give a shard pattern such as"):
        ViewLoader("simclr", str(tmp_path), batch_size=8)
    writer = ShardWriter(tmp_path, "empty-000000")
    writer.finish()
    writer.publish()
    with pytest.raises(SslpipeError, match="hold no samples"):
        ViewLoader("simclr", str(tmp_path / "empty-*.tar"), batch_size=8)
    with pytest.raises(SslpipeError, match="120 samples: 120 per rank, fewer than one batch of 128"):
        ViewLoader("simclr", coordinate_shards, batch_size=128)


def copy_shards(pattern, target: Path) -> list[Path]:
    target.mkdir()
    for path in Path(pattern).parent.glob("train-*"):
        shutil.copy(path, target)
    return sorted(target.glob("*.tar"))


def test_shard_without_index_says_how_to_build_one(tmp_path, coordinate_shards):
    tars = copy_shards(coordinate_shards, tmp_path / "shards")
    tars[2].with_suffix(".idx").unlink()
    with pytest.raises(SslpipeError, match=r"train-000002.tar: no DALI index .*wds2idx"):
        ViewLoader("simclr", str(tmp_path / "shards" / "*.tar"), batch_size=8)


def test_sample_without_label_is_named(tmp_path, coordinate_shards):
    writer = ShardWriter(tmp_path, "odd-000000")
    writer.add("labelled", {"jpg": b"not checked before reading", "cls": b"0"})
    writer.add("no_label", {"jpg": b"not checked before reading"})
    writer.finish()
    writer.publish()
    with pytest.raises(SslpipeError, match=r"odd-000000.tar: sample 'no_label' has no .cls"):
        ViewLoader("simclr", str(tmp_path / "odd-*.tar"), batch_size=1)


def test_corrupt_jpeg_names_shard_and_key_and_points_at_verify(tmp_path, coordinate_shards):
    tars = copy_shards(coordinate_shards, tmp_path / "shards")
    sample = read_index(tars[3].with_suffix(".idx"))[4]
    _, offset, size, name = next(m for m in sample if m[0] == "jpg")
    with open(tars[3], "r+b") as f:  # keep the start-of-image marker, wipe the headers after it
        f.seek(offset + 2)
        f.write(b"\x00" * 300)
    loader = ViewLoader(crop_only(), str(tmp_path / "shards" / "*.tar"), batch_size=8, train=False)
    with pytest.raises(SslpipeError) as error:
        list(loader)
    message = str(error.value)
    assert "train-000003.tar" in message and repr(name.split(".")[0]) in message
    assert "sslpipe verify" in message
    # The repairs and what each does to a training run (see the next test).
    assert "`sslpipe convert ... --overwrite`" in message
    assert "resumes from its checkpoints exactly" in message
    assert "`sslpipe train --resume` refuses the checkpoints (the sample count changed)" in message
    assert "\n" not in message
    # The position where DALI stopped is lost: no state to save, no silent restart of the epoch.
    with pytest.raises(SslpipeError, match="this loader stopped on an error"):
        loader.state_dict()
    with pytest.raises(SslpipeError, match="this loader stopped on an error"):
        list(loader)


def rewrite_shard(tar: Path, change) -> None:
    """Write `tar` and its index again with `change({key: {ext: bytes}})`'s samples."""
    samples = {}
    with tarfile.open(tar) as f:
        for member in f:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = f.extractfile(member).read()
    writer = ShardWriter(tar.parent, tar.stem)
    for key, members in change(samples).items():
        writer.add(key, members)
    writer.finish()
    writer.publish()


def test_a_shard_set_with_a_sample_removed_is_refused_on_resume(tmp_path, coordinate_shards):
    """What the decode error says of removing the bad sample."""
    tars = copy_shards(coordinate_shards, tmp_path / "shards")
    loader = ViewLoader(crop_only(), str(tmp_path / "shards" / "*.tar"), batch_size=8)
    for _, _ in zip(range(3), loader):
        pass
    state = loader.state_dict()
    rewrite_shard(tars[2], lambda samples: dict(list(samples.items())[1:]))
    resumed = ViewLoader(crop_only(), str(tmp_path / "shards" / "*.tar"), batch_size=8)
    with pytest.raises(SslpipeError, match=f"cannot resume: the saved loader had num_samples="
                                           f"{COORDINATE_IMAGES}, this one has {COORDINATE_IMAGES - 1}"):
        resumed.load_state_dict(state)


def test_a_batch_that_fails_after_dali_stops_the_loader(tmp_path, coordinate_shards):
    """A batch's DALI outputs are taken before it is made: once making it failed, iterating on must
    raise again, never skip that batch and end the epoch on samples past its end."""
    tars = copy_shards(coordinate_shards, tmp_path / "shards")
    loader = ViewLoader(crop_only(), str(tmp_path / "shards" / "*.tar"), batch_size=8, train=False)
    # Rewritten after the loader read the index: DALI reads the samples at other offsets.
    rewrite_shard(tars[0], lambda samples: {key: {"txt": b"moved", **m} for key, m in samples.items()})
    with pytest.raises(SslpipeError, match=r"train-000000.tar: DALI read .* which is no sample of the shard"):
        list(loader)
    for _ in range(2):
        with pytest.raises(SslpipeError, match="this loader stopped on an error .*no sample of the shard"):
            list(loader)
    with pytest.raises(SslpipeError, match="this loader stopped on an error"):
        loader.state_dict()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_pipeline_without_cuda_is_a_clear_error(coordinate_shards):
    with pytest.raises(SslpipeError, match="no CUDA GPU on this machine: use device='cpu'"):
        ViewLoader("simclr", coordinate_shards, batch_size=8, device="cuda")


def test_bad_arguments(coordinate_shards):
    with pytest.raises(SslpipeError, match="rank must be in"):
        ViewLoader("simclr", coordinate_shards, batch_size=8, rank=2, world_size=2)
    with pytest.raises(SslpipeError, match="decode must be 'once' or 'roi'"):
        ViewLoader("simclr", coordinate_shards, batch_size=8, decode="twice")
    with pytest.raises(SslpipeError, match="no pipeline spec named"):
        ViewLoader("simclrr", coordinate_shards, batch_size=8)


@pytest.mark.parametrize("setting, value, message", [
    ("shuffle_buffer", 0, "shuffle_buffer must be >= 1, got 0"),  # both crash DALI's reader (SIGSEGV)
    ("shuffle_buffer", -5, "shuffle_buffer must be >= 1, got -5"),
    ("num_threads", 0, r"num_threads must be >= 1 \(or None: this process's share of the cores\), got 0"),
    ("num_threads", -1, "num_threads must be >= 1 .*got -1"),
    ("prefetch", 0, "prefetch must be >= 1, got 0"),
])
def test_dali_settings_below_one_are_refused(coordinate_shards, setting, value, message):
    with pytest.raises(SslpipeError, match=message):
        ViewLoader(crop_only(), coordinate_shards, batch_size=8, **{setting: value})


def test_the_smallest_settings_run(coordinate_shards):
    loader = ViewLoader(crop_only(), coordinate_shards, batch_size=8, shuffle_buffer=1, num_threads=1,
                        prefetch=1)
    for _ in range(2):
        keys = [key for batch in loader for key in batch.keys]
        assert len(keys) == len(set(keys)) == len(loader) * 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("decode", ["once", "roi"])
def test_gpu_pipeline_gives_the_same_kind_of_views(photo_shards, decode):
    loader = ViewLoader("swav_multicrop", photo_shards, batch_size=4, device="cuda", decode=decode,
                        dtype=torch.bfloat16, channels_last=True)
    for batch in loader:
        assert [tuple(v.shape) for v in batch.views] == [(4, 3, 224, 224)] * 2 + [(4, 3, 96, 96)] * 6
        assert all(v.is_cuda and v.dtype == torch.bfloat16 and torch.isfinite(v).all() for v in batch.views)
        assert batch.labels.is_cuda and len(batch.keys) == 4
