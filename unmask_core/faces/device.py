"""Faces of whole photos found on an accelerator: JPEGs decoded there (nvJPEG on CUDA, in batches), with
a CPU decode for any the device refuses, host pixels uploaded in one (pinned) copy, MTCNN on letterboxed
batches (`detect_batch`) and the similarity warp there too, with the CPU path's transform and filters.
The crops never leave the device. The bulk job's unmask actors use it (bulk/device_faces.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from unmask_core import data


class DeviceFaces:
    """Decoding, detection and alignment on one device.

    A JPEG the device decoder refuses is decoded on the CPU, with the host's limits, and uploaded: a
    node whose nvJPEG fails still finds every photo's faces. After DEVICE_DECODE_STRIKES such photos in
    a row, it stops asking the device decoder. `decoded` counts where photos were decoded."""

    DEVICE_DECODE_STRIKES = 8

    def __init__(self, detector: str, device, max_pixels: int) -> None:
        import torch

        from unmask_core.faces.detect import build_detector

        self.device = torch.device(device)
        self.detector = build_detector(detector, str(self.device))
        self.max_pixels = max_pixels  # the host decoder's limit, for the JPEGs it decodes instead
        self.decoded: Counter[str] = Counter()
        self.device_decode_strikes = 0

    def upload(self, images: list[np.ndarray]) -> list:
        """The images as uint8 [H, W, 3] tensors on the device, from one host-to-device copy."""
        import torch

        from unmask_core.accelerator import upload

        flat = upload(torch.from_numpy(np.concatenate([image.reshape(-1) for image in images])), self.device)
        views, start = [], 0
        for image in images:
            views.append(flat[start : start + image.size].view(image.shape))
            start += image.size
        return views

    def decode_on_device(self, encoded: list) -> list:
        """JPEG byte tensors -> uint8 [H, W, 3] tensors on the device, in one batched call."""
        from torchvision.io import ImageReadMode, decode_jpeg

        return [x.permute(1, 2, 0) for x in decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)]

    def decode_jpegs(self, blobs: list[bytes], sizes: list[list[int]]) -> list[tuple]:
        """(uint8 [H, W, 3] tensor on the device, "device" or "cpu") per JPEG, or (the exception that
        neither decoder got past, None)."""
        import torch

        on_device: list = [None] * len(blobs)
        if self.device_decode_strikes < self.DEVICE_DECODE_STRIKES:
            encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
            try:
                on_device = self.decode_on_device(encoded)
            except Exception:  # one file the decoder refuses fails the whole batch: then each on its own
                on_device = [or_exception(lambda x: self.decode_on_device([x])[0], x) for x in encoded]
        results: list = [None] * len(blobs)
        fallback, pixels = [], []
        for i, (photo, size) in enumerate(zip(on_device, sizes)):
            if isinstance(photo, torch.Tensor) and list(photo.shape[:2]) == size:
                results[i], self.device_decode_strikes = (photo, "device"), 0
                continue
            try:
                pixels.append(data.decode_image(blobs[i], self.max_pixels))
            except Exception as exc:  # a file no decoder reads: the input's own fault
                results[i] = (exc, None)
                continue
            fallback.append(i)
            self.device_decode_strikes += 1  # the device refused a photo the CPU could decode
        for i, photo in zip(fallback, self.upload(pixels) if pixels else []):
            results[i] = (photo, "cpu")
        return results

    def detect(self, photos: list) -> list:
        """Faces per photo, or the exception its detection raised (one odd photo loses only itself)."""
        from unmask_core.faces.detect import find_faces

        if not hasattr(self.detector, "detect_batch"):  # a detector without a batched device path
            return [or_exception(find_faces, self.detector, x.cpu().numpy()) for x in photos]
        try:
            return self.detector.detect_batch(photos)
        except Exception:
            return [or_exception(lambda x: self.detector.detect_batch([x])[0], x) for x in photos]

    def align(self, image, landmarks: np.ndarray, size: int):
        """The face at `landmarks` of `image` (uint8 [H, W, 3] on the device), aligned: (uint8
        [1, size, size, 3] on the device, the similarity matrix)."""
        from unmask_core.faces.align import align_faces_torch

        aligned, matrices = align_faces_torch(image.permute(2, 0, 1).float(), [landmarks], size=size)
        return aligned.round().to(image.dtype).permute(0, 2, 3, 1), matrices[0]


def or_exception(function, *args):
    try:
        return function(*args)
    except Exception as exc:
        return exc
