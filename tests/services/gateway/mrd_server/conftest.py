"""MRD server test kit: the embedded stack with its MRD port, ismrmrd-tools phantom files, and a raw MRD
client written from the protocol spec (``struct`` by hand, peers.md / python-ismrmrd-server's
``connection.py`` banners), independent of kadapt's codec so the two check each other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from kadapt.launcher.embedded import EmbeddedStack, embedded_stack

GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"
MODELS = Path(__file__).resolve().parents[4] / "models"

# --- the protocol, by hand -------------------------------------------------------------------------------

U16, U32, U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
ACQUISITION, IMAGE, WAVEFORM, FEEDBACK = 1008, 1022, 1026, 1028
ACQ_HEAD_BYTES, IMAGE_HEAD_BYTES = 340, 198
PIXEL_DTYPES = {1: "<u2", 2: "<i2", 3: "<u4", 4: "<i4", 5: "<f4", 6: "<f8", 7: "<c8", 8: "<c16"}


class Wire:
    """Message bytes built from the spec: ``uint16 id`` then the id's fixed layout, little-endian."""

    @staticmethod
    def config_file(name: str) -> bytes:
        return U16.pack(CONFIG_FILE) + name.encode().ljust(1024, b"\0")

    @staticmethod
    def text_like(message_id: int, text: str, *, nul: bool = True) -> bytes:
        """CONFIG_TEXT / HEADER / TEXT; ``nul`` NUL-terminates and counts the NUL, as FIRE clients do."""
        raw = text.encode() + (b"\0" if nul else b"")
        return U16.pack(message_id) + U32.pack(len(raw)) + raw

    @staticmethod
    def config_text(text: str, *, nul: bool = True) -> bytes:
        return Wire.text_like(CONFIG_TEXT, text, nul=nul)

    @staticmethod
    def header(xml: str, *, nul: bool = True) -> bytes:
        return Wire.text_like(HEADER, xml, nul=nul)

    @staticmethod
    def text(text: str, *, nul: bool = True) -> bytes:
        return Wire.text_like(TEXT, text, nul=nul)

    @staticmethod
    def close() -> bytes:
        return U16.pack(CLOSE)

    @staticmethod
    def acquisitions(heads: NDArray[np.void], data: NDArray[np.complex64]) -> bytes:
        """ACQUISITION (1008) messages: 340-byte header, no trajectory, complex64 ``[channel][sample]``."""
        parts = []
        for head, samples in zip(heads, data, strict=True):
            raw_head = head.tobytes()
            if len(raw_head) != ACQ_HEAD_BYTES:
                raise ValueError(f"acquisition header is {len(raw_head)} bytes, not {ACQ_HEAD_BYTES}")
            parts.append(U16.pack(ACQUISITION) + raw_head + np.ascontiguousarray(samples, "<c8").tobytes())
        return b"".join(parts)


@dataclass
class Received:
    """One message from the server. TEXT: ``text`` (and ``json`` when it parses); FEEDBACK: ``name``,
    ``data``; IMAGE: ``image`` header fields, ``meta`` attribute XML, ``pixels`` ``(channels, z, y, x)``."""

    message_id: int
    text: str | None = None
    name: str | None = None
    data: bytes = b""
    image: dict[str, Any] = field(default_factory=dict)
    meta: str = ""
    pixels: NDArray[Any] | None = None

    @property
    def json(self) -> dict[str, Any]:
        if self.text is None:
            raise ValueError(f"message {self.message_id} is not a TEXT")
        document: dict[str, Any] = json.loads(self.text)
        return document


def _image_fields(head: bytes) -> dict[str, Any]:
    """ImageHeader fields at their C offsets (version u16 @0, data_type u16 @2, matrix_size u16[3] @16,
    field_of_view f32[3] @22, channels u16 @34, position/read/phase/slice dirs f32[3] @36/48/60/72,
    slice u16 @98, phase u16 @102, image_type u16 @124, image_index u16 @126, image_series_index
    u16 @128, attribute_string_len u32 @194)."""
    return {
        "data_type": U16.unpack_from(head, 2)[0],
        "matrix_size": struct.unpack_from("<3H", head, 16),
        "field_of_view": struct.unpack_from("<3f", head, 22),
        "channels": U16.unpack_from(head, 34)[0],
        "position": struct.unpack_from("<3f", head, 36),
        "read_dir": struct.unpack_from("<3f", head, 48),
        "phase_dir": struct.unpack_from("<3f", head, 60),
        "slice_dir": struct.unpack_from("<3f", head, 72),
        "slice": U16.unpack_from(head, 98)[0],
        "phase": U16.unpack_from(head, 102)[0],
        "image_type": U16.unpack_from(head, 124)[0],
        "image_index": U16.unpack_from(head, 126)[0],
        "image_series_index": U16.unpack_from(head, 128)[0],
        "attribute_string_len": U32.unpack_from(head, 194)[0],
    }


async def read_message(reader: asyncio.StreamReader) -> Received:
    """Read one server message (IncompleteReadError at EOF)."""
    (message_id,) = U16.unpack(await reader.readexactly(2))
    if message_id == CLOSE:
        return Received(CLOSE)
    if message_id in (TEXT, CONFIG_TEXT, HEADER):
        (length,) = U32.unpack(await reader.readexactly(4))
        return Received(message_id, text=(await reader.readexactly(length)).decode())
    if message_id == FEEDBACK:
        (name_length,) = U32.unpack(await reader.readexactly(4))
        name = (await reader.readexactly(name_length)).split(b"\0", 1)[0].decode()
        (data_length,) = U32.unpack(await reader.readexactly(4))
        return Received(FEEDBACK, name=name, data=await reader.readexactly(data_length))
    if message_id == IMAGE:
        head = await reader.readexactly(IMAGE_HEAD_BYTES)
        fields = _image_fields(head)
        (attribute_length,) = U64.unpack(await reader.readexactly(8))
        meta = (await reader.readexactly(attribute_length)).decode()
        x, y, z = fields["matrix_size"]
        dtype = np.dtype(PIXEL_DTYPES[fields["data_type"]])
        raw = await reader.readexactly(dtype.itemsize * fields["channels"] * x * y * z)
        pixels = np.frombuffer(raw, dtype).reshape(fields["channels"], z, y, x)
        return Received(IMAGE, image=fields, meta=meta, pixels=pixels)
    raise AssertionError(f"the server sent an unexpected message id {message_id}")


async def read_until_close(reader: asyncio.StreamReader, timeout_s: float = 60.0) -> list[Received]:
    """Every message up to and including the server's CLOSE."""
    received: list[Received] = []
    async with asyncio.timeout(timeout_s):
        while not received or received[-1].message_id != CLOSE:
            received.append(await read_message(reader))
    return received


def parse_all(buffer: bytes) -> tuple[list[Received], int]:
    """Parse complete server messages from ``buffer`` (a blocking client's view); returns the messages
    and the count of trailing bytes that did not form a message."""
    messages: list[Received] = []

    async def drain() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(buffer)
        reader.feed_eof()
        while True:
            try:
                messages.append(await read_message(reader))
            except asyncio.IncompleteReadError as error:
                return len(error.partial)

    rest = asyncio.run(drain())
    return messages, rest


@dataclass
class RawClient:
    """An asyncio TCP client speaking the protocol by hand."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.writer.write(payload)
        await self.writer.drain()

    async def receive(self, timeout_s: float = 60.0) -> Received:
        async with asyncio.timeout(timeout_s):
            return await read_message(self.reader)

    async def until_close(self, timeout_s: float = 60.0) -> list[Received]:
        return await read_until_close(self.reader, timeout_s)

    async def at_eof(self, timeout_s: float = 10.0) -> bool:
        async with asyncio.timeout(timeout_s):
            return await self.reader.read(1) == b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def blocking_exchange(port: int, payload: bytes, timeout_s: float = 30.0) -> bytes:
    """Send ``payload``, half-close, and return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may have refused and closed early; what it sent is still readable
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shepp_logan(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(*args)``: an ``ismrmrd_generate_cartesian_shepp_logan`` file (made once per argument set)."""
    if shutil.which(GENERATOR) is None:
        pytest.skip(f"{GENERATOR} is not installed (Debian package ismrmrd-tools)")
    made: dict[tuple[str, ...], Path] = {}

    def make(*args: str) -> Path:
        if args not in made:
            out = tmp_path_factory.mktemp("shepp_logan") / "raw.h5"
            subprocess.run([GENERATOR, *args, "-o", str(out)], check=True, capture_output=True, timeout=120)
            made[args] = out
        return made[args]

    return make


@pytest.fixture
async def mrd_stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    """The embedded stack (gateway + sampler + recon worker in this process) with the MRD server on a
    free loopback port."""
    async with embedded_stack(tmp_path / "stack", MODELS, mrd_port=0) as stack:
        yield stack


@pytest.fixture
async def mrd_gateway(make_gateway: Callable[..., Any]) -> AsyncIterator[Any]:
    """A gateway alone (fake sampler, no recon worker: ``Gateway.finish_recon`` plays it) with the MRD
    server on a free port: ``gateway.app.state.mrd_server.port``."""
    async with make_gateway(mrd_port=0) as gateway:
        yield gateway


@pytest.fixture
def wire() -> type[Wire]:
    return Wire


@pytest.fixture
def raw_client() -> Callable[[int], Any]:
    """``await raw_client(port)``: a connected :class:`RawClient`."""
    return RawClient.connect


@pytest.fixture
def parse_server_bytes() -> Callable[[bytes], tuple[list[Received], int]]:
    return parse_all


@pytest.fixture
def exchange() -> Callable[..., bytes]:
    return blocking_exchange


def lines_of(heads: NDArray[np.void], columns: Iterable[int], ky_offset: int = 0) -> NDArray[np.bool_]:
    """Which readouts ``(n,)`` of ``heads`` sit on ``columns``."""
    ky = heads["idx"]["kspace_encode_step_1"].astype(np.int64) + ky_offset
    return np.isin(ky, list(columns))


@pytest.fixture
def select_lines() -> Callable[..., NDArray[np.bool_]]:
    return lines_of
