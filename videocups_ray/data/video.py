"""Unlabelled frame sources: video files (OpenCV / FFmpeg) and image folders.

Video frame counts come from the container and are checked while decoding: a video that
ends early, or holds more frames than it claims, raises :class:`DataError` naming the file
and frame, instead of silently truncating a corpus.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from videocups_ray.data.encodings import read_image
from videocups_ray.data.sources import IMAGE_EXTENSIONS, LIST_EXTENSIONS, VIDEO_EXTENSIONS, FrameSource, VideoListSource
from videocups_ray.data.types import DataError, Frame


class VideoFileSource(FrameSource):
    """One video file (mp4, avi, ...) as one video; the video ID is the file stem."""

    has_labels = False

    def __init__(self, path: str | os.PathLike, video_id: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: video file not found")
        self.video_id = video_id or self.path.stem
        cap = self._open()
        try:
            self._count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = float(cap.get(cv2.CAP_PROP_FPS))
            self._size = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        finally:
            cap.release()
        if self._count <= 0:
            raise DataError(f"{self.path}: container reports no frame count ({self._count}); "
                            "re-mux it (e.g. ffmpeg -c copy) or extract frames to a folder")

    def __repr__(self) -> str:
        return f"VideoFileSource({str(self.path)!r})"

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise DataError(f"{self.path}: cannot open video (not a video or unsupported codec)")
        return cap

    def videos(self) -> list[str]:
        return [self.video_id]

    def num_frames(self, video_id: str) -> int:
        self._check_video(video_id, [self.video_id])
        return self._count

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        self._check_video(video_id, [self.video_id])
        positions = self._range(self._count, start, stop, str(self.path))
        cap = self._open()
        try:
            # grab() walks to the start: seeking by CAP_PROP_POS_FRAMES is not frame-exact for
            # every codec, and a wrong frame_index would corrupt tracking silently.
            for i in range(positions.start):
                if not cap.grab():
                    raise DataError(f"{self.path}: video ends at frame {i} while seeking to frame "
                                    f"{positions.start}; the container claims {self._count} frames")
            for i in positions:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    raise DataError(f"{self.path}: cannot decode frame {i} of {self._count} "
                                    "(truncated or corrupt video)")
                yield Frame(video_id=self.video_id, frame_index=i,
                            image=np.ascontiguousarray(bgr[..., ::-1]), extra={"fps": self.fps})
            if positions.stop == self._count and cap.grab():
                raise DataError(f"{self.path}: decoded more frames than the {self._count} the "
                                "container claims; re-mux the file so its frame count is right")
        finally:
            cap.release()


# --------------------------------------------------------------------------- list files
# File signatures: what an entry *is*, whatever its name says.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def entry_kind(path: Path) -> str:
    """``"image"`` or ``"video"`` by the file's first bytes (PNG/JPEG/BMP/TIFF/WebP are images;
    MP4/MOV ``ftyp``, AVI, Matroska/WebM and MPEG streams are videos), falling back to the
    extension. DataError when neither tells."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if (head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
            or head.startswith(b"\x1a\x45\xdf\xa3") or head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"))):
        return "video"
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    raise DataError(f"{path}: neither an image nor a video (unknown file signature {head[:8]!r})")


def read_list(path: Path) -> list[Path]:
    """The paths of a list file (one a line, ``#`` comments, relative to the list's folder)."""
    files = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line) if Path(line).is_absolute() else path.parent / line
        if not p.is_file():
            raise DataError(f"{path}:{lineno}: listed file {p} not found")
        files.append(p)
    if not files:
        raise DataError(f"{path}: list file is empty")
    return files


class VideoFilesSource(FrameSource):
    """Several video files, one video each (IDs are the file stems; clashing stems are an error)."""

    has_labels = False

    def __init__(self, paths: list[Path], origin: str = ""):
        self.origin = origin
        self._sources: dict[str, VideoFileSource] = {}
        for p in paths:
            src = VideoFileSource(p)
            if src.video_id in self._sources:
                raise DataError(f"{p}: video ID {src.video_id!r} also used by {self._sources[src.video_id].path}")
            self._sources[src.video_id] = src

    def __repr__(self) -> str:
        return f"VideoFilesSource({self.origin!r})"

    def videos(self) -> list[str]:
        return sorted(self._sources)

    def num_frames(self, video_id: str) -> int:
        self._check_video(video_id, self._sources)
        return self._sources[video_id].num_frames(video_id)

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        self._check_video(video_id, self._sources)
        return self._sources[video_id].frames(video_id, start, stop)


def open_image_or_list(spec: str | os.PathLike) -> FrameSource:
    """An image folder, glob or image, or a list file whose entries are typed by content: all
    images (an :class:`ImageFolderSource`) or all videos (a :class:`VideoFilesSource`)."""
    path = Path(os.fspath(spec))
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        files = read_list(path)
        kinds = {f: entry_kind(f) for f in files}
        if set(kinds.values()) == {"video"}:
            return VideoFilesSource(files, str(path))
        if "video" in kinds.values():
            video = next(f for f, k in kinds.items() if k == "video")
            image = next(f for f, k in kinds.items() if k == "image")
            raise DataError(f"{path}: mixes videos ({video}) and images ({image}); list one kind per file")
        return ImageFolderSource(ImageFolderSource._group(files), str(path))
    return ImageFolderSource.from_spec(spec)


class ImageFolderSource(VideoListSource):
    """Image files grouped into videos by their folder, frames sorted by file name."""

    has_labels = False

    def __init__(self, videos: dict[str, list[Path]], origin: str = ""):
        if not videos:
            raise DataError(f"{origin}: no images found")
        self._videos = {vid: list(paths) for vid, paths in videos.items()}
        self.origin = origin
        for vid, paths in self._videos.items():
            if not paths:
                raise DataError(f"{origin}: video {vid!r} has no images")

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.origin!r})"

    @classmethod
    def from_spec(cls, spec: str | os.PathLike) -> "ImageFolderSource":
        """A folder of images, a glob pattern, or a text file with one image path a line."""
        spec = os.fspath(spec)
        path = Path(spec)
        if path.is_dir():
            files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not files:
                raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            return cls({path.name: sorted(files, key=lambda p: p.name)}, spec)
        if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            files = read_list(path)
            videos = [f for f in files if entry_kind(f) == "video"]
            if videos:
                raise DataError(f"{path}: lists video file {videos[0]}; open it with open_image_or_list "
                                "(a list holds either images or videos)")
            return cls(cls._group(files), spec)
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            return cls({path.stem: [path]}, spec)
        if globlib.has_magic(spec):
            files = [Path(p) for p in globlib.glob(spec, recursive=True)
                     if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS]
            if not files:
                raise DataError(f"{spec}: glob matches no image files")
            return cls(cls._group(files), spec)
        raise DataError(f"{spec}: not an image folder, image list or glob (or it does not exist)")

    @staticmethod
    def _group(files: list[Path]) -> dict[str, list[Path]]:
        """One video per parent folder; the ID is the folder name, or its path where names clash."""
        by_dir: dict[Path, list[Path]] = {}
        for f in files:
            by_dir.setdefault(f.parent, []).append(f)
        names = [d.name for d in by_dir]
        out = {}
        for d, fs in by_dir.items():
            vid = d.name if names.count(d.name) == 1 and d.name else str(d).strip("/").replace("/", "__")
            out[vid] = sorted(fs, key=lambda p: p.name)
        return out

    def frames(self, video_id: str, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        first_shape = None
        for i, path in self._items(video_id, start, stop, str(self.origin)):
            image = read_image(path)
            if first_shape is None:
                first_shape = image.shape
            elif image.shape != first_shape:
                raise DataError(f"{path}: image size {image.shape[1]}x{image.shape[0]} differs from "
                                f"the video's first frame ({first_shape[1]}x{first_shape[0]})")
            yield Frame(video_id=video_id, frame_index=i, image=image, extra={"path": str(path)})
