"""One MRD streaming session: the protocol state machine over one scan of the :class:`ScanService`.

::

    CONFIG --CONFIG_FILE / CONFIG_TEXT--> HEADER --HEADER--> DATA --CLOSE--> (complete, recon, images) DONE
                                                        TEXT (JSON overrides) | ACQUISITION | WAVEFORM

The scan is created (``ScanService.create_scan``) at the first ACQUISITION, so a JSON TEXT between the
HEADER and the data can still change the policy. Readouts are forwarded to ``ScanService.ingest`` in
batches of up to ``batch_readouts`` (or after ``flush_s`` without new bytes), so the loop keeps up with
the stream and, because the next read waits for the ingest, a fast client is slowed by TCP
back-pressure instead of filling memory. Once the ACS block is in, the plan goes back as a
``kadapt_plan`` TEXT (and a 1028 FEEDBACK when wanted) from a task that runs beside the reading loop.
At CLOSE the scan completes (``force``: the scanner says so), the images come back as IMAGE messages,
then a CLOSE.

Any fault ends the session with a ``kadapt_error`` TEXT naming it and a CLOSE (or a plain close when the
client cannot be written to); a scan left unfinished is deleted, a completed one stays for the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import traceback
from pathlib import Path

import numpy as np
import structlog
from numpy.typing import NDArray

from kadapt.errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidStateError,
    KadaptError,
    MrdTruncatedError,
)
from kadapt.gateway.domain.creation import check_header
from kadapt.gateway.domain.scans import ScanService
from kadapt.gateway.domain.session import INGEST_STATES
from kadapt.gateway.mrd_server import replies
from kadapt.gateway.mrd_server.config import SessionConfig, apply_text_overrides, parse_config
from kadapt.gateway.mrd_server.feedback import plan_feedback
from kadapt.gateway.mrd_server.options import SessionOptions
from kadapt.gateway.mrd_server.results import await_reconstruction, load_magnitude, write_dicom
from kadapt.mrd.constants import NON_IMAGING_FLAGS, AcquisitionFlag, flag_mask
from kadapt.mrd.header import parse_header
from kadapt.mrd.messages import (
    Acquisition,
    Close,
    ConfigFile,
    ConfigText,
    Feedback,
    Header,
    Image,
    Message,
    Text,
    Waveform,
)
from kadapt.mrd.stream import StreamDecoder, encode_message
from kadapt.schemas import ScanCreate, ScanState

log = structlog.get_logger("kadapt.gateway.mrd")
_NOT_IMAGE = flag_mask(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT, *NON_IMAGING_FLAGS)
_PLAN_STATES = frozenset({ScanState.planning, ScanState.acquiring})


class Phase(enum.Enum):
    CONFIG = "config"
    HEADER = "header"
    DATA = "data"
    DONE = "done"


class MrdSession:
    """Serves one TCP connection; :meth:`run` returns the outcome (``completed``, ``disconnected`` or the
    problem slug that ended it, e.g. ``deadline-exceeded`` for an idle client) and never raises but for
    cancellation."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: ScanService,
        options: SessionOptions,
        *,
        peer: str,
    ) -> None:
        self.reader, self.writer, self.service, self.options = reader, writer, service, options
        self.decoder = StreamDecoder(max_message_bytes=options.max_message_bytes)
        self.phase = Phase.CONFIG
        self.config: SessionConfig | None = None
        self.header_xml: str | None = None
        self.scan_id: str | None = None
        self.batch: list[Acquisition] = []
        self.slice_heads: dict[int, NDArray[np.void]] = {}
        self.measurement_uid = 0
        self.readouts = 0
        self.bytes_in = 0
        self.sent_rounds: set[int] = set()
        self.plan_task: asyncio.Task[None] | None = None
        self.write_lock = asyncio.Lock()
        self.ended = False  # an error CLOSE went out (or could not): nothing more is written
        self.started = time.monotonic()
        self.log = log.bind(peer=peer)

    @property
    def done(self) -> bool:
        """True once CLOSE went both ways."""
        return self.phase is Phase.DONE

    # --- the session -----------------------------------------------------------------------------------

    async def run(self) -> str:
        try:
            await self._serve()
            return "completed" if self.done else "disconnected"
        except KadaptError as error:
            self.log.info("mrd_session_failed", scan_id=self.scan_id, problem=error.slug, detail=error.detail)
            await self._abandon()
            await self.refuse(replies.error_text(error))
            return error.slug
        except (OSError, asyncio.IncompleteReadError):
            self.log.info("mrd_client_gone", scan_id=self.scan_id, readouts=self.readouts)
            return "disconnected"
        except Exception as error:  # the boundary of one connection: a bug must not take the server down
            self.log.error(
                "mrd_session_crashed",
                scan_id=self.scan_id,
                error=f"{type(error).__name__}: {error}",
                traceback=traceback.format_exc(),
            )
            await self._abandon()
            await self.refuse(replies.internal_error_text())
            return "internal-error"
        finally:
            await self._cleanup()

    async def _serve(self) -> None:
        while not self.done:
            chunk = await self._read()
            if not chunk:
                if self.bytes_in == 0:
                    return  # a port probe: nothing was said, nothing to answer
                await self._flush()  # a fault in the readouts received says more than the missing CLOSE
                self.decoder.finish()
                raise MrdTruncatedError(
                    f"the client ended the stream after {self.bytes_in} bytes without a CLOSE message (id 4)"
                )
            self.bytes_in += len(chunk)
            for message in self.decoder.feed(chunk):
                await self._handle(message)
                if self.done:
                    break

    async def _read(self) -> bytes:
        """The next chunk; a partial batch is ingested after ``flush_s`` of silence (a scanner that sent
        its ACS lines waits for the plan), and a session silent for ``idle_timeout_s`` ends."""
        while True:
            timeout = self.options.flush_s if self.batch else self.options.idle_timeout_s
            try:
                return await asyncio.wait_for(self.reader.read(self.options.read_chunk_bytes), timeout)
            except TimeoutError:
                if not self.batch:
                    raise DeadlineExceededError(
                        f"no data for {self.options.idle_timeout_s:g} s in phase {self.phase.value}"
                    ) from None
            await self._flush()

    async def _handle(self, message: Message) -> None:
        """One message in the current phase (the state machine of the module docstring)."""
        if isinstance(message, Close):
            await self._finish()
        elif self.phase is Phase.CONFIG:
            if not isinstance(message, ConfigFile | ConfigText):
                raise InvalidStateError(
                    f"{type(message).__name__} before the config: an MRD session starts with CONFIG_FILE (1) "
                    "or CONFIG_TEXT (2)",
                    state=self.phase.value,
                )
            self.config = parse_config(message.name if isinstance(message, ConfigFile) else message.text)
            self.phase = Phase.HEADER
        elif self.phase is Phase.HEADER:
            if isinstance(message, Text):
                self._override(message.text)
            elif isinstance(message, Header):
                check_header(parse_header(message.xml))  # fail before the data, not at its first readout
                self.header_xml = message.xml
                self.phase = Phase.DATA
            else:
                raise InvalidStateError(
                    f"{type(message).__name__} before the HEADER (3)", state=self.phase.value
                )
        elif isinstance(message, Acquisition):
            await self._acquisition(message)
        elif isinstance(message, Text):
            self._override(message.text)
        elif isinstance(message, Waveform | Feedback):
            pass  # physiology and feedback from the client do not change the plan
        elif isinstance(message, Image):
            raise InvalidInputError("IMAGE input is not supported: kadapt reconstructs raw ACQUISITION data")
        else:
            raise InvalidStateError(
                f"a second {type(message).__name__} after the HEADER (3)", state=self.phase.value
            )

    def _override(self, text: str) -> None:
        if self.config is None:
            return
        updated = apply_text_overrides(self.config, text)
        if updated is not self.config and self.scan_id is not None:
            raise InvalidStateError(
                f"TEXT overrides after the first ACQUISITION cannot change scan {self.scan_id}",
                state="data",
            )
        self.config = updated

    # --- data ------------------------------------------------------------------------------------------

    async def _acquisition(self, acquisition: Acquisition) -> None:
        if self.scan_id is None:
            await self._create_scan()
        self.readouts += 1
        if not acquisition.flags & _NOT_IMAGE and acquisition.slice not in self.slice_heads:
            self.slice_heads[acquisition.slice] = acquisition.head.copy()
            self.measurement_uid = int(acquisition.head["measurement_uid"])
        self.batch.append(acquisition)
        if len(self.batch) >= self.options.batch_readouts:
            await self._flush()

    async def _create_scan(self) -> None:
        if self.config is None or self.header_xml is None:
            raise InvalidStateError("ACQUISITION before the config and HEADER", state=self.phase.value)
        if self.config.dicom and self.options.dicom_dir is None:
            raise InvalidInputError(
                "config dicom=on: this gateway writes no DICOM from MRD sessions (set "
                "KADAPT_GATEWAY_MRD_DICOM_DIR); GET /v1/scans/{id}/images?format=dicom serves it instead"
            )
        body = ScanCreate(header_xml=self.header_xml, policy=self.config.policy)
        scan = await self.service.create_scan(body)
        self.scan_id = scan.scan_id
        self.log = self.log.bind(scan_id=scan.scan_id)
        self.log.info("mrd_scan_created", config=self.config.source, mode=self.config.mode)
        await self._send(
            [Text(replies.session_text(scan, mode=self.config.mode, feedback=self.config.send_feedback))]
        )

    async def _flush(self) -> None:
        """Ingest the batch (all or nothing, as one REST request would be)."""
        if not self.batch or self.scan_id is None:
            return
        payload = b"".join(encode_message(acquisition) for acquisition in self.batch)
        self.batch.clear()
        report = await self.service.ingest(self.scan_id, payload)
        if report.plan_ready or report.state in _PLAN_STATES:
            self._start_plan_sender()

    # --- plans -----------------------------------------------------------------------------------------

    def _start_plan_sender(self) -> None:
        if self.plan_task is None or self.plan_task.done():
            self.plan_task = asyncio.create_task(self._send_plan(), name=f"mrd-plan-{self.scan_id}")

    async def _send_plan(self) -> None:
        """Send the current plan round once (TEXT, and FEEDBACK when the config wants it)."""
        if self.scan_id is None or self.config is None:
            return
        try:
            plan = await self.service.get_plan(self.scan_id)
            if plan.round in self.sent_rounds:
                return
            self.sent_rounds.add(plan.round)
            session = await self.service.store.get(self.scan_id)
            messages: list[Message] = [Text(replies.plan_text(plan, session))]
            if self.config.send_feedback:
                width, offset = session.geometry.width, session.encoding.ky_offset
                messages.append(plan_feedback(plan, width=width, ky_offset=offset))
            await self._send(messages)
            self.log.info("mrd_plan_sent", round=plan.round, degraded=plan.degraded, lines=len(plan.lines))
        except KadaptError as error:
            self.log.warning("mrd_plan_not_sent", problem=error.slug, detail=error.detail)
        except (OSError, TimeoutError) as error:
            self.log.info("mrd_plan_not_sent", detail=f"{type(error).__name__}: {error}")

    # --- close: complete, reconstruct, images ----------------------------------------------------------

    async def _finish(self) -> None:
        if self.phase is not Phase.DATA:
            # Nothing was asked for (e.g. a connectivity check): close both ways.
            await self._send([Close()])
            self.phase = Phase.DONE
            return
        if self.scan_id is None or self.config is None:
            raise InvalidStateError(
                "CLOSE before any ACQUISITION: there is nothing to reconstruct", state=self.phase.value
            )
        await self._flush()
        if self.plan_task is not None:
            await self.plan_task
        scan = await self.service.complete(self.scan_id, force=True)
        session = await await_reconstruction(self.service, self.scan_id, self.options.recon_timeout_s)
        volume = await load_magnitude(self.service, session)
        dicom: list[Path] = []
        if self.config.dicom and self.options.dicom_dir is not None:
            deidentify = (
                self.options.dicom_deidentify if self.config.deidentify is None else self.config.deidentify
            )
            dicom = await asyncio.to_thread(
                write_dicom,
                volume,
                session,
                root=self.options.dicom_dir,
                deidentify=deidentify,
                slice_heads=self.slice_heads,
            )
        images = replies.image_messages(
            volume,
            session,
            series_index=self.config.series_index,
            slice_heads=self.slice_heads,
            measurement_uid=self.measurement_uid,
        )
        text = replies.images_text(
            session, images=len(images), acquired_lines=scan.acquired_lines, dicom=dicom
        )
        await self._send([Text(text)])
        for image in images:  # one at a time: a slow reader holds us here, not in memory
            await self._send([image])
        await self._send([Close()])
        self.phase = Phase.DONE
        self.log.info(
            "mrd_session_done",
            readouts=self.readouts,
            images=len(images),
            dicom_files=len(dicom),
            seconds=round(time.monotonic() - self.started, 3),
        )

    # --- writing and ending ----------------------------------------------------------------------------

    async def _send(self, messages: list[Message], timeout_s: float | None = None) -> None:
        timeout = self.options.write_timeout_s if timeout_s is None else timeout_s
        async with self.write_lock:
            if self.writer.is_closing() or self.ended:
                raise ConnectionError("the connection is closing; nothing more is sent")
            self.writer.write(b"".join(encode_message(message) for message in messages))
            try:
                await asyncio.wait_for(self.writer.drain(), timeout)
            except TimeoutError:
                raise DeadlineExceededError(f"the client read nothing for {timeout:g} s") from None

    async def refuse(self, text: str) -> None:
        """Send an error TEXT and a CLOSE (a plain close when the client cannot take them), then read and
        discard what the client still sends for a moment so that closing does not reset the connection
        before it has read them."""
        await self._stop_plan_sender()
        try:
            await self._send([Text(text), Close()], timeout_s=min(5.0, self.options.write_timeout_s))
        except (KadaptError, OSError):
            return
        finally:
            self.ended = True
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        deadline = time.monotonic() + self.options.linger_s
        discarded = 0
        while discarded < 4 * self.options.max_message_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                chunk = await asyncio.wait_for(self.reader.read(self.options.read_chunk_bytes), remaining)
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            discarded += len(chunk)

    async def _stop_plan_sender(self) -> None:
        if self.plan_task is not None and not self.plan_task.done():
            self.plan_task.cancel()
            await asyncio.gather(self.plan_task, return_exceptions=True)

    async def _abandon(self) -> None:
        """Delete the scan this session opened if it is still taking lines: the scanner's session is
        gone, nobody can complete it. Before the error CLOSE goes out, so a scanner that reads it knows
        the scan is already gone; again on the way out (a disconnect), where it then finds nothing."""
        await self._stop_plan_sender()
        if self.scan_id is not None and self.phase is not Phase.DONE:
            with contextlib.suppress(KadaptError):
                session = await self.service.store.get(self.scan_id)
                if session.state in INGEST_STATES:
                    await self.service.delete(self.scan_id)
                    self.log.info("mrd_scan_abandoned", state=session.state.value)

    async def _cleanup(self) -> None:
        await self._abandon()
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
