import shutil

import pytest

from sslpipe.errors import SslpipeError
from sslpipe.shards.imagenet import LabelFiles, imagenet_splits, read_devkit_meta


def labels_by_key(source):
    return {f.key: (f.label, f.class_id) for f in source.files}


def expected_labels(description, split):
    """What the fixture says: wnid of each valid file, index = position in sorted wnids."""
    index = {c["wnid"]: i for i, c in enumerate(sorted(description["classes"], key=lambda c: c["wnid"]))}
    return {f["path"].rsplit("/", 1)[1].split(".")[0]: (index[f["wnid"]], f["wnid"])
            for f in description["files"] if f["split"] == split}


@pytest.mark.parametrize("layout", ["classic", "kaggle", "sorted"])
def test_every_layout_gives_the_fixtures_labels(imagenet_tree, layout):
    root, description = imagenet_tree(layout)
    train, val = imagenet_splits(root, ["train", "val"])
    assert train.description["layout"] == ("kaggle" if layout == "kaggle" else "classic")
    for source in (train, val):
        found = {f.relpath for f in source.files} | {r.relpath for r in source.rejected}
        assert found == {f["path"] for f in description["files"] if f["split"] == source.split}
        # Broken files are labelled here too: they are rejected only when read.
        assert labels_by_key(source) == expected_labels(description, source.split)


def test_the_label_routes_agree_exactly(imagenet_tree):
    routes = {layout: imagenet_splits(imagenet_tree(layout)[0], ["train", "val"]) for layout in
              ("classic", "kaggle", "sorted")}
    for split in (0, 1):
        first, *others = [labels_by_key(sources[split]) for sources in routes.values()]
        assert all(other == first for other in others)
        first, *others = [[(c.index, c.id) for c in sources[split].classes] for sources in routes.values()]
        assert all(other == first for other in others)


def test_devkit_ids_go_through_the_leaf_synsets_of_meta_mat(imagenet_tree):
    root, description = imagenet_tree("classic")
    ids = read_devkit_meta(root / "ILSVRC2012_devkit_t12/data/meta.mat")
    assert ids == {c["ilsvrc2012_id"]: (c["wnid"], c["name"]) for c in description["classes"]}
    # The fixture numbers IDs against sorted wnid order: alphabetical indices would be wrong.
    assert [wnid for _, (wnid, _) in sorted(ids.items())] != sorted(wnid for wnid, _ in ids.values())


def test_class_names_come_from_the_label_files(imagenet_tree):
    for layout in ("classic", "kaggle"):
        (train,) = imagenet_splits(imagenet_tree(layout)[0], ["train"])
        assert {c.id: c.name for c in train.classes} == {
            c["wnid"]: c["name"] for c in imagenet_tree(layout)[1]["classes"]}
    (train,) = imagenet_splits(imagenet_tree("sorted")[0], ["train"])
    assert all(c.name is None for c in train.classes)


def test_label_files_given_explicitly(imagenet_copy, imagenet_tree, tmp_path):
    root, _ = imagenet_copy("classic")
    reference = labels_by_key(imagenet_splits(imagenet_tree("classic")[0], ["val"])[0])
    devkit = tmp_path / "elsewhere"
    shutil.move(root / "ILSVRC2012_devkit_t12", devkit)
    data = devkit / "data"
    (val,) = imagenet_splits(root, ["val"], LabelFiles(data / "ILSVRC2012_validation_ground_truth.txt",
                                                       data / "meta.mat"))
    assert labels_by_key(val) == reference
    kaggle_root, _ = imagenet_tree("kaggle")
    (val,) = imagenet_splits(root, ["val"], LabelFiles(kaggle_root / "LOC_val_solution.csv"))
    assert labels_by_key(val) == reference


def test_val_alone_gets_the_class_list_of_train(imagenet_tree):
    root, _ = imagenet_tree("classic")
    train, val = imagenet_splits(root, ["train", "val"])
    (val_alone,) = imagenet_splits(root, ["val"])
    assert val_alone.classes == train.classes == val.classes


@pytest.mark.parametrize("layout", ["classic", "kaggle"])
def test_without_train_the_classes_come_from_the_label_files(imagenet_tree, imagenet_copy, layout):
    (reference,) = imagenet_splits(imagenet_tree(layout)[0], ["val"])
    root, _ = imagenet_copy(layout)
    shutil.rmtree(next(root.rglob("train")))
    (val,) = imagenet_splits(root, ["val"])
    assert val.classes == reference.classes and labels_by_key(val) == labels_by_key(reference)


def test_files_without_a_usable_label_are_rejected_with_the_reason(imagenet_copy):
    root, description = imagenet_copy("kaggle")
    base = root / "ILSVRC/Data/CLS-LOC"
    (base / "val" / "ILSVRC2012_val_99999999.JPEG").write_bytes(b"not listed in the solution")
    (base / "train" / "stray.JPEG").write_bytes(b"not in a class folder")
    (base / "train" / "n99999999").mkdir()
    (base / "train" / "n99999999" / "x.JPEG").write_bytes(b"a folder the synset mapping does not list")
    solution = root / "LOC_val_solution.csv"
    lines = solution.read_text().splitlines()
    relabelled = lines[1].split(",")[0]
    lines[1] = f"{relabelled},n99999999 1 2 3 4"
    solution.write_text("\n".join(lines) + "\n")

    train, val = imagenet_splits(root, ["train", "val"])
    rejected = train.rejected + val.rejected
    reasons = {r.relpath.removeprefix("ILSVRC/Data/CLS-LOC/"): r.reason for r in rejected}
    assert reasons == {"val/ILSVRC2012_val_99999999.JPEG": "no_label", "train/stray.JPEG": "no_class",
                       "train/n99999999/x.JPEG": "unknown_class", f"val/{relabelled}.JPEG": "unknown_class"}
    assert val.found == sum(f["split"] == "val" for f in description["files"]) + 1


@pytest.mark.parametrize("layout", ["classic", "kaggle"])
def test_a_stray_or_missing_train_folder_shifts_no_label(imagenet_tree, imagenet_copy, layout):
    """With label files, the class list comes from them, not from train/'s folders."""
    reference = labels_by_key(imagenet_splits(imagenet_tree(layout)[0], ["val"])[0])
    root, description = imagenet_copy(layout)
    train = next(root.rglob("train"))
    (train / "a_stray_folder").mkdir()
    shutil.rmtree(train / description["classes"][-1]["wnid"])
    (val,) = imagenet_splits(root, ["val"])
    assert labels_by_key(val) == reference and len(val.classes) == len(description["classes"])


def test_without_label_files_the_class_folders_are_the_classes(imagenet_copy):
    root, _ = imagenet_copy("sorted")
    (root / "train" / "a_stray_folder").mkdir()
    (train,) = imagenet_splits(root, ["train"])
    assert train.classes[0].id == "a_stray_folder" and len(train.classes) == 6


def test_hidden_files_are_counted_not_found(imagenet_copy):
    root, _ = imagenet_copy("classic")
    (root / "val" / ".DS_Store").write_bytes(b"finder")
    (val,) = imagenet_splits(root, ["val"])
    assert val.hidden_ignored == 1 and all(".DS_Store" not in f.relpath for f in val.files)


def test_errors_name_the_problem(imagenet_copy, tmp_path):
    with pytest.raises(SslpipeError, match="does not exist"):
        imagenet_splits(tmp_path / "nowhere", ["train"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photos").mkdir()
    with pytest.raises(SslpipeError, match="not a known ImageNet layout.*found: photos"):
        imagenet_splits(tmp_path / "other", ["train"])

    root, _ = imagenet_copy("classic")
    with pytest.raises(SslpipeError, match="no test folder"):
        imagenet_splits(root, ["test"])
    shutil.rmtree(root / "ILSVRC2012_devkit_t12")
    with pytest.raises(SslpipeError, match="val labels missing.*--val-labels"):
        imagenet_splits(root, ["val"])
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("1\n")
    with pytest.raises(SslpipeError, match="need the devkit's meta.mat.*--meta"):
        imagenet_splits(root, ["val"], LabelFiles(truth))
    (root / "val" / "n02123045").mkdir()
    with pytest.raises(SslpipeError, match="mixes files"):
        imagenet_splits(root, ["val"])

    empty = tmp_path / "empty"
    (empty / "train" / "n02123045").mkdir(parents=True)
    with pytest.raises(SslpipeError, match="no images found"):
        imagenet_splits(empty, ["train"])
    archived = tmp_path / "archived"
    (archived / "train").mkdir(parents=True)
    (archived / "train" / "n02123045.tar").write_bytes(b"")
    with pytest.raises(SslpipeError, match="no class folders.*n02123045.tar: extract each"):
        imagenet_splits(archived, ["train"])


def test_malformed_label_files_are_named(imagenet_copy, tmp_path):
    root, _ = imagenet_copy("classic")
    bad_meta = tmp_path / "meta.mat"
    bad_meta.write_bytes(b"not a mat file")
    truth = root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    with pytest.raises(SslpipeError, match="meta.mat: not a readable ILSVRC2012 devkit meta.mat"):
        imagenet_splits(root, ["val"], LabelFiles(truth, meta=bad_meta))
    truth = tmp_path / "truth.txt"
    truth.write_text("1\n9999\n")
    with pytest.raises(SslpipeError, match="truth.txt, line 2: '9999'"):
        imagenet_splits(root, ["val"], LabelFiles(truth))
    csv = tmp_path / "solution.csv"
    csv.write_text("Id,Prediction\n")
    with pytest.raises(SslpipeError, match="solution.csv: expected the columns"):
        imagenet_splits(root, ["val"], LabelFiles(csv))
