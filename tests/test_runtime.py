"""Threads and device of protect (issue 19 item 4): defaults bounded by the CPUs the process may use, one thread per
process with several processes, user settings win, idle threads never spin, and the device reaches the surrogates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import monai_medlocker.networks
from monai_medlocker import runtime
from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
from monai_medlocker.cli import build_parser, main
from monai_medlocker.cli.protect import MULTI_PROCESS_CONFIGS, protect_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4)])
def test_default_threads_follow_the_cpus_this_process_may_use(no_omp_env, monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(os, "cpu_count", lambda: 128)  # the machine's count must not be used
    assert runtime.resolve_threads()[0] == expected


def test_several_processes_get_one_thread_each(no_omp_env, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert runtime.resolve_threads(processes=3) == (1, "one per process (3 processes)")


def test_user_settings_win(no_omp_env, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.resolve_threads(processes=4) == (3, "OMP_NUM_THREADS")
    assert runtime.resolve_threads(threads=5, processes=4) == (5, "threads setting")
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        runtime.resolve_threads(threads=0)
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive integer"):
        runtime.resolve_threads()


def test_configure_threads_sets_torch(no_omp_env):
    assert runtime.configure_threads(threads=3)[0] == 3
    assert torch.get_num_threads() == 3
    assert torch.get_num_interop_threads() >= 1  # set once per process (or already set): never an error


def test_the_cli_sets_a_passive_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; import monai_medlocker.cli; assert 'torch' not in sys.modules, 'torch loaded early'; "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE", out.stderr


def test_select_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.select_device("auto") == torch.device("cpu")
    assert runtime.select_device(None) == torch.device("cpu")
    assert runtime.select_device("cpu") == torch.device("cpu")
    for bad in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available") as err:
            runtime.select_device(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not a device"):
        runtime.select_device("gpu-please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.select_device("auto") == torch.device("cuda")
    assert runtime.select_device("cuda", local_rank=3) == torch.device("cuda", 1)  # ranks share GPUs round-robin
    with pytest.raises(ValueError, match="only 2 GPU"):
        runtime.select_device("cuda:2")


def test_protect_device_cuda_without_cuda_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes((ROOT / "bundle" / "samples" / "fundus_q.png").read_bytes())
    code = main(["protect", str(src), str(tmp_path / "out"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "medlocker protect: error:" in err and "CUDA is not available" in err, err
    assert not (tmp_path / "out" / "public" / "a.png").exists()


def _recording_loader(monkeypatch) -> dict:
    seen: dict = {}
    real = monai_medlocker.networks.load_protect_surrogates

    def record(*args, device=None, **kwargs):
        seen["device"] = device
        return real(*args, **kwargs)  # the networks themselves stay on the CPU of this test machine

    monkeypatch.setattr(monai_medlocker.networks, "load_protect_surrogates", record)
    return seen


def test_device_and_threads_options_reach_the_surrogates(tmp_path, no_omp_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    seen = _recording_loader(monkeypatch)
    args = build_parser().parse_args(["protect", "in", str(tmp_path / "out"), "--device", "cuda", "--threads", "3"])
    parser = parse_bundle_config("inference.json", bundle_root(None), protect_overrides(args))
    parser.get_parsed_content("surrogate")
    assert seen["device"] == torch.device("cuda")
    assert torch.get_num_threads() == 3


def test_cpu_device_default_threads_and_workers_config(tmp_path, no_omp_env, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    seen = _recording_loader(monkeypatch)
    overrides = {"output_dir": str(tmp_path / "out")}
    surrogates = parse_bundle_config("inference.json", bundle_root(None), overrides).get_parsed_content("surrogate")
    assert seen["device"] == torch.device("cpu") and torch.get_num_threads() == 4
    assert all(s.device == torch.device("cpu") for s in surrogates)
    # The --workers / torchrun config: one thread per process, the device of the device setting.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    parser = parse_bundle_config(MULTI_PROCESS_CONFIGS, bundle_root(None), {**overrides, "device": "cpu"})
    parser.get_parsed_content("surrogate")
    assert seen["device"] == torch.device("cpu") and torch.get_num_threads() == 1
    assert parser.get_parsed_content("backend") == "gloo"


def test_oversubscribed_threads_warn(no_omp_env, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    runtime.ProtectRuntime(threads=1, device="cpu", processes=2)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rt = runtime.ProtectRuntime(device="cpu", processes=2)
    err = capsys.readouterr().err
    assert rt.threads == 2 and err.count("\n") == 1 and "warning: 2 thread(s) x 2 process(es) on 2 available CPU(s)" in err
