"""TensorBoard event files of scalar summaries, written and read without TensorFlow.

An event file is a sequence of TFRecords (TensorFlow's ``tfrecord`` framing)::

  uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little-endian), each ``data`` a serialized ``tensorflow.Event`` protocol buffer.  Only the
fields written here are encoded (and decoded): ``Event.wall_time`` (1, double),
``Event.step`` (2, int64), ``Event.file_version`` (3, string) and ``Event.summary`` (5),
a ``Summary`` of ``Value``s (1) with ``tag`` (1, string) and ``simple_value`` (2, float),
which TensorBoard shows as scalar curves.  The first record of a file carries
``file_version = "brain.Event:2"``.

References: TensorFlow's ``core/util/event.proto``, ``core/framework/summary.proto`` and
``core/lib/io/record_writer.cc`` (framing, masked CRC-32C); the protocol buffers wire format
(developers.google.com/protocol-buffers/docs/encoding).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import time

from deinforeg_jax import safe_files

FILE_VERSION = "brain.Event:2"
_MARK = "tfevents"  # TensorBoard loads the files whose name contains this


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: the CRC rotated right by 15 bits plus ``0xA282EAD8`` (mod 2^32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord holding ``data``."""
  length = struct.pack("<Q", len(data))
  return (
    length
    + struct.pack("<I", masked_crc32c(length))
    + data
    + struct.pack("<I", masked_crc32c(data))
  )


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1  # a negative int64 is encoded in ten bytes, as protobuf does
  while True:
    low, value = value & 0x7F, value >> 7
    out.append(low | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
  return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """A serialized ``Event``: ``scalars`` (tag -> value) as one ``Summary``, or the
  ``file_version`` header."""
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(
      _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5)
                        + struct.pack("<f", value))
      for tag, value in scalars.items()
    )
    out += _length_delimited(5, values)
  return out


@dataclasses.dataclass
class Event:
  """The decoded fields of one ``Event`` (``scalars``: tag -> simple_value)."""

  wall_time: float = 0.0
  step: int = 0
  file_version: str | None = None
  scalars: dict[str, float] = dataclasses.field(default_factory=dict)


def _fields(data: bytes):
  """``(number, value)`` for each field of a message: ints for varints, bytes otherwise."""
  position = 0
  while position < len(data):
    key, position = _read_varint(data, position)
    number, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, position = _read_varint(data, position)
    elif wire_type == 1:
      value, position = data[position:position + 8], position + 8
    elif wire_type == 2:
      size, position = _read_varint(data, position)
      value, position = data[position:position + size], position + size
    elif wire_type == 5:
      value, position = data[position:position + 4], position + 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire_type}")
    if position > len(data):
      raise ValueError("protobuf message cut short")
    yield number, value


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if position >= len(data):
      raise ValueError("protobuf varint cut short")
    byte = data[position]
    value |= (byte & 0x7F) << shift
    position, shift = position + 1, shift + 7
    if not byte & 0x80:
      return value, position


def decode_event(data: bytes) -> Event:
  """The fields of a serialized ``Event`` that ``encode_event`` writes (others are skipped)."""
  event = Event()
  for number, value in _fields(data):
    if number == 1:
      event.wall_time = struct.unpack("<d", value)[0]
    elif number == 2:
      event.step = value - (1 << 64) if value >= 1 << 63 else value
    elif number == 3:
      event.file_version = value.decode()
    elif number == 5:
      for summary_field, entry in _fields(value):
        if summary_field != 1:
          continue
        tag, simple_value = None, None
        for value_field, content in _fields(entry):
          if value_field == 1:
            tag = content.decode()
          elif value_field == 2:
            simple_value = struct.unpack("<f", content)[0]
        if tag is not None and simple_value is not None:
          event.scalars[tag] = simple_value
  return event


def read_records(path: str) -> tuple[list[bytes], bool]:
  """The records of a TFRecord file up to the first one cut short or damaged (by a kill
  in the middle of a write), and whether every byte of the file was read."""
  with open(path, "rb") as f:
    content = f.read()
  records, position = [], 0
  while position + 12 <= len(content):
    length_bytes = content[position:position + 8]
    (length,) = struct.unpack("<Q", length_bytes)
    (length_crc,) = struct.unpack("<I", content[position + 8:position + 12])
    end = position + 12 + length + 4
    if length_crc != masked_crc32c(length_bytes) or end > len(content):
      return records, False
    data = content[position + 12:end - 4]
    if struct.unpack("<I", content[end - 4:end])[0] != masked_crc32c(data):
      return records, False
    records.append(data)
    position = end
  return records, position == len(content)


def event_files(directory: str) -> list[str]:
  """The event files directly in ``directory``, oldest name first."""
  if not os.path.isdir(directory):
    return []
  names = sorted(n for n in os.listdir(directory) if _MARK in n and not n.startswith("."))
  return [os.path.join(directory, n) for n in names]


class EventFileWriter:
  """Appends scalar summaries to one new event file in ``directory``.

  The file is named as TensorFlow names them (``events.out.tfevents.<time>.<host>.<pid>``),
  starts with the ``file_version`` record and is flushed after every event, so a kill
  loses at most the event being written (``read_records`` stops before it).  Events are
  appended with ``O_NOFOLLOW``: a link put at the file's path is refused, never followed.
  """

  def __init__(self, directory: str, events: list[Event] = ()):
    """Write the header and ``events`` (e.g. the ones kept from an earlier file) with
    ``safe_files.atomic_writer``: the new file appears complete or not at all."""
    os.makedirs(directory, exist_ok=True)
    now = time.time()
    name = f"events.out.{_MARK}.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(directory, name)
    with safe_files.atomic_writer(self.path, binary=True) as f:
      f.write(frame(encode_event(now, 0, file_version=FILE_VERSION)))
      for event in events:
        f.write(frame(encode_event(event.wall_time, event.step, event.scalars)))

  def add(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
    """Append one event with ``scalars`` (tag -> value) at ``step``."""
    if not scalars:
      return
    event = encode_event(time.time() if wall_time is None else wall_time, step,
                         {tag: float(value) for tag, value in scalars.items()})
    with safe_files.open_for_append(self.path, binary=True) as f:
      f.write(frame(event))


def read_events(path: str) -> list[Event]:
  """The decodable events of one event file (see ``read_records``)."""
  return [decode_event(record) for record in read_records(path)[0]]

