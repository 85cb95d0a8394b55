"""PNG encoding/decoding in numpy + zlib, for machines without Pillow, OpenCV or TensorFlow.

TFDS stores ``tfds.features.Image`` as PNG/JPEG bytes. It encodes numpy images with
TensorFlow and decodes them with OpenCV or Pillow; when none of those is installed this
module does the PNG part (8/16-bit, non-interlaced, every colour type, palettes and
sub-byte depths included). JPEG needs Pillow or OpenCV (see ``decode_image``).
"""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _chunk(kind: bytes, data: bytes) -> bytes:
  body = kind + data
  return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _paeth_predictor(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  p = a + b - c
  pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(rows: np.ndarray, bpp: int, filter_type: int) -> np.ndarray:
  """Applies PNG filter ``filter_type`` (0-4) to every scanline of ``rows`` [H, stride]."""
  x = rows.astype(np.int32)
  left = np.zeros_like(x)
  left[:, bpp:] = x[:, :-bpp]
  up = np.zeros_like(x)
  up[1:] = x[:-1]
  up_left = np.zeros_like(x)
  up_left[1:, bpp:] = x[:-1, :-bpp]
  predictor = {
    0: np.zeros_like(x),
    1: left,
    2: up,
    3: (left + up) // 2,
    4: _paeth_predictor(left, up, up_left),
  }[filter_type]
  return ((x - predictor) & 0xFF).astype(np.uint8)


def encode_png(image: np.ndarray, *, filter_type: int = 1, compression: int = 6) -> bytes:
  """uint8 ``[H, W]`` or ``[H, W, C]`` (C in 1..4) -> lossless PNG bytes.

  Every scanline uses PNG filter ``filter_type`` (0 None, 1 Sub, 2 Up, 3 Average,
  4 Paeth).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"encode_png needs uint8 pixels, got {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or not 1 <= image.shape[-1] <= 4:
    raise ValueError(f"encode_png needs [H, W] or [H, W, 1..4], got shape {image.shape}")
  if filter_type not in range(5):
    raise ValueError(f"filter_type must be 0..4, got {filter_type}")
  height, width, channels = image.shape
  colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
  rows = _filter_rows(image.reshape(height, width * channels), channels, filter_type)
  raw = np.concatenate([np.full((height, 1), filter_type, np.uint8), rows], axis=1)
  header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
  return (
    PNG_SIGNATURE
    + _chunk(b"IHDR", header)
    + _chunk(b"IDAT", zlib.compress(raw.tobytes(), compression))
    + _chunk(b"IEND", b"")
  )


def _chunks(data: bytes):
  if not data.startswith(PNG_SIGNATURE):
    raise ValueError("not a PNG file (bad signature)")
  pos = len(PNG_SIGNATURE)
  while pos + 8 <= len(data):
    (length,) = struct.unpack(">I", data[pos : pos + 4])
    kind = data[pos + 4 : pos + 8]
    yield kind, data[pos + 8 : pos + 8 + length]
    if kind == b"IEND":
      return
    pos += 12 + length
  raise ValueError("truncated PNG file (no IEND chunk)")


def png_header(data: bytes) -> tuple[int, int, int]:
  """``(height, width, channels)`` of a PNG from its IHDR chunk (palette images count 3)."""
  kind, header = next(_chunks(data))
  if kind != b"IHDR":
    raise ValueError("PNG does not start with an IHDR chunk")
  width, height, _, colour_type = struct.unpack(">IIBB", header[:10])
  channels = 3 if colour_type == 3 else _CHANNELS[colour_type]
  return height, width, channels


def _paeth_row(line: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
  out = bytearray(len(line))
  up = prior.tolist()
  for i, value in enumerate(line.tolist()):
    if i >= bpp:
      a, b, c = out[i - bpp], up[i], up[i - bpp]
      pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
      pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
    else:
      pred = up[i]  # a = c = 0
    out[i] = (value + pred) & 0xFF
  return np.frombuffer(bytes(out), np.uint8)


def _average_row(line: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
  out = bytearray(len(line))
  prior = prior.tolist()
  for i, value in enumerate(line.tolist()):
    a = out[i - bpp] if i >= bpp else 0
    out[i] = (value + ((a + prior[i]) >> 1)) & 0xFF
  return np.frombuffer(bytes(out), np.uint8)


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
  """Undoes the per-scanline PNG filters; ``raw`` is [height * (1 + stride)] bytes."""
  rows = raw.reshape(height, 1 + stride)
  filters, data = rows[:, 0], rows[:, 1:]
  out = np.empty((height, stride), np.uint8)
  prior = np.zeros(stride, np.uint8)
  for y in range(height):
    line, kind = data[y], filters[y]
    if kind == 0:
      row = line
    elif kind == 1:  # Sub: running sum per byte lane of the pixel
      pad = (-stride) % bpp
      lanes = np.concatenate([line, np.zeros(pad, np.uint8)]).reshape(-1, bpp)
      row = np.cumsum(lanes, axis=0, dtype=np.uint8).reshape(-1)[:stride]
    elif kind == 2:  # Up
      row = line + prior
    elif kind == 3:
      row = _average_row(line, prior, bpp)
    elif kind == 4:
      row = _paeth_row(line, prior, bpp)
    else:
      raise ValueError(f"corrupt PNG: unknown filter type {kind}")
    out[y] = row
    prior = out[y]
  return out


def decode_png(data: bytes) -> np.ndarray:
  """PNG bytes -> ``[H, W, C]`` uint8 (uint16 for 16-bit files) with C = 1, 2, 3 or 4.

  Palette images are expanded to RGB (RGBA when the palette has transparency).
  """
  header, palette, alpha, idat = None, None, None, []
  for kind, body in _chunks(bytes(data)):
    if kind == b"IHDR":
      header = struct.unpack(">IIBBBBB", body)
    elif kind == b"PLTE":
      palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
    elif kind == b"tRNS":
      alpha = np.frombuffer(body, np.uint8)
    elif kind == b"IDAT":
      idat.append(body)
  if header is None:
    raise ValueError("corrupt PNG: no IHDR chunk")
  width, height, depth, colour_type, _, _, interlace = header
  if interlace:
    raise ValueError("interlaced PNGs are not supported without Pillow/OpenCV")
  if colour_type not in _CHANNELS:
    raise ValueError(f"corrupt PNG: colour type {colour_type}")
  samples = _CHANNELS[colour_type]
  bits_per_pixel = samples * depth
  stride = (width * bits_per_pixel + 7) // 8
  raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
  if raw.size < height * (1 + stride):
    raise ValueError("corrupt PNG: image data shorter than its header says")
  rows = _unfilter(raw[: height * (1 + stride)], height, stride, max(1, bits_per_pixel // 8))
  if depth == 16:
    pixels = rows.view(">u2").astype(np.uint16).reshape(height, width, samples)
  elif depth == 8:
    pixels = rows.reshape(height, width, samples)
  else:  # 1, 2, 4-bit grey or palette indices
    bits = np.unpackbits(rows, axis=1).reshape(height, -1, depth)[:, :width]
    weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
    pixels = (bits * weights).sum(-1, dtype=np.uint8)[..., None]
    if colour_type == 0:  # rescale grey levels to 0..255
      pixels = (pixels.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
  if colour_type == 3:
    if palette is None:
      raise ValueError("corrupt PNG: palette image without a PLTE chunk")
    index = pixels[..., 0]
    if alpha is not None:
      table = np.concatenate([palette, np.full((len(palette), 1), 255, np.uint8)], axis=1)
      table[: len(alpha), 3] = alpha[: len(table)]
      return table[index]
    return palette[index]
  return pixels


def _has_module(name: str) -> bool:
  return importlib.util.find_spec(name) is not None


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image bytes (PNG, or JPEG/others with Pillow or OpenCV) -> ``[H, W, C]`` array."""
  data = bytes(data)
  if data.startswith(PNG_SIGNATURE):
    return decode_png(data)
  if _has_module("cv2"):
    import cv2  # pylint: disable=import-outside-toplevel

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
      raise ValueError("OpenCV could not decode the image")
    if image.ndim == 2:
      return image[..., None]
    return image[..., [2, 1, 0, 3][: image.shape[-1]]] if image.shape[-1] >= 3 else image
  if _has_module("PIL"):
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array
  kind = "JPEG" if data.startswith(JPEG_SIGNATURE) else "this image format"
  raise ImportError(
    f"decoding {kind} needs Pillow or OpenCV, and neither is installed "
    "(only PNG is decoded without them): pip install Pillow"
  )
