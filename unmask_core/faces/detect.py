"""Face detection with 5 landmarks: MTCNN (weights ship inside facenet-pytorch, so it works
offline and is the default) or an insightface SCRFD/RetinaFace ONNX from a user folder.

Both return `Face`s in the same convention: pixel coordinates of the input image, landmarks in
insightface / ArcFace order (left eye, right eye, nose, mouth left, mouth right; "left" is the
viewer's left), largest face first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from unmask_core.errors import UserError


@dataclass(frozen=True, eq=False)
class Face:
    box: np.ndarray  # [4] float: x1, y1, x2, y2
    landmarks: np.ndarray  # [5, 2] float, ArcFace order
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]: ...

    def detect_filling(self, image: np.ndarray) -> list[Face]: ...


#: A face that fills its frame (a tight or aligned crop) is found once the frame gets this much
#: border, as a fraction of its longer side on every side: detectors need some context around a face.
FRAME_PADDING = 0.25


def pad_frame(image: np.ndarray, fraction: float = FRAME_PADDING) -> tuple[np.ndarray, int]:
    """`image` with a black border of `fraction` of its longer side, and that border's width."""
    import cv2

    border = int(round(fraction * max(image.shape[:2])))
    return cv2.copyMakeBorder(
        image, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0)
    ), border


def _shifted(faces: list[Face], offset: float) -> list[Face]:
    return [Face(box=f.box - offset, landmarks=f.landmarks - offset, score=f.score) for f in faces]


def find_faces(detector: Detector, image: np.ndarray) -> list[Face]:
    """Faces of an image, largest first: a plain detection, and when it finds nothing, a second look for
    one face that fills the frame (see `Detector.detect_filling`)."""
    return detector.detect(image) or detector.detect_filling(image)


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: -face.area)


class MTCNNDetector:
    """facenet-pytorch's MTCNN with its bundled weights.

    `min_score` filters on the final (O-Net) probability: MTCNN's own cut-offs let through
    hands and table clutter at 0.85-0.87 on the sample group photo, real faces there score >= 0.97.
    """

    def __init__(self, device: str = "cpu", min_face_size: int = 20, min_score: float = 0.9) -> None:
        # Imported here so that align/mask users do not pay for torch.
        from facenet_pytorch import MTCNN

        self.min_score = min_score
        self.device = device
        self._mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        # MTCNN's first two stages (P-Net, R-Net) prune a masked face that fills its frame, although its
        # last stage (O-Net) scores it >= 0.93 (the demo's masked crops: 5 of 12 found as they are, 7
        # padded, 12 padded with these early cut-offs). Only the padded second look uses them, and the
        # final `min_score` still decides.
        self._mtcnn_filling = MTCNN(
            keep_all=True, device=device, min_face_size=min_face_size, thresholds=[0.1, 0.5, 0.5]
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        return self._detect_with(self._mtcnn, _check_image(image))

    def detect_filling(self, image: np.ndarray) -> list[Face]:
        """One face filling the frame: detect in the padded frame, with permissive early stages."""
        padded, border = pad_frame(_check_image(image))
        return _shifted(self._detect_with(self._mtcnn_filling, padded), border)

    def _detect_with(self, mtcnn, image: np.ndarray) -> list[Face]:
        boxes, scores, landmarks = mtcnn.detect(image, landmarks=True)
        return self._faces(boxes, scores, landmarks)

    def detect_batch(self, images: list) -> list[list[Face]]:
        """`find_faces` for a batch of images already on the detector's device (uint8 torch [H, W, 3]):
        letterboxed to a few fixed sizes (`LETTERBOX_SIDES`), each size one batched MTCNN pass; the
        images without a face get the padded second look, batched the same way."""
        found = _letterboxed(self._mtcnn, images, self._faces)
        retry = [i for i, faces in enumerate(found) if not faces]
        if retry:
            import torch.nn.functional as F

            padded, borders = [], []
            for i in retry:
                border = int(round(FRAME_PADDING * max(images[i].shape[:2])))
                padded.append(F.pad(images[i].permute(2, 0, 1), [border] * 4).permute(1, 2, 0))
                borders.append(border)
            for i, border, faces in zip(
                retry, borders, _letterboxed(self._mtcnn_filling, padded, self._faces)
            ):
                found[i] = _shifted(faces, border)
        return found

    def _faces(self, boxes, scores, landmarks) -> list[Face]:
        if boxes is None:
            return []
        # facenet-pytorch 2.5.3 under numpy 2 hands back object arrays; make them plain floats.
        boxes = np.asarray(np.asarray(boxes).tolist(), dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(np.asarray(scores).tolist(), dtype=np.float64).reshape(-1)
        landmarks = np.asarray(np.asarray(landmarks).tolist(), dtype=np.float64).reshape(-1, 5, 2)
        faces = [
            Face(box=box, landmarks=points, score=float(score))
            for box, points, score in zip(boxes, landmarks, scores)
            if score >= self.min_score
        ]
        return _largest_first(faces)


#: Square canvas sides a batch of images is letterboxed to (an image goes to the smallest that holds it;
#: larger ones are shrunk into the largest): a few sizes keep MTCNN's batches of equal-size images full.
LETTERBOX_SIDES = (320, 640, 1280, 1920)


def _letterboxed(mtcnn, images: list, to_faces) -> list[list[Face]]:
    """Detect in images (uint8 torch [H, W, 3], one device) grouped by letterbox side: each image is put
    at the top left of a black square canvas (shrunk by area first if it is larger than the largest), and
    its faces are mapped back to its own pixels."""
    import torch
    import torch.nn.functional as F

    found: list[list[Face]] = [[] for _ in images]
    groups: dict[int, list[int]] = {}
    for i, image in enumerate(images):
        longest = max(image.shape[:2])
        side = next((s for s in LETTERBOX_SIDES if s >= longest), LETTERBOX_SIDES[-1])
        groups.setdefault(side, []).append(i)
    for side, members in groups.items():
        canvas = torch.zeros(
            (len(members), side, side, 3), dtype=torch.float32, device=images[members[0]].device
        )
        scales = []
        for row, i in enumerate(members):
            image = images[i].float()
            scale = min(1.0, side / max(image.shape[:2]))
            if scale < 1.0:
                height, width = (max(1, int(d * scale)) for d in image.shape[:2])
                image = F.interpolate(image.permute(2, 0, 1)[None], size=(height, width), mode="area")
                image = image[0].permute(1, 2, 0)
            canvas[row, : image.shape[0], : image.shape[1]] = image
            scales.append(image.shape[1] / images[i].shape[1])
        boxes, scores, landmarks = mtcnn.detect(canvas, landmarks=True)
        for row, i in enumerate(members):
            faces = to_faces(boxes[row], scores[row], landmarks[row])
            found[i] = [
                Face(box=f.box / scales[row], landmarks=f.landmarks / scales[row], score=f.score)
                for f in faces
            ]
    return found


def find_detector_onnx(model_dir: str | Path) -> Path:
    """The face-detection ONNX in an insightface model folder (e.g. buffalo_l's det_10g.onnx).

    insightface tells a detector by its graph: SCRFD and RetinaFace have >= 5 outputs (scores,
    boxes and landmarks per stride), recognition and landmark models have one or two. We check
    the same thing from the graph alone, before any session is made.
    """
    import onnx

    folder = Path(model_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: insightface model folder does not exist")
    candidates = sorted(
        folder.glob("*.onnx"), key=lambda p: (not p.name.startswith(("det", "scrfd")), p.name)
    )
    for path in candidates:
        graph = onnx.load_model(str(path), load_external_data=False).graph
        if len(graph.output) >= 5:
            return path
    seen = ", ".join(p.name for p in candidates) or "no .onnx files"
    raise UserError(
        f"{folder}: no face detector model in this folder ({seen}); expected an insightface SCRFD or "
        "RetinaFace ONNX such as det_10g.onnx from buffalo_l"
    )


class InsightFaceDetector:
    """insightface's SCRFD / RetinaFace from a local model folder, through onnxruntime (CUDA when
    `device` is cuda, else CPU). Not exercised here beyond its errors: no detector weights ship
    with any package."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        min_score: float = 0.5,
        det_size: tuple[int, int] = (640, 640),
    ) -> None:
        from insightface.model_zoo import get_model

        self.model_path = find_detector_onnx(model_dir)
        self.det_size = det_size
        on_gpu = device.startswith("cuda")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
        self._model = get_model(str(self.model_path), providers=providers)
        self._model.prepare(ctx_id=0 if on_gpu else -1, input_size=det_size, det_thresh=min_score)

    def detect(self, image: np.ndarray) -> list[Face]:
        image = _check_image(image)
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface models take OpenCV's BGR
        detections, keypoints = self._model.detect(bgr, input_size=self.det_size)
        if keypoints is None:
            raise UserError(f"{self.model_path}: this detector gives no landmarks, which alignment needs")
        faces = [
            Face(
                box=np.asarray(det[:4], dtype=np.float64),
                landmarks=np.asarray(kps, np.float64),
                score=float(det[4]),
            )
            for det, kps in zip(detections, keypoints)
        ]
        return _largest_first(faces)

    def detect_filling(self, image: np.ndarray) -> list[Face]:
        padded, border = pad_frame(_check_image(image))
        return _shifted(self.detect(padded), border)


def build_detector(spec: str | None, device: str = "cpu") -> Detector:
    """None or 'mtcnn': MTCNN; a folder path: insightface's detector from that folder."""
    if spec is None or spec.lower() == "mtcnn":
        return MTCNNDetector(device=device)
    if Path(spec).is_dir():
        return InsightFaceDetector(spec, device=device)
    raise UserError(f"detector {spec!r}: expected 'mtcnn' or a folder holding an insightface detector ONNX")
