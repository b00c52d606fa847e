"""`sslpipe preview`: a grid with one row per image and one column per view."""

import numpy as np
from PIL import Image

from sslpipe.cli import main


def test_preview_draws_rows_of_images_and_columns_of_views(photo_shards, tmp_path, capsys):
    out = tmp_path / "views.png"
    assert main(["preview", "swav_multicrop", photo_shards, "-o", str(out), "--images", "3"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    # Columns: 2 x 224 + 6 x 96 with 4-px gaps; rows: 18-px header + 3 x (224 + 4) + 4.
    assert grid.shape == (18 + 3 * 228 + 4, 2 * 224 + 6 * 96 + 9 * 4, 3)
    cell = grid[22:22 + 224, 4:4 + 224]
    assert cell.std() > 10  # a photo, not the white background
    below_local = grid[22 + 96 + 10:22 + 224, 2 * 228 + 4:2 * 228 + 4 + 96]
    assert (below_local == 255).all()  # a 96-px view leaves the rest of its row white


def test_preview_errors_name_the_problem(photo_shards, tmp_path, capsys):
    assert main(["preview", "simclr", photo_shards, "-o", str(tmp_path / "views.jpg")]) == 2
    assert "views.jpg: the preview is a PNG" in capsys.readouterr().err
    assert main(["preview", "simclr", str(tmp_path / "none-*.tar")]) == 2
    assert "no shards match" in capsys.readouterr().err
