"""`sslpipe preview SPEC SHARDS --method NAME`: a pretext method's inputs drawn per image, with
their labels; methods without inputs of their own and unknown names are clear errors."""

import numpy as np
import torch
from PIL import Image

from sslpipe.cli import main
from sslpipe.methods import Jigsaw, RotNet, Step
from sslpipe.models import resnet18
from sslpipe.pipeline.batch import Batch


def test_rotnet_draws_the_four_rotations_of_each_crop(photo_shards, tmp_path, capsys):
    out = tmp_path / "rotnet.png"
    assert main(["preview", "small_rotnet", photo_shards, "-o", str(out), "--images", "2",
                 "--method", "rotnet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    # Title, then 2 rows of (caption + 64-px crops enlarged x2 + gap); 4 columns at least 128 wide.
    assert grid.shape[0] == 18 + 2 * (18 + 128 + 4) + 4 and grid.shape[1] >= 4 * 128 + 5 * 4
    first = grid[18 + 18:18 + 18 + 128, 4:4 + 128]
    assert first.std() > 10  # a photo, not the white background


def test_the_cells_are_the_methods_own_inputs():
    crops = torch.rand(2, 3, 12, 12)
    batch = Batch.from_views([crops], names=["crop"])
    rows = RotNet(resnet18(), RotNet.Config(), global_batch=2).preview(batch, Step())
    captions = [[caption.split(":")[0] for caption, _ in row] for row in rows]
    assert captions == [["label 0", "label 1", "label 2", "label 3"]] * 2
    assert torch.equal(rows[1][1][1], torch.rot90(crops[1], 1, dims=(-2, -1)))
    jigsaw = Jigsaw(resnet18(), Jigsaw.Config(permutations=10, tile_dim=8), global_batch=2)
    rows = jigsaw.preview(batch, Step(index=3))
    _, labels = jigsaw.tiles(crops, Step(index=3))
    assert [row[1][0] for row in rows] == [
        f"permutation {k}: {''.join(map(str, jigsaw.table[k].tolist()))}" for k in labels.tolist()]
    assert rows[0][1][1].shape == (3, 3 * (3 + 2), 3 * (3 + 2))  # 3-px tiles of 4-px cells, framed
    assert 0 <= rows[0][1][1].min() and rows[0][1][1].max() <= 1


def test_methods_without_inputs_of_their_own_and_unknown_names_are_errors(photo_shards, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert main(["preview", "small_simclr", photo_shards, "-o", out, "--method", "simclr"]) == 2
    err = capsys.readouterr().err
    assert "trains on the spec's views as they come; `sslpipe preview small_simclr SHARDS`" in err
    assert main(["preview", "small_simclr", photo_shards, "-o", out, "--method", "cmc"]) == 2  # not built
    assert "--method cmc: it trains on the spec's views as they come" in capsys.readouterr().err
    assert main(["preview", "small_simclr", photo_shards, "-o", out, "--method", "rotnett"]) == 2
    assert "--method 'rotnett': unknown; choose one of simclr" in capsys.readouterr().err
    assert main(["preview", "small_simclr", photo_shards, "-o", out, "--method", "rotnet"]) == 2
    assert "method rotnet needs exactly 1 view, not 2" in capsys.readouterr().err


def test_colorization_is_previewed_on_its_own_backbone(photo_shards, tmp_path):
    """The CLI builds each method on its `example_backbone` (colorization's sees only L)."""
    out = tmp_path / "colorization.png"
    assert main(["preview", "small_colorization", photo_shards, "-o", str(out), "--images", "2",
                 "--method", "colorization"]) == 0
    assert np.asarray(Image.open(out).convert("RGB")).std() > 10
