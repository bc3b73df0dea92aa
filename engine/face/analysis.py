"""Portrait analysis, once per avatar: find the face, frame it, measure its 3D landmarks.

The output frame is a square head-and-shoulders view of the photo resized to `size`
(a photo that is already such a view is used whole). Landmarks come from mediapipe
FaceMesh (478 points; its model ships inside the mediapipe wheel) and are returned in
frame pixels; `frame_to_photo` is the paste-back transform into the original photo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.errors import UserError
from engine.face.topology import NUM_LANDMARKS

log = logging.getLogger("avatar")

MIN_FACE_PX = 96  # below this the mouth is a handful of pixels: nothing convincing can be animated
FRAME_FACE_RATIO = 2.8  # frame side / face width when the photo must be cropped
FACE_CENTER_HEIGHT = 0.42  # where the face centre sits in a cropped frame (fraction of height)


class PortraitError(UserError):
    """A photo that cannot become an avatar; the message says why and what to do."""


@dataclass(frozen=True)
class Portrait:
    photo: np.ndarray  # (H, W, 3) uint8 RGB, the photo as given
    frame: np.ndarray  # (S, S, 3) uint8 RGB, the framed view that is animated
    landmarks: np.ndarray  # (478, 3) float32 frame pixels: x right, y down, z toward the camera
    frame_to_photo: np.ndarray  # (2, 3) affine taking frame pixels to photo pixels (paste-back)
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the face in the photo
    source: str  # file name or a description ("the photo"), for messages
    notes: tuple[str, ...] = ()  # things the user should know (several faces, ...)

    @property
    def size(self) -> int:
        return self.frame.shape[0]

    def scaled(self, factor: float) -> Portrait:
        """The same portrait with its photo resized by `factor` (the frame and landmarks are unchanged)."""
        h, w = self.photo.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        photo = cv2.resize(self.photo, size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / w, size[1] / h
        to_photo = self.frame_to_photo * np.array([[sx], [sy]])
        box = self.face_box
        face_box = (int(box[0] * sx), int(box[1] * sy), int(box[2] * sx), int(box[3] * sy))
        return dataclasses.replace(self, photo=photo, frame_to_photo=to_photo, face_box=face_box)

    def paste_back(self, frame: np.ndarray) -> np.ndarray:
        """Put one rendered (S, S, 3) frame back into the full photo (see PasteBack for many)."""
        return PasteBack(self)(frame)


class PasteBack:
    """Pastes rendered frames back into a portrait's full photo, feathering the seam.

    The warp and the feathered mask depend only on the portrait, so they are made once here
    rather than per frame.
    """

    def __init__(self, portrait: Portrait, feather: int = 8):
        self.photo = portrait.photo.astype(np.float32)
        self.to_photo = portrait.frame_to_photo
        self.shape = portrait.photo.shape[1::-1]  # (W, H) for cv2
        inner = np.zeros(portrait.frame.shape[:2], np.float32)
        inner[feather:-feather, feather:-feather] = 1.0
        inner = cv2.GaussianBlur(inner, (0, 0), feather / 2)
        self.mask = cv2.warpAffine(inner, self.to_photo, self.shape, flags=cv2.INTER_LINEAR)[..., None]
        self.background = self.photo * (1.0 - self.mask)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        warped = cv2.warpAffine(frame, self.to_photo, self.shape, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        return (warped * self.mask + self.background).round().astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Read a photo as RGB uint8, with an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise PortraitError(f"portrait {path} does not exist; pass --portrait with a JPEG or PNG photo")
    return decode_image(path.read_bytes(), str(path))


IMAGE_TYPES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"RIFF": "WebP"}  # magic bytes
# Larger photos are refused from their header, before decoding: a 212 KB PNG can expand to 8192 x 8192
# (~380 MB and 1.4 s of CPU while decoding and analysing). 16 MP is more than any phone portrait needs.
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 16_000_000


def decode_image(data: bytes, source: str = "<upload>") -> np.ndarray:
    """A JPEG, PNG or WebP file's bytes as RGB uint8; its type and size are checked before decoding."""
    kind = next((name for magic, name in IMAGE_TYPES.items() if data.startswith(magic)), None)
    if kind is None or (kind == "WebP" and data[8:12] != b"WEBP"):
        raise PortraitError(f"{source} is not a JPEG, PNG or WebP image; use a photo in one of those formats")
    from PIL import Image  # reads the header only: the size is known without decoding the pixels

    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception as err:  # PIL raises many types for broken headers; their text names our buffer object
        raise PortraitError(f"cannot read {source} as a {kind} image (its header is damaged: "
                            f"{type(err).__name__}); use an intact photo") from None
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise PortraitError(f"{source} is {width}x{height} px; use a photo of at most {MAX_IMAGE_PIXELS // 10**6} "
                            f"megapixels and {MAX_IMAGE_SIDE} px on each side")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PortraitError(f"cannot decode {source} as a {kind} image; use an intact JPEG or PNG photo")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's stderr (fd 2) for a moment.

    mediapipe's native code prints a harmless protobuf AttributeError on import and glog lines
    when a graph first runs; users should see only our messages. Only `_FaceMesh` calls this, under
    its lock and only while building a graph (once per process), so no two threads ever swap fd 2.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _FaceMesh:
    """The process's one FaceMesh graph, used by one thread at a time.

    A mediapipe graph is not thread-safe: concurrent `process` calls crashed the server (SIGSEGV),
    poisoned the graph ("Packet timestamp mismatch") for every later photo and handed one caller's
    landmarks to another. Analysis takes 5-50 ms a photo, so callers simply wait their turn.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._mesh = None

    def faces(self, image: np.ndarray):
        """mediapipe's result for one RGB image (its multi_face_landmarks)."""
        with self._lock:
            if self._mesh is None:
                self._mesh = self._build()
            try:
                return self._mesh.process(image).multi_face_landmarks
            except RuntimeError as err:  # a graph that failed once may not recover: the next call builds anew
                self._mesh.close()
                self._mesh = None
                raise PortraitError(f"face analysis failed ({str(err)[:200]}); try the photo again") from None

    @staticmethod
    def _build():
        with _quiet_stderr():
            import mediapipe as mp

            from engine.assets import DEFAULT_PORTRAIT

            mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4, refine_landmarks=True)
            mesh.process(load_image(DEFAULT_PORTRAIT))  # its first run (and first face) logs; later ones are silent
        return mesh


_FACE_MESH = _FaceMesh()


def detect_landmarks(image: np.ndarray) -> list[np.ndarray]:
    """All faces in an RGB image as (478, 3) arrays in image pixels, z toward the camera (thread-safe)."""
    h, w = image.shape[:2]
    faces = []
    for face in _FACE_MESH.faces(np.ascontiguousarray(image)) or []:
        pts = np.array([(p.x * w, p.y * h, -p.z * w) for p in face.landmark], np.float32)
        if len(pts) == NUM_LANDMARKS:
            faces.append(pts)
    return faces


def _framing(photo_shape: tuple[int, int], box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3) affines photo->frame and frame->photo for the square head-and-shoulders view."""
    h, w = photo_shape
    x0, y0, x1, y1 = box
    face_w = x1 - x0
    already_framed = 0.85 < w / h < 1.18 and 0.22 < face_w / min(w, h) < 0.6
    if already_framed:
        side, left, top = float(min(w, h)), (w - min(w, h)) / 2, (h - min(w, h)) / 2
    else:
        side = min(FRAME_FACE_RATIO * face_w, w, h)
        left = np.clip((x0 + x1) / 2 - side / 2, 0, w - side)
        top = np.clip((y0 + y1) / 2 - FACE_CENTER_HEIGHT * side, 0, h - side)
    s = size / side
    to_frame = np.array([[s, 0, -left * s], [0, s, -top * s]], np.float64)
    to_photo = np.array([[1 / s, 0, left], [0, 1 / s, top]], np.float64)
    return to_frame, to_photo


def analyze_portrait(photo: str | Path | np.ndarray, size: int = 512, source: str | None = None) -> Portrait:
    """Detect the face in a photo (path or RGB array) and frame it as an avatar of `size` pixels.
    `source` names the photo in messages (default: its path, or "the photo" for an array)."""
    if size < 128 or size % 16:
        raise PortraitError(f"--size {size} is not supported; use a multiple of 16 of at least 128 (e.g. 256 or 512)")
    source = source or ("the photo" if isinstance(photo, np.ndarray) else str(photo))
    image = photo if isinstance(photo, np.ndarray) else load_image(photo)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PortraitError(f"portrait {source} must be an RGB uint8 image, got {image.dtype} {image.shape}")

    faces = detect_landmarks(image)
    if not faces:
        raise PortraitError(
            f"no face found in {source}; use a frontal photo with the face at least {MIN_FACE_PX} px tall"
        )
    boxes = [np.concatenate([f[:, :2].min(0), f[:, :2].max(0)]) for f in faces]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    pick = int(np.argmax(areas))
    box = boxes[pick]
    notes = []
    if len(faces) > 1:
        notes.append(f"found {len(faces)} faces in {source}; animating the largest "
                     f"({box[2] - box[0]:.0f}x{box[3] - box[1]:.0f} px at x={box[0]:.0f}, y={box[1]:.0f})")
        log.warning(notes[-1])
    face_w, face_h = box[2] - box[0], box[3] - box[1]
    if min(face_w, face_h) < MIN_FACE_PX:
        raise PortraitError(
            f"the face in {source} is only {face_w:.0f}x{face_h:.0f} px; use a photo where the face is at least "
            f"{MIN_FACE_PX} px wide and tall (a closer or higher-resolution shot)"
        )

    to_frame, to_photo = _framing(image.shape[:2], box, size)
    interp = cv2.INTER_AREA if to_frame[0, 0] < 1 else cv2.INTER_CUBIC
    frame = cv2.warpAffine(image, to_frame, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    landmarks = faces[pick].copy()
    landmarks[:, :2] = landmarks[:, :2] @ to_frame[:, :2].T + to_frame[:, 2]
    landmarks[:, 2] *= to_frame[0, 0]
    return Portrait(
        photo=image,
        frame=frame,
        landmarks=landmarks.astype(np.float32),
        frame_to_photo=to_photo,
        face_box=tuple(int(v) for v in box.round()),
        source=source,
        notes=tuple(notes),
    )
