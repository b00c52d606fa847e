import pytest

from sslpipe.errors import SslpipeError
from sslpipe.shards.folder import folder_split


def touch(root, *relpaths):
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_class_subfolders_are_labelled_in_sorted_order(tmp_path):
    touch(tmp_path, "dog/1.jpg", "cat/1.jpg", "cat/more/2.jpg", "zebra/a.b.png")
    source = folder_split(tmp_path)
    assert [(c.index, c.id) for c in source.classes] == [(0, "cat"), (1, "dog"), (2, "zebra")]
    assert {f.relpath: (f.key, f.label, f.class_id) for f in source.files} == {
        "cat/1.jpg": ("cat_1", 0, "cat"),
        "cat/more/2.jpg": ("cat_more_2", 0, "cat"),
        "dog/1.jpg": ("dog_1", 1, "dog"),
        "zebra/a.b.png": ("zebra_a_b", 2, "zebra"),
    }
    assert source.description == {"dataset": "folder", "layout": "imagefolder", "labels": "class subfolders"}


def test_a_flat_folder_is_unlabeled(tmp_path):
    touch(tmp_path, "b.jpg", "a.jpg", ".hidden.jpg")
    source = folder_split(tmp_path, split="unlabeled")
    assert source.classes == [] and source.split == "unlabeled"
    assert [(f.key, f.label, f.class_id) for f in source.files] == [("a", -1, None), ("b", -1, None)]
    assert source.hidden_ignored == 1


def test_unlabeled_flag_takes_a_whole_tree(tmp_path):
    touch(tmp_path, "top.jpg", "x/1.jpg")
    with pytest.raises(SslpipeError, match="mixes files .*--unlabeled"):
        folder_split(tmp_path)
    source = folder_split(tmp_path, unlabeled=True)
    assert source.classes == [] and sorted(f.key for f in source.files) == ["top", "x_1"]


def test_keys_that_collide_are_an_error_naming_both_files(tmp_path):
    touch(tmp_path, "a b.jpg", "a_b.png")
    with pytest.raises(SslpipeError, match="'a b.jpg' and 'a_b.png' both map to the sample key 'a_b'"):
        folder_split(tmp_path)


def test_missing_or_empty_source(tmp_path):
    with pytest.raises(SslpipeError, match="does not exist"):
        folder_split(tmp_path / "nowhere")
    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(SslpipeError, match="no images found"):
        folder_split(tmp_path / "empty")


def test_symlinked_class_folders_and_files_are_followed(tmp_path):
    touch(tmp_path / "store", "cats/1.jpg", "cats/2.jpg", "dog.jpg")
    (tmp_path / "src" / "dog").mkdir(parents=True)
    (tmp_path / "src" / "cat").symlink_to(tmp_path / "store" / "cats")
    (tmp_path / "src" / "dog" / "1.jpg").symlink_to(tmp_path / "store" / "dog.jpg")
    source = folder_split(tmp_path / "src")
    assert sorted((f.relpath, f.label) for f in source.files) == [
        ("cat/1.jpg", 0), ("cat/2.jpg", 0), ("dog/1.jpg", 1)]


def test_a_symlink_loop_is_an_error_not_an_endless_walk(tmp_path):
    touch(tmp_path, "a/1.jpg")
    (tmp_path / "a" / "again").symlink_to(tmp_path / "a")
    with pytest.raises(SslpipeError, match="is the folder .*a again .*symbolic link"):
        folder_split(tmp_path)


def test_names_in_any_script_get_distinct_keys(tmp_path):
    touch(tmp_path, "猫/1.jpg", "犬/1.jpg", "café/x y.jpg")
    keys = {f.relpath: f.key for f in folder_split(tmp_path).files}
    assert keys == {"猫/1.jpg": "u732b_1", "犬/1.jpg": "u72ac_1", "café/x y.jpg": "cafue9_x_y"}


def test_overlong_names_get_short_distinct_keys(tmp_path):
    touch(tmp_path, "a" * 120 + "1.jpg", "a" * 120 + "2.jpg")
    keys = [f.key for f in folder_split(tmp_path).files]
    assert len(set(keys)) == 2 and all(len(key) == 90 for key in keys)
