"""The CUDA state (unmask_core/accelerator.py): every path a GPU takes, taken on a CPU when asked, with
the backend flags only through torch's new API."""

from __future__ import annotations

import pytest
import torch

from unmask_core.accelerator import (
    CUDA_STATE_ENV,
    configure_backends,
    cuda_state,
    pins_memory,
    tf32,
    upload,
)


def _flags() -> tuple:
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    )


@pytest.fixture
def restored_flags():
    saved = _flags()
    yield
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    torch.backends.cudnn.benchmark, matmul.fp32_precision, conv.fp32_precision = saved


def test_a_cpu_is_in_the_cuda_state_only_when_asked(monkeypatch) -> None:
    monkeypatch.delenv(CUDA_STATE_ENV, raising=False)
    assert cuda_state("cuda") and cuda_state("cuda:1") and not cuda_state("cpu")
    monkeypatch.setenv(CUDA_STATE_ENV, "1")
    assert cuda_state("cpu") and not cuda_state("meta")
    monkeypatch.setenv(CUDA_STATE_ENV, "0")
    assert not cuda_state("cpu")


def test_the_cuda_state_sets_the_backend_flags_a_gpu_sets(monkeypatch, restored_flags) -> None:
    monkeypatch.delenv(CUDA_STATE_ENV, raising=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    configure_backends("cpu")
    assert _flags()[:2] == (False, "ieee")
    configure_backends("cuda")  # only flags: no device needed
    assert _flags() == (True, "tf32", "tf32")
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    monkeypatch.setenv(CUDA_STATE_ENV, "1")
    configure_backends("cpu")
    assert _flags() == (True, "tf32", "tf32")


def test_tf32_switches_through_the_new_api_and_restores(monkeypatch, restored_flags) -> None:
    """After configure_backends, the legacy flags may no longer be touched (torch raises on the mix);
    the context manager switches TF32 without them and puts the settings back."""
    monkeypatch.setenv(CUDA_STATE_ENV, "1")
    configure_backends("cpu")
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 - the read is what raises
    with tf32(False):
        assert _flags()[1:] == ("ieee", "ieee")
    assert _flags()[1:] == ("tf32", "tf32")


def test_uploads_pin_memory_only_on_a_real_cuda_device(monkeypatch) -> None:
    monkeypatch.setenv(CUDA_STATE_ENV, "1")
    assert pins_memory("cuda") and not pins_memory("cpu")  # pinning needs a CUDA driver
    host = torch.arange(12, dtype=torch.uint8)
    assert torch.equal(upload(host, "cpu"), host)


def test_the_unmasker_in_the_cuda_state_serves_bf16_nhwc_and_true_fp32_when_asked(
    tiny_model_set: str, cuda_state
) -> None:
    from unmask_core.inference import Unmasker

    job = Unmasker(tiny_model_set, ["arcface", "facenet"], "cpu", bf16=True)
    reference = Unmasker(tiny_model_set, ["arcface", "facenet"], "cpu", bf16=False)
    conv = lambda u: next(p for p in u.model.parameters() if p.ndim == 4)  # noqa: E731
    assert job.bf16 and conv(job).dtype == torch.bfloat16
    assert conv(job).is_contiguous(memory_format=torch.channels_last)
    assert all(m.bf16 for m in job.matchers.values())
    assert not reference.bf16 and conv(reference).dtype == torch.float32
    assert not any(m.bf16 for m in reference.matchers.values())
    faces = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8).numpy()
    out_job, out_reference = job.run(faces, 2), reference.run(faces, 2)
    difference = abs(out_job.unmasked.astype(int) - out_reference.unmasked.astype(int))
    assert 0 < difference.mean() < 8  # bf16 rounding: close to fp32, not equal
