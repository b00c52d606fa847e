import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslpipe.errors import SslpipeError
from sslpipe.shards.convert import ConvertOptions, convert_split
from sslpipe.shards.folder import folder_split
from sslpipe.shards.imagenet import imagenet_splits
from sslpipe.shards.images import ImagePolicy
from sslpipe.shards.manifest import Manifest
from sslpipe.shards.verify import verify_output
from sslpipe.shards.writer import read_index

SMALL = ConvertOptions(shard_samples=7)


def convert(root, out, options=SMALL, splits=("train", "val"), **kwargs):
    return {s.split: convert_split(s, out, options, progress=False, **kwargs)
            for s in imagenet_splits(root, list(splits))}


def read_split(out, split):
    """{key: {ext: bytes}} over the split's shards, in manifest order."""
    samples = {}
    for shard in Manifest.read(out / f"{split}.manifest.json").shards:
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def test_every_valid_file_appears_once_with_its_label(imagenet_tree, tmp_path):
    root, description = imagenet_tree("classic")
    results = convert(root, tmp_path)
    wnids = sorted(c["wnid"] for c in description["classes"])
    for split in ("train", "val"):
        samples = read_split(tmp_path, split)
        valid = [f for f in description["files"] if f["split"] == split and f["expect"] != "reject"]
        assert len(samples) == len(valid) == results[split].manifest.totals["written"]
        for f in valid:
            sample = samples[Path(f["path"]).stem]
            assert int(sample["cls"]) == wnids.index(f["wnid"])
            meta = json.loads(sample["json"])
            assert (meta["path"], meta["wnid"]) == (f["path"], f["wnid"])
            image = Image.open(io.BytesIO(sample["jpg"]))
            assert image.format == "JPEG" and image.mode in ("RGB", "L")
            if f["expect"] == "keep":
                assert sample["jpg"] == (root / f["path"]).read_bytes() and "reencoded" not in meta
            else:
                assert image.mode == "RGB" and meta["reencoded"] in ("mode:CMYK", "format:PNG")


def test_both_val_label_routes_give_identical_shards_labels(imagenet_tree, tmp_path):
    labels = {}
    for layout in ("classic", "kaggle"):
        convert(imagenet_tree(layout)[0], tmp_path / layout, splits=["val"])
        labels[layout] = [(key, s["cls"]) for key, s in read_split(tmp_path / layout, "val").items()]
    assert labels["classic"] == labels["kaggle"]  # same keys, same labels, same order


def test_quirks_rejected_list_and_reconciliation(imagenet_tree, tmp_path):
    root, description = imagenet_tree("classic")
    results = convert(root, tmp_path)
    reasons = {"empty": "empty", "truncated": "truncated", "not_image": "not_image"}
    for split, result in results.items():
        files = [f for f in description["files"] if f["split"] == split]
        lines = (tmp_path / f"{split}.rejected.jsonl").read_text().splitlines()
        rejected = [json.loads(line) for line in lines]
        assert sorted((r["path"], r["reason"]) for r in rejected) == sorted(
            (f["path"], reasons[f["quirk"]]) for f in files if f["expect"] == "reject")
        assert all(r["detail"] for r in rejected)
        totals = result.manifest.totals
        assert totals["found"] == len(files) == totals["written"] + totals["rejected"]
        expected = {"format:PNG": 1, "mode:CMYK": 1} if split == "train" else {"mode:CMYK": 1}
        assert totals["reencoded"] == expected
        assert totals["kept"] == sum(f["expect"] == "keep" for f in files)


def test_baseline_option_reencodes_progressive_jpegs(imagenet_tree, tmp_path):
    root, description = imagenet_tree("classic")
    options = ConvertOptions(shard_samples=7, image=ImagePolicy(baseline=True))
    convert(root, tmp_path, options, splits=["train"])
    (progressive,) = [f for f in description["files"] if f["quirk"] == "progressive"]
    sample = read_split(tmp_path, "train")[Path(progressive["path"]).stem]
    assert json.loads(sample["json"])["reencoded"] == "progressive"
    assert "progressive" not in Image.open(io.BytesIO(sample["jpg"])).info


def test_the_same_inputs_give_byte_identical_shards_whatever_the_workers(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    convert(root, tmp_path / "one", workers=1)
    convert(root, tmp_path / "two", workers=2)
    one, two = folder_bytes(tmp_path / "one"), folder_bytes(tmp_path / "two")
    assert len(one) == 2 + 2 + 2 * (7 + 4)  # manifests, rejected lists, 7 + 4 shards with indexes
    assert one == two


def test_the_seed_shuffles_globally(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    convert(root, tmp_path / "a", splits=["train"])
    convert(root, tmp_path / "b", ConvertOptions(seed=1, shard_samples=7), splits=["train"])
    order_a, order_b = list(read_split(tmp_path / "a", "train")), list(read_split(tmp_path / "b", "train"))
    assert sorted(order_a) == sorted(order_b) and order_a != order_b
    # Not grouped by class: the first shard mixes classes.
    assert len({key.split("_")[0] for key in order_a[:7]}) > 1


def test_shards_close_at_the_byte_limit(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    limit = 300_000
    (result,) = convert(root, tmp_path, ConvertOptions(shard_samples=None, shard_bytes=limit),
                        splits=["train"]).values()
    shards = result.manifest.shards
    assert len(shards) > 3
    assert sum(s["samples"] for s in shards) == result.manifest.totals["written"]
    for shard, following in zip(shards, shards[1:]):
        # The samples fit (tar's end-of-archive padding of < 10 KiB comes on top) ...
        samples = read_index(tmp_path / shard["index"])
        end_of_samples = samples[-1][-1][1] + samples[-1][-1][2]
        assert end_of_samples <= limit
        # ... and the next sample would not have: the shard is as full as it can be.
        first = read_index(tmp_path / following["index"])[0]
        assert end_of_samples + sum(512 + -(-size // 512) * 512 for _, _, size, _ in first) > limit


def test_rerun_of_a_finished_conversion_does_nothing(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    convert(root, tmp_path)
    before = folder_bytes(tmp_path)
    results = convert(root, tmp_path)
    assert all(r.already_done for r in results.values()) and folder_bytes(tmp_path) == before


def test_existing_output_with_other_settings_is_an_error(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    convert(root, tmp_path, splits=["train"])
    with pytest.raises(SslpipeError, match="different settings.*shard_samples: 7 there, 8 now.*--overwrite"):
        convert(root, tmp_path, ConvertOptions(shard_samples=8), splits=["train"])
    convert(root, tmp_path, ConvertOptions(shard_samples=8), splits=["train"], overwrite=True)
    assert Manifest.read(tmp_path / "train.manifest.json").options["shard_samples"] == 8
    assert not (tmp_path / "train-000006.tar").exists()  # the 7-sample shards are gone


def test_a_changed_source_is_detected(imagenet_copy, tmp_path):
    root, description = imagenet_copy("classic")
    convert(root, tmp_path / "out", splits=["train"])
    victim = next(f["path"] for f in description["files"] if f["split"] == "train" and f["expect"] == "keep")
    (root / victim).write_bytes((root / victim).read_bytes() + b"\0")
    with pytest.raises(SslpipeError, match="the source files changed"):
        convert(root, tmp_path / "out", splits=["train"])


def test_a_missing_shard_of_a_finished_conversion_is_reported(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    convert(root, tmp_path, splits=["train"])
    (tmp_path / "train-000002.tar").unlink()
    with pytest.raises(SslpipeError, match="train-000002.tar is missing.*sslpipe verify"):
        convert(root, tmp_path, splits=["train"])


def test_unwritable_output_and_bad_options(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    (tmp_path / "file").write_text("")
    with pytest.raises(SslpipeError, match="output folder .*file/out is not writable"):
        convert(root, tmp_path / "file" / "out")
    for bad, message in [(dict(shard_samples=0), "shard_samples must be at least 1"),
                         (dict(shard_samples=None, shard_bytes=None), "give a shard size"),
                         (dict(image=ImagePolicy(quality=0)), "quality must be within 1..100"),
                         (dict(image=ImagePolicy(short_side=0)), "short_side must be at least 1")]:
        with pytest.raises(SslpipeError, match=message):
            ConvertOptions(**bad)


def test_an_unlabeled_folder(imagenet_tree, tmp_path):
    root, _ = imagenet_tree("classic")
    source = folder_split(root / "val", split="photos")
    result = convert_split(source, tmp_path, SMALL, progress=False)
    samples = read_split(tmp_path, "photos")
    assert result.manifest.classes == [] and len(samples) == result.manifest.totals["written"] > 0
    assert {s["cls"] for s in samples.values()} == {b"-1"}
    assert all(set(json.loads(s["json"])) == {"path"} | ({"reencoded"} & set(json.loads(s["json"])))
               for s in samples.values())


def test_a_labelled_image_folder_converts_and_verifies(imagenet_tree, tmp_path):
    root, description = imagenet_tree("classic")
    result = convert_split(folder_split(root / "train"), tmp_path, SMALL, progress=False)
    manifest = result.manifest
    assert [c["class"] for c in manifest.classes] == sorted(c["wnid"] for c in description["classes"])
    samples = read_split(tmp_path, "train")
    for sample in samples.values():
        meta = json.loads(sample["json"])
        assert manifest.classes[int(sample["cls"])]["class"] == meta["class"] == meta["path"].split("/")[0]
    assert sum(manifest.totals["per_class"]) == len(samples) == manifest.totals["written"]
    (report,) = verify_output(tmp_path, progress=False)
    assert report.ok and report.decoded == len(samples)


def test_what_pillow_reads_but_dali_does_not_is_reencoded(tmp_path):
    """Extraneous bytes between JPEG segments: libjpeg (Pillow) warns and decodes, while DALI's
    parser refuses the file, which would stop training."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "odd.jpg").write_bytes(data[:app0_end] + b"\0\1\2" + data[app0_end:])
    (tmp_path / "src" / "fine.jpg").write_bytes(data)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = convert_split(folder_split(tmp_path / "src"), out, SMALL, workers=workers, progress=False)
        assert result.manifest.totals["reencoded"] == {"dali_decode": 1}
        samples = read_split(out, "train")
        assert json.loads(samples["odd"]["json"])["reencoded"] == "dali_decode"
        assert samples["fine"]["jpg"] == data
        (report,) = verify_output(out, progress=False)
        assert report.ok


def test_file_names_that_are_not_utf8(imagenet_tree, tmp_path):
    root, description = imagenet_tree("classic")
    source = next(f["path"] for f in description["files"] if f["expect"] == "keep")
    (tmp_path / "src").mkdir()
    os.symlink(root / source, os.path.join(bytes(tmp_path / "src"), b"caf\xe9.jpg"))
    result = convert_split(folder_split(tmp_path / "src"), tmp_path / "out", SMALL, progress=False)
    assert result.manifest.totals["written"] == 1
    (key,) = read_split(tmp_path / "out", "train")
    assert key == "cafudce9"


def test_shards_are_read_by_the_webdataset_library(imagenet_tree, tmp_path):
    import webdataset as wds

    root, _ = imagenet_tree("classic")
    convert(root, tmp_path, splits=["val"])
    manifest = Manifest.read(tmp_path / "val.manifest.json")
    urls = [str(tmp_path / s["name"]) for s in manifest.shards]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "cls")
    seen = {key: (image.mode, image.size, label) for key, image, label in dataset}
    expected = read_split(tmp_path, "val")
    assert {k: v[2] for k, v in seen.items()} == {k: int(s["cls"]) for k, s in expected.items()}
    assert all(mode == "RGB" for mode, _, _ in seen.values())


def test_shards_are_read_by_dali_with_the_index_files(imagenet_tree, tmp_path):
    from nvidia.dali import fn, pipeline_def, types

    root, _ = imagenet_tree("classic")
    convert(root, tmp_path, splits=["train"])
    manifest = Manifest.read(tmp_path / "train.manifest.json")

    @pipeline_def(batch_size=8, num_threads=2, device_id=None)
    def read():
        jpg, cls, meta = fn.readers.webdataset(
            paths=[str(tmp_path / s["name"]) for s in manifest.shards],
            index_paths=[str(tmp_path / s["index"]) for s in manifest.shards],
            ext=["jpg", "cls", "json"], name="reader", pad_last_batch=True)
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls, meta

    pipe = read()
    pipe.build()
    size = pipe.epoch_size("reader")
    assert size == manifest.totals["written"]
    seen = {}
    for _ in range(-(-size // 8)):
        images, labels, metas = pipe.run()
        for i in range(len(images)):
            assert images.at(i).ndim == 3 and images.at(i).shape[2] == 3
            seen[json.loads(metas.at(i).tobytes())["path"]] = int(labels.at(i).tobytes())
    expected = {json.loads(s["json"])["path"]: int(s["cls"]) for s in read_split(tmp_path, "train").values()}
    assert seen == expected
