"""Reading and writing video frames: YUV4MPEG2 (.y4m) natively, anything else through `ffmpeg` pipes.

    with open_video("clip.mp4") as reader:            # or "0" / "/dev/video0": a webcam
        for frame in reader: ...                      # uint8 RGB [H, W, 3]
    with open_writer("out.y4m", width, height, fps) as writer:
        writer.write(frame)
    write_y4m(path, frames); frames = read_y4m(path)

Shapes:
    frame   uint8 [H, W, 3] RGB, the video's size: what readers yield and writers take
    Y4M     a header line, then per frame b"FRAME\n" and the planes Y [H, W], Cb and Cr
            [H/2, W/2] (4:2:0, rounded up) or [H, W] (4:4:4)

Other files and webcams go through the `ffmpeg` binary (rawvideo rgb24 in pipes). No
TensorFlow, no LiteRT: numpy only.
"""

import fractions
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from export.frames import InputError, existing_file

FFMPEG_HINT = ("Y4M files (.y4m) need no ffmpeg; for other files and webcams install it: apt-get install ffmpeg, "
               "brew install ffmpeg, or https://ffmpeg.org/download.html")
X264_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv")  # written as H.264 (or MPEG-4) 4:2:0

# ----------------------------------------------------------------------------- colour (BT.601)

_KR, _KB = 0.299, 0.114  # Y' = Kr R + (1 - Kr - Kb) G + Kb B
_YUV = np.array([[_KR, 1 - _KR - _KB, _KB],
                 [-0.5 * _KR / (1 - _KB), -0.5 * (1 - _KR - _KB) / (1 - _KB), 0.5],
                 [0.5, -0.5 * (1 - _KR - _KB) / (1 - _KR), -0.5 * _KB / (1 - _KR)]])
# Limited ("studio") range: Y in 16-235, Cb and Cr in 16-240; full range: 0-255 for all three.
# Each: (RGB -> YCbCr matrix, its inverse, offset), float32.
_RANGES = {
    full: (m.astype(np.float32), np.linalg.inv(m).astype(np.float32), np.asarray(offset, np.float32))
    for full, m, offset in ((False, _YUV * np.array([[219 / 255], [224 / 255], [224 / 255]]), (16, 128, 128)),
                            (True, _YUV, (0, 128, 128)))
}


def rgb_to_ycbcr(rgb, full_range=False):
    """uint8 RGB [H, W, 3] -> float32 Y, Cb, Cr [H, W, 3] (BT.601, limited range unless `full_range`)."""
    matrix, _, offset = _RANGES[bool(full_range)]
    return np.asarray(rgb, np.float32) @ matrix.T + offset


def ycbcr_to_rgb(ycbcr, full_range=False):
    """Y, Cb, Cr [H, W, 3] -> uint8 RGB [H, W, 3], the inverse of `rgb_to_ycbcr`, rounded and clipped."""
    _, inverse, offset = _RANGES[bool(full_range)]
    rgb = (np.asarray(ycbcr, np.float32) - offset) @ inverse.T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _upsample_rows(c):
    """[n, ...] -> [2n, ...] bilinear, samples sited between output rows (JPEG/MPEG-2 vertical siting)."""
    before = np.concatenate([c[:1], c[:-1]])
    after = np.concatenate([c[1:], c[-1:]])
    return np.stack([0.75 * c + 0.25 * before, 0.75 * c + 0.25 * after], axis=1).reshape(2 * len(c), *c.shape[1:])


# ----------------------------------------------------------------------------- YUV4MPEG2


class _Closing:
    """`with reader:` / `with writer:` calls close()."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _checked(frame, writer):
    """`frame` as an array; ValueError unless it is uint8 [H, W, 3] of the writer's size."""
    frame = np.asarray(frame)
    if frame.shape != (writer.height, writer.width, 3) or frame.dtype != np.uint8:
        raise ValueError(f"frame {writer.count}: shape {frame.shape} dtype {frame.dtype}; "
                         f"expected uint8 [{writer.height}, {writer.width}, 3] like the first frame")
    return frame


_Y4M_CHROMA = {"420jpeg": 2, "420paldv": 2, "420": 2, "420mpeg2": 2, "444": 1}  # C tag -> subsampling


def _y4m_header(line, path):
    """The stream header's width, height, fps (Fraction), chroma subsampling and range."""
    tokens = line.split()
    if not tokens or tokens[0] != b"YUV4MPEG2":
        raise InputError(f"{path}: not a YUV4MPEG2 file: it starts with {line[:24]!r}; expected b'YUV4MPEG2 W... H...'")
    tags = {}
    for token in tokens[1:]:
        tags.setdefault(chr(token[0]), []).append(token[1:].decode("ascii", "replace"))
    try:
        width, height = int(tags["W"][0]), int(tags["H"][0])
        num, den = (int(v) for v in tags.get("F", ["25:1"])[0].split(":"))
        fps = fractions.Fraction(num, den)
        if width < 1 or height < 1 or fps <= 0:
            raise ValueError
    except (KeyError, ValueError, ZeroDivisionError):
        raise InputError(f"{path}: YUV4MPEG2 header {line.strip()!r}: expected W, H and F (N:D) tags > 0") from None
    color = tags.get("C", ["420jpeg"])[0]
    if color not in _Y4M_CHROMA:
        raise InputError(f"{path}: Y4M colour space C{color} is not supported; expected one of "
                         f"{', '.join('C' + c for c in _Y4M_CHROMA)} (8-bit)")
    return width, height, fps, _Y4M_CHROMA[color], "COLORRANGE=FULL" in tags.get("X", [])


class Y4MReader(_Closing):
    """The frames of a YUV4MPEG2 file (see `open_video`); 4:2:0 chroma is upsampled bilinearly."""

    live = False

    def __init__(self, path):
        self.name = str(path)
        self._file = open(path, "rb")
        header = self._file.readline(4096)
        try:
            self.width, self.height, self.fps, self._sub, self._full_range = _y4m_header(header, path)
        except InputError:
            self._file.close()
            raise
        cw, ch = -(-self.width // self._sub), -(-self.height // self._sub)
        self._plane_sizes = (self.width * self.height, cw * ch, cw * ch)
        frame_bytes = len(b"FRAME\n") + sum(self._plane_sizes)
        self._size = os.fstat(self._file.fileno()).st_size
        payload = self._size - len(header)
        self.frames = payload // frame_bytes if payload % frame_bytes == 0 else None

    def __iter__(self):
        h, w, sub = self.height, self.width, self._sub
        index = 0
        while True:
            line = self._file.readline(4096)
            if not line:
                return
            if not line.startswith(b"FRAME"):
                raise InputError(f"{self.name}: frame {index}: expected a FRAME header, got {line[:24]!r}")
            need, left = sum(self._plane_sizes), self._size - self._file.tell()
            if left < need:  # checked before reading: a header's W and H may ask for terabytes
                raise InputError(f"{self.name}: frame {index} is truncated: {left} of {need} bytes")
            data = self._file.read(need)
            y_size, c_size, _ = self._plane_sizes
            y = np.frombuffer(data, np.uint8, y_size).reshape(h, w)
            shape = (-(-h // sub), -(-w // sub))
            cb = np.frombuffer(data, np.uint8, c_size, y_size).reshape(shape).astype(np.float32)
            cr = np.frombuffer(data, np.uint8, c_size, y_size + c_size).reshape(shape).astype(np.float32)
            if sub == 2:
                cb, cr = (_upsample_rows(_upsample_rows(c).T).T[:h, :w] for c in (cb, cr))
            yield ycbcr_to_rgb(np.stack([y, cb, cr], axis=-1), self._full_range)
            index += 1

    def close(self):
        self._file.close()


class Y4MWriter(_Closing):
    """Writes uint8 RGB frames [H, W, 3] (even H and W) as limited-range BT.601 4:2:0 `C420mpeg2`.

    That is the layout Chromium's fake camera (--use-file-for-fake-video-capture) reads.
    """

    def __init__(self, path, width, height, fps=10):
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise InputError(f"{path}: 4:2:0 video needs an even width and height; the frames are {width}x{height}")
        self.width, self.height, self.count = int(width), int(height), 0
        fps = fractions.Fraction(fps).limit_denominator(1001)
        self._file = open(path, "wb")
        self._file.write(f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 C420mpeg2 "
                         "XYSCSS=420MPEG2\n".encode("ascii"))

    def write(self, frame):
        yuv = rgb_to_ycbcr(_checked(frame, self))
        # The 2x2 mean, sited at its centre; MPEG-2 sites chroma a quarter chroma sample to the
        # left, which moves smooth video by less than a level.
        c = yuv[..., 1:]
        chroma = (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) * 0.25
        planes = [yuv[..., 0], chroma[..., 0], chroma[..., 1]]
        self._file.write(b"FRAME\n" + b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes))
        self.count += 1

    def close(self):
        self._file.close()


def write_y4m(path, frames, fps=10):
    """Writes uint8 RGB frames [H, W, 3] (all one size, even H and W) to `path` as Y4M, atomically.

    Limited-range BT.601 4:2:0 with the colour-space tag `C420mpeg2`, the layout Chromium's
    fake camera needs.

    Args:
        path: the output file.
        frames: an iterable of uint8 [H, W, 3] RGB frames.
        fps: frames per second (a number or a Fraction).

    Returns:
        The number of frames written.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "grey.y4m"
        >>> write_y4m(path, [np.full((4, 6, 3), 128, np.uint8)] * 2)
        2
        >>> [frame[0, 0].tolist() for frame in read_y4m(path)]
        [[128, 128, 128], [128, 128, 128]]
    """
    from kseg.utils import atomic_path

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    first = np.asarray(first)
    with atomic_path(path) as tmp, Y4MWriter(tmp, first.shape[1], first.shape[0], fps) as writer:
        writer.write(first)
        for frame in frames:
            writer.write(frame)
    return writer.count


def read_y4m(path):
    """Yields the frames of a Y4M file as uint8 RGB [H, W, 3] (C420*, C444; InputError otherwise)."""
    with Y4MReader(path) as reader:
        yield from reader


# ----------------------------------------------------------------------------- ffmpeg pipes


def ffmpeg_binary(tool="ffmpeg"):
    """The path of `tool` ("ffmpeg" or "ffprobe"); InputError with FFMPEG_HINT when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        raise InputError(f"`{tool}` is not installed (not on PATH). {FFMPEG_HINT}")
    return path


@functools.lru_cache(maxsize=None)
def _has_encoder(name):
    listing = subprocess.run([ffmpeg_binary(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in listing.splitlines())


def is_webcam(source):
    """True for "0", "1", ... (a camera index) and "/dev/videoN"."""
    return str(source).isdigit() or str(source).startswith("/dev/video")


def _ffmpeg_input(source):
    """ffmpeg's input arguments for a file or a webcam."""
    if not is_webcam(source):
        return ["-i", str(source)]
    if sys.platform.startswith("linux"):
        return ["-f", "v4l2", "-i", f"/dev/video{source}" if source.isdigit() else source]
    if sys.platform == "darwin" and source.isdigit():
        return ["-f", "avfoundation", "-framerate", "30", "-i", source]
    raise InputError(f"{source}: webcams are read with v4l2 (Linux, 0 or /dev/videoN) or avfoundation (macOS, 0, 1, ...); "
                     f"this is {sys.platform}: pass a video file")


def _tail(stream, path=None, name=None):
    """ffmpeg's last error lines, with the file it was given (`path`) called `name`."""
    stream.seek(0)
    lines = stream.read().decode("utf-8", "replace").strip().splitlines()[-2:]
    text = re.sub(r"\[\w+ @ 0x[0-9a-f]+\] ", "", "; ".join(lines) or "no message")  # "[NULL @ 0x55c7...] "
    return text.replace(path, name) if path and name else text


class FFmpegReader(_Closing):
    """The frames `ffmpeg` decodes from a file or a webcam (see `open_video`)."""

    def __init__(self, source):
        self.name, self.live = str(source), is_webcam(source)
        args = _ffmpeg_input(self.name)
        probe = subprocess.run(
            [ffmpeg_binary("ffprobe"), "-v", "error", "-select_streams", "v:0", "-of", "json", "-show_entries",
             "stream=width,height,avg_frame_rate,r_frame_rate,nb_frames:stream_tags=rotate:stream_side_data=rotation",
             *args], capture_output=True, text=True)
        streams = json.loads(probe.stdout or "{}").get("streams") if probe.returncode == 0 else None
        if not streams:
            why = (probe.stderr.strip().splitlines() or ["no video stream"])[-1]
            raise InputError(f"{source}: ffmpeg cannot read a video from it ({why}); expected a video file or a webcam")
        s = streams[0]
        rotation = s.get("tags", {}).get("rotate") or next((d["rotation"] for d in s.get("side_data_list", [])
                                                            if "rotation" in d), 0)
        self.width, self.height = (s["height"], s["width"]) if int(rotation) % 180 else (s["width"], s["height"])
        self.fps = next((fractions.Fraction(r) for r in (s.get("avg_frame_rate"), s.get("r_frame_rate"))
                         if r and r != "0/0"), fractions.Fraction(25))
        self.frames = int(s["nb_frames"]) if str(s.get("nb_frames")).isdigit() and not self.live else None
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", *args, "-map", "0:v:0", "-f", "rawvideo",
             "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)

    def __iter__(self):
        size, index = self.width * self.height * 3, 0
        while True:
            data = self._process.stdout.read(size)
            if len(data) < size:
                if self._process.wait() != 0:
                    raise InputError(f"{self.name}: ffmpeg stopped decoding at frame {index}: {_tail(self._stderr)}")
                return
            yield np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
            index += 1

    def close(self):
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdout.close()
        self._stderr.close()


class FFmpegWriter(_Closing):
    """Encodes uint8 RGB frames with `ffmpeg`: H.264 (libx264, else MPEG-4) in yuv420p for
    .mp4/.m4v/.mov/.mkv, ffmpeg's default codec for other extensions. On an error inside its
    `with` block ffmpeg is killed (the caller removes the file). Errors call the file `name`
    (default: `path`)."""

    def __init__(self, path, width, height, fps=10, name=None):
        self.path, self.width, self.height, self.count = str(path), int(width), int(height), 0
        self.name = name or self.path
        codec = []
        if Path(path).suffix.lower() in X264_CONTAINERS:
            x264 = _has_encoder("libx264")
            codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20"] if x264 else ["-c:v", "mpeg4", "-q:v", "3"]
            codec += ["-pix_fmt", "yuv420p"]
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
             "-s", f"{width}x{height}", "-r", str(fractions.Fraction(fps).limit_denominator(1001)), "-i", "-",
             *codec, self.path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
            start_new_session=True)  # Ctrl-C reaches Python alone, which ends or finishes ffmpeg

    def write(self, frame):
        frame = _checked(frame, self)
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self._process.wait()
            raise InputError(f"{self.name}: ffmpeg cannot write it: {_tail(self._stderr, self.path, self.name)}") from None
        self.count += 1

    def close(self):
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        if self._process.wait() != 0:
            raise InputError(f"{self.name}: ffmpeg cannot write it: {_tail(self._stderr, self.path, self.name)}")
        self._stderr.close()

    def __exit__(self, kind, value, tb):
        if kind is None:
            return self.close()
        self._process.kill()
        self._process.wait()
        self._stderr.close()


def open_video(source):
    """A reader for a .y4m file (native), another video file or a webcam (ffmpeg).

    Iterate it once for uint8 RGB frames [H, W, 3]. Attributes: width, height, fps (Fraction),
    frames (the count, or None when unknown), live (True for a webcam), name.

    Args:
        source: a video file, or a webcam: "0", "1", ... or "/dev/videoN".

    Returns:
        A Y4MReader or an FFmpegReader (close it, or use it in a `with` block).

    Raises:
        InputError: the file is missing or unreadable, or ffmpeg is not installed.
    """
    if is_webcam(source):
        return FFmpegReader(source)
    path = existing_file(source, "video file")
    return Y4MReader(path) if path.suffix.lower() == ".y4m" else FFmpegReader(path)


def open_writer(path, width, height, fps=10, name=None):
    """A writer for `path` by its extension: .y4m natively, anything else through ffmpeg.

    It writes `path` itself: wrap it in kseg.utils.atomic_path for an atomic output, and give
    the final file's `name` for ffmpeg's error messages.

    Args:
        path: the file to write; its extension picks the format.
        width, height: the frames' size (even for 4:2:0 output).
        fps: frames per second.
        name: what error messages call the file (default: `path`).

    Returns:
        A Y4MWriter or an FFmpegWriter: `write(frame)` each uint8 [H, W, 3] frame, then close it.
    """
    if Path(path).suffix.lower() == ".y4m":
        return Y4MWriter(path, width, height, fps)
    return FFmpegWriter(path, width, height, fps, name)
