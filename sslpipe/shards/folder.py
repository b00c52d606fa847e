"""Any image folder: an ImageFolder tree (class = subfolder, sorted) or a flat unlabeled folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from sslpipe.errors import SslpipeError
from sslpipe.shards.sources import (
    ClassInfo,
    SourceFile,
    SplitSource,
    check_unique_keys,
    list_files,
    make_key,
    relpath,
)


def folder_split(root: Path, split: str = "train", unlabeled: bool = False) -> SplitSource:
    """Files under `root`: labelled by their top-level subfolder, or unlabeled (-1).

    A folder holding only subfolders is an ImageFolder tree (files anywhere below a class
    folder belong to it); a folder holding only files is unlabeled; `unlabeled=True` treats
    any tree as unlabeled. Keys are the relative path with symbols replaced, so that files
    with the same name in different classes stay distinct.
    """
    root = Path(root)
    if not root.is_dir():
        raise SslpipeError(f"source folder {root} does not exist or is not a folder")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    top_files = sorted(f.name for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    if subdirs and top_files and not unlabeled:
        raise SslpipeError(
            f"{root} mixes files ({top_files[0]}, ...) and subfolders ({subdirs[0]}/, ...): use one "
            "subfolder per class, only files for an unlabeled set, or --unlabeled to ignore folders")

    paths, hidden = list_files(root)
    if not paths:
        raise SslpipeError(f"no images found in {root}")
    labelled = bool(subdirs) and not unlabeled
    classes = [ClassInfo(i, name) for i, name in enumerate(subdirs)] if labelled else []
    index = {c.id: c.index for c in classes}
    files = []
    for path in paths:
        rel = relpath(path, root)
        class_id = rel.split("/")[0] if labelled else None
        files.append(SourceFile(path, rel, make_key(str(PurePosixPath(rel).with_suffix(""))),
                                index.get(class_id, -1), class_id))
    check_unique_keys(split, files)
    layout = "imagefolder" if labelled else "unlabeled"
    labels = "class subfolders" if labelled else "none"
    return SplitSource(split, root, {"dataset": "folder", "layout": layout, "labels": labels},
                       "class", classes, files, hidden_ignored=hidden)
