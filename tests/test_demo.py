from sslpipe.demo import run_demo


def test_the_demo_runs_end_to_end_and_reruns(tmp_path, capsys):
    assert run_demo(tmp_path, workers=2) == 0
    first = capsys.readouterr().out
    assert "train: found 207 = written 204 + rejected 3" in first
    assert "demo finished" in first
    assert "6 batches of 32 images (2 x 224 px each)" in first
    assert (tmp_path / "views-simclr.png").stat().st_size > 10_000
    assert "loss " in first and "over 9 steps" in first  # 3 epochs of 3 batches of 64
    assert (tmp_path / "runs" / "simclr_small" / "backbone.safetensors").is_file()
    assert run_demo(tmp_path, workers=1) == 0
    second = capsys.readouterr().out
    assert "reusing the ImageNet-like dataset" in second and "already complete" in second
