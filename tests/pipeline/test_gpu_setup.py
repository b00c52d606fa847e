"""The checks a CUDA loader makes when it starts, on the CPU: NPP found where DALI finds it, the ROI
comparison on DALI's CPU decoders, the fall back to `once`, the thread cap and DALI's pinning."""

import subprocess
import types
import warnings

import pytest
import torch

from sslpipe.errors import SslpipeError
from sslpipe.pipeline import gpu_setup, loader
from sslpipe.pipeline.dali_stage import DecoderOptions, EpochPlan, build_pipeline
from sslpipe.pipeline.shardlist import resolve_shards
from sslpipe.pipeline.spec import load_spec


@pytest.fixture
def fresh(monkeypatch):
    """No ROI check remembered from another test; NPP loads (unless a test says otherwise)."""
    monkeypatch.setattr(gpu_setup, "_checked", {})
    monkeypatch.setattr(gpu_setup, "_load_library", lambda name: None)


# NPP

def test_missing_npp_names_the_library_the_folders_and_the_package(monkeypatch, tmp_path):
    tried = []

    def load(name):
        tried.append(name)
        if "nppicc" in name:
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(gpu_setup, "_load_library", load)
    monkeypatch.setattr(gpu_setup, "npp_folders", lambda: [tmp_path])
    with pytest.raises(SslpipeError, match=r"NPP's libnppicc\.so\.12 .*pip install nvidia-npp-cu12") as error:
        gpu_setup.check_npp()
    assert str(tmp_path) in str(error.value)
    assert tried[tried.index("libnppicc.so.12"):] == [  # DALI's names, then in each folder of its RUNPATH
        "libnppicc.so.12", "libnppicc.so", str(tmp_path / "libnppicc.so.12"), str(tmp_path / "libnppicc.so")]


def test_npp_of_the_wheel_is_found_in_its_folder(monkeypatch, tmp_path):
    wheel = tmp_path / "npp" / "lib"

    def load(name):
        if not name.startswith(str(wheel)):
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(gpu_setup, "_load_library", load)
    monkeypatch.setattr(gpu_setup, "npp_folders", lambda: [wheel])
    gpu_setup.check_npp()


def test_npp_folders_are_those_of_dalis_runpath(monkeypatch, tmp_path):
    dali = tmp_path / "nvidia" / "dali"
    for folder in (dali, tmp_path / "nvidia" / "npp" / "lib"):
        folder.mkdir(parents=True)
    spec = types.SimpleNamespace(origin=str(dali / "__init__.py"))
    monkeypatch.setattr(gpu_setup.importlib.util, "find_spec", lambda name: spec)
    assert gpu_setup.npp_folders()[0] == tmp_path / "nvidia" / "npp" / "lib"  # $ORIGIN/../npp/lib


def test_a_missing_npp_stops_a_cuda_loader_in_any_decode_mode(monkeypatch, coordinate_shards):
    monkeypatch.setattr(gpu_setup, "_load_library", lambda name: (_ for _ in ()).throw(OSError(name)))
    shard = resolve_shards(coordinate_shards)[0]
    for decode in ("once", "roi"):
        with pytest.raises(SslpipeError, match="nvidia-npp-cu12"):
            gpu_setup.check_gpu_pipeline(shard, decode, 0)


# ROI decoding

def test_roi_decoding_matches_a_full_decode_then_crop_on_dalis_cpu_decoders(photo_shards):
    shard = resolve_shards(photo_shards)[0]
    assert gpu_setup.roi_difference(str(shard.path), str(shard.index), "cpu", None) <= gpu_setup.ROI_TOLERANCE


def test_the_check_process_finds_nothing_wrong_on_the_cpu(photo_shards):
    assert gpu_setup.roi_failure(resolve_shards(photo_shards)[0], None, device="cpu") is None


@pytest.mark.parametrize("returncode, stdout, stderr, says", [
    (-11, "", "", "killed its check process (signal 11)"),
    (1, "", "Traceback ...\nRuntimeError: nvImageCodec INTERNAL_ERROR (8)", "failed (exit status 1): "
                                                                            "RuntimeError: nvImageCodec"),
    (0, "97\n", "", "differs from a full decode then crop by up to 97"),
])
def test_a_crash_an_error_or_other_pixels_fail_the_check(monkeypatch, coordinate_shards, returncode, stdout,
                                                          stderr, says):
    monkeypatch.setattr(gpu_setup.subprocess, "run",
                        lambda args, **kw: subprocess.CompletedProcess(args, returncode, stdout, stderr))
    assert says in gpu_setup.roi_failure(resolve_shards(coordinate_shards)[0], 0)


def test_roi_falls_back_to_once_with_one_warning(monkeypatch, fresh, coordinate_shards):
    checks = []
    monkeypatch.setattr(gpu_setup, "roi_failure", lambda *args: checks.append(args) or "of x.tar differs ...")
    shard = resolve_shards(coordinate_shards)[0]
    with pytest.warns(RuntimeWarning, match=r"decode='roi' \(data\.decode\) falls back to 'once'") as caught:
        assert gpu_setup.check_gpu_pipeline(shard, "roi", 0) == "once"
    assert len(caught) == 1 and gpu_setup.ROI_ISSUE in str(caught[0].message)
    with warnings.catch_warnings():  # checked once per GPU and decoder settings: no second warning
        warnings.simplefilter("error")
        assert gpu_setup.check_gpu_pipeline(shard, "roi", 0) == "once"
    assert len(checks) == 1


def test_roi_is_kept_where_it_checks_out_and_once_is_not_checked(monkeypatch, fresh, coordinate_shards):
    checks = []
    monkeypatch.setattr(gpu_setup, "roi_failure", lambda *args: checks.append(args) and None)
    shard = resolve_shards(coordinate_shards)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gpu_setup.check_gpu_pipeline(shard, "once", 0) == "once"
        assert checks == []
        assert gpu_setup.check_gpu_pipeline(shard, "roi", 0) == "roi"
    assert checks == [(shard, 0, DecoderOptions())]


def test_a_cuda_loader_takes_the_checked_decode_mode(monkeypatch, coordinate_shards):
    calls = []
    monkeypatch.setattr(loader, "_device", lambda device: torch.device(device, 0) if device == "cuda"
                        else torch.device(device))
    monkeypatch.setattr(loader, "PhotometricStage", lambda *args, **kw: None)  # CUDA tensors otherwise
    monkeypatch.setattr(gpu_setup, "check_gpu_pipeline", lambda *args: calls.append(args) or "once")
    made = loader.ViewLoader("simclr", coordinate_shards, batch_size=8, device="cuda", decode="roi")
    assert made.decode == "once" and calls == [(made.shards[0], "roi", 0, DecoderOptions())]
    assert loader.ViewLoader("simclr", coordinate_shards, batch_size=8, decode="roi").decode == "roi"
    assert len(calls) == 1  # no check for the CPU


# Threads and pinning

@pytest.mark.parametrize("cores, per_node, cuda, cpu", [(224, 1, 8, 224), (224, 8, 8, 28), (16, 8, 2, 2),
                                                        (2, 4, 1, 1)])
def test_default_threads_are_capped_per_gpu_only(monkeypatch, cores, per_node, cuda, cpu):
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    assert loader._default_threads(torch.device("cuda", 0)) == cuda
    assert loader._default_threads(torch.device("cpu")) == cpu


def test_decoder_options_are_arguments_of_dalis_decoders_and_do_not_pin(photo_shards):
    from nvidia.dali import fn, pipeline_def, types

    shard = resolve_shards(photo_shards)[0]
    options = DecoderOptions().dali_args()
    assert options["affine"] is False  # DALI's default, True, pins the mixed decoder's threads

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():  # the CPU decoders take (and ignore) the mixed ones' arguments: names are checked
        jpegs = fn.readers.webdataset(paths=[str(shard.path)], index_paths=[str(shard.index)], ext=["jpg"])
        return (fn.decoders.image(jpegs, output_type=types.RGB, **options),
                fn.decoders.image_random_crop(jpegs, output_type=types.RGB, **options),
                fn.decoders.image_slice(jpegs, rel_start=(0.1, 0.1), rel_end=(0.5, 0.5), **options))

    built = pipe()
    built.build()
    assert len(built.run()) == 3


def test_the_epoch_pipeline_does_not_pin_its_threads(coordinate_shards):
    shard = resolve_shards(coordinate_shards)[0]
    plan = EpochPlan(tars=(str(shard.path),), indexes=(str(shard.index),), rank=0, world_size=1,
                     shuffle=False, shuffle_buffer=1, seed=0)
    pipe, _ = build_pipeline(load_spec("eval"), plan, 2, "cpu", None, 1)
    assert pipe.set_affinity is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_roi_is_kept_or_dropped_with_its_warning(monkeypatch, photo_shards):
    monkeypatch.setattr(gpu_setup, "_checked", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mode = gpu_setup.check_gpu_pipeline(resolve_shards(photo_shards)[0], "roi",
                                            torch.cuda.current_device())
    assert (mode == "once") == any(gpu_setup.ROI_ISSUE in str(w.message) for w in caught)
