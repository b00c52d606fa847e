"""ILSVRC2012 (ImageNet-1k) layouts, detected from the root folder, and their labels.

Layouts:
- classic: `train/<wnid>/*.JPEG`, flat `val/`, and the extracted devkit
  `ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}`;
- kaggle: `ILSVRC/Data/CLS-LOC/{train,val}` with `LOC_val_solution.csv` and
  `LOC_synset_mapping.txt` at the root;
- either of them with `val/` already sorted into `<wnid>/` folders.

Class index = position of the wnid in sorted order, which is also the line order of
`LOC_synset_mapping.txt`. The class list comes from the label files where there are any
(`LOC_synset_mapping.txt`, or the leaf synsets of `meta.mat`), so that a stray or missing
folder in train/ cannot shift every index; otherwise from train/'s folders. The devkit's ground
truth holds ILSVRC2012_IDs, which are NOT in that order: they are mapped to wnids through the
leaf synsets of `meta.mat`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.shards.sources import (
    ClassInfo,
    Rejection,
    SourceFile,
    SplitSource,
    check_unique_keys,
    list_files,
    make_key,
    relpath,
)

KAGGLE_BASE = Path("ILSVRC/Data/CLS-LOC")
KAGGLE_VAL_LABELS = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12/data")
DEVKIT_META = DEVKIT_DATA / "meta.mat"
DEVKIT_VAL_LABELS = DEVKIT_DATA / "ILSVRC2012_validation_ground_truth.txt"


@dataclass(frozen=True)
class LabelFiles:
    """Explicit label files; each one left out is looked for at its standard place under the root."""

    val_labels: Path | None = None  # ILSVRC2012_validation_ground_truth.txt or LOC_val_solution.csv
    meta: Path | None = None        # the devkit's meta.mat (needed with the ground-truth .txt)
    synsets: Path | None = None     # LOC_synset_mapping.txt (class names)


def imagenet_splits(root: Path, splits: list[str], labels: LabelFiles = LabelFiles()) -> list[SplitSource]:
    """Find the requested splits ("train", "val") under an ImageNet root, with their labels."""
    root = Path(root)
    if not root.is_dir():
        raise SslpipeError(f"ImageNet root {root} does not exist or is not a folder")
    base, layout = _detect_layout(root)
    classes = _class_list(root, base, labels)
    result = []
    for split in splits:
        directory = base / split
        if not directory.is_dir():
            raise SslpipeError(f"{root}: no {split} folder in the {layout} layout (looked for {directory}); "
                               "--split chooses the splits to convert")
        if split == "train":
            source = _class_folder_split(root, directory, split, classes)
        else:
            source = _val_split(root, directory, split, classes, labels)
        source.description = {"dataset": "imagenet", "layout": layout, **source.description}
        if not source.found:
            raise SslpipeError(f"no images found in {directory}")
        check_unique_keys(split, source.files)
        result.append(source)
    return result


def _detect_layout(root: Path) -> tuple[Path, str]:
    if (root / KAGGLE_BASE).is_dir():
        return root / KAGGLE_BASE, "kaggle"
    if (root / "train").is_dir() or (root / "val").is_dir():
        return root, "classic"
    seen = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
    raise SslpipeError(
        f"{root} is not a known ImageNet layout: expected train/ and val/ (classic) or "
        f"{KAGGLE_BASE}/ (Kaggle) inside it; found: {seen}")


def _class_list(root: Path, base: Path, labels: LabelFiles) -> list[ClassInfo]:
    """The classes, sorted by wnid: from the label files, else from train/'s (or val/'s) folders."""
    names = _listed_classes(root, labels)
    if names:
        wnids = list(names)
    else:
        split = next((base / s for s in ("train", "val") if (base / s).is_dir()), None)
        wnids = [d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith(".")] \
            if split else []
        if split and not wnids:
            archives = next(split.glob("*.tar"), None)
            hint = (f"; it holds archives like {archives.name}: extract each into a folder of its name"
                    if archives else "")
            raise SslpipeError(f"{split} has no class folders (<wnid>/) and {root} no "
                               f"{KAGGLE_SYNSETS} or {DEVKIT_META} listing the classes{hint}")
    if not wnids:
        raise SslpipeError(f"{root}: cannot tell the classes: no class folders and no "
                           f"{KAGGLE_SYNSETS} or {DEVKIT_META} (pass --synsets or --meta)")
    return [ClassInfo(i, wnid, names.get(wnid)) for i, wnid in enumerate(sorted(wnids))]


def _listed_classes(root: Path, labels: LabelFiles) -> dict[str, str]:
    """wnid -> name of the classes in the synset mapping or meta.mat, when either is present."""
    synsets = labels.synsets or root / KAGGLE_SYNSETS
    if labels.synsets or synsets.is_file():
        return read_synset_mapping(synsets)
    meta = labels.meta or root / DEVKIT_META
    if labels.meta or meta.is_file():
        return {wnid: name for wnid, name in read_devkit_meta(meta).values()}
    return {}


def _class_folder_split(root: Path, directory: Path, split: str, classes: list[ClassInfo]) -> SplitSource:
    """A split stored as `<wnid>/<file>`: the folder gives the label."""
    by_id = {c.id: c for c in classes}
    files, rejected = [], []
    paths, hidden = list_files(directory)
    for path in paths:
        rel = relpath(path, root)
        folder = path.relative_to(directory).parts[0]
        if path.parent == directory:
            rejected.append(Rejection(rel, "no_class", f"file directly in {split}/, not in a class folder"))
        elif folder not in by_id:
            rejected.append(Rejection(rel, "unknown_class", _not_a_class(folder, classes)))
        else:
            files.append(SourceFile(path, rel, make_key(path.stem), by_id[folder].index, folder))
    return SplitSource(split, directory, {"labels": f"{split}/<wnid>/ folders"}, "wnid", classes,
                       files, rejected, hidden)


def _val_split(root: Path, directory: Path, split: str, classes: list[ClassInfo],
               labels: LabelFiles) -> SplitSource:
    subdirs = [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")]
    flat = [f for f in directory.iterdir() if f.is_file() and not f.name.startswith(".")]
    if subdirs and flat:
        raise SslpipeError(
            f"{directory} mixes files ({flat[0].name}, ...) and class folders ({subdirs[0].name}, ...): "
            "expected either a flat folder with a label file or one folder per wnid")
    if subdirs:
        return _class_folder_split(root, directory, split, classes)

    wnid_of, source = _val_labels(root, labels)
    by_id = {c.id: c for c in classes}
    files, rejected = [], []
    paths, hidden = list_files(directory)
    for path in paths:
        rel, key = relpath(path, root), make_key(path.stem)
        wnid = wnid_of.get(path.stem)
        if wnid is None:
            rejected.append(Rejection(rel, "no_label", f"{path.stem} is not in the val labels ({source})"))
        elif wnid not in by_id:
            rejected.append(Rejection(rel, "unknown_class", _not_a_class(wnid, classes)))
        else:
            files.append(SourceFile(path, rel, key, by_id[wnid].index, wnid))
    return SplitSource(split, directory, {"labels": source}, "wnid", classes, files, rejected, hidden)


def _not_a_class(wnid: str, classes: list[ClassInfo]) -> str:
    return f"{wnid} is not among the {len(classes)} classes"


def _val_labels(root: Path, labels: LabelFiles) -> tuple[dict[str, str], str]:
    """Val image stem -> wnid, and a description of where the labels came from."""
    val_labels = labels.val_labels
    if val_labels is None:
        candidates = [root / KAGGLE_VAL_LABELS, root / DEVKIT_VAL_LABELS]
        val_labels = next((p for p in candidates if p.is_file()), None)
        if val_labels is None:
            raise SslpipeError(
                f"val labels missing: val/ is flat but neither {candidates[0]} nor {candidates[1]} "
                "exists; pass --val-labels (and --meta for the devkit's ground truth)")
    if not val_labels.is_file():
        raise SslpipeError(f"val label file {val_labels} does not exist")
    if val_labels.suffix.lower() == ".csv":
        return read_kaggle_val_solution(val_labels), _describe(val_labels, root)
    meta = labels.meta or root / DEVKIT_META
    if not meta.is_file():
        raise SslpipeError(
            f"{val_labels} holds ILSVRC2012_IDs, which need the devkit's meta.mat to map to wnids; "
            f"{meta} does not exist: pass --meta")
    description = f"{_describe(val_labels, root)} + {_describe(meta, root)}"
    return read_devkit_ground_truth(val_labels, meta), description


def read_synset_mapping(path: Path) -> dict[str, str]:
    """`LOC_synset_mapping.txt`: lines `n01440764 tench, Tinca tinca` -> {wnid: name}."""
    names = {}
    for line in _read_text(path).splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name.strip()
    if not names:
        raise SslpipeError(f"{path}: no synsets found")
    return names


def read_devkit_meta(path: Path) -> dict[int, tuple[str, str]]:
    """The devkit's `meta.mat` -> {ILSVRC2012_ID: (wnid, words)} for the leaf synsets (the classes)."""
    from scipy.io import loadmat  # imported here: only the devkit route needs it
    from scipy.io.matlab import MatReadError

    try:
        synsets = loadmat(path, squeeze_me=True)["synsets"]
        leaves = synsets[synsets["num_children"] == 0]
        return {int(s["ILSVRC2012_ID"]): (str(s["WNID"]), str(s["words"])) for s in leaves}
    except (OSError, ValueError, KeyError, TypeError, IndexError, MatReadError) as e:
        raise SslpipeError(
            f"{path}: not a readable ILSVRC2012 devkit meta.mat ({type(e).__name__}: {e})") from e


def read_devkit_ground_truth(path: Path, meta: Path) -> dict[str, str]:
    """`ILSVRC2012_validation_ground_truth.txt`: line i is the ILSVRC2012_ID of
    ILSVRC2012_val_<i, 8 digits> -> {stem: wnid}."""
    ids = read_devkit_meta(meta)
    result = {}
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            wnid = ids[int(line)][0]
        except (ValueError, KeyError):
            raise SslpipeError(f"{path}, line {number}: {line.strip()!r} is not the "
                               f"ILSVRC2012_ID of a class in {meta}") from None
        result[f"ILSVRC2012_val_{number:08d}"] = wnid
    return result


def read_kaggle_val_solution(path: Path) -> dict[str, str]:
    """`LOC_val_solution.csv`: the first token of PredictionString is the wnid -> {stem: wnid}."""
    rows = csv.DictReader(_read_text(path).splitlines())
    if rows.fieldnames is None or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
        raise SslpipeError(f"{path}: expected the columns ImageId,PredictionString")
    result = {}
    for number, row in enumerate(rows, 2):
        tokens = (row["PredictionString"] or "").split()
        if not tokens:
            raise SslpipeError(f"{path}, line {number}: empty PredictionString for {row['ImageId']}")
        result[row["ImageId"]] = tokens[0]
    return result


def _describe(path: Path, root: Path) -> str:
    """A label file's path for the manifest: relative to the root where it lies inside it, so that
    the same conversion spelled with another path to the root compares equal."""
    path, root = path.resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise SslpipeError(f"cannot read {path}: {e.strerror or e}") from e
