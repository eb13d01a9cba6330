"""New sessions from ``POST /v1/scans``: the header parsed once, the policy checked against it.

Everything a later request could trip over is refused here, before anything is stored: a header
kadapt cannot use (non-Cartesian, 3D, no receiver channel count), an acceleration or ACS block impossible
for the matrix, an unknown or non-line fallback family, a fallback bundle that is not a ``fixed-mask``
bundle or does not fit the scan's W / R (:mod:`~kadapt.gateway.domain.fallbacks`; the resolved pattern
is stored in the session), unknown output formats.

Headers with several repetitions are accepted: a (slice, frame, ky) line is acquired once, by the first
readout of it that arrives; the same line in a later repetition is a repeat and is skipped (ingest), so
files that spread the lines over repetitions (``ismrmrd_generate_cartesian_shepp_logan -a 4`` repeats
the ACS block in each of its 4 repetitions, each holding every 4th line) stream as one scan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidAccelerationError, InvalidHeaderError, InvalidInputError, KadaptError
from kadapt.gateway.domain.dynamic_plans import sampler_payload
from kadapt.gateway.domain.fallbacks import FallbackBundles, FallbackPattern, resolve_fallback
from kadapt.gateway.domain.images import IMAGE_FORMATS
from kadapt.gateway.domain.planning import PlanContext, fallback_plan
from kadapt.gateway.domain.session import Encoding, ScanSession, line_keys, new_scan_id, now_unix_ms
from kadapt.jobs import BlobStore
from kadapt.masks import acs_lines, get_family, line_budget
from kadapt.mrd.header import EncodingInfo, parse_header
from kadapt.schemas import ScanCreate, ScanGeometry, ScanPolicy

IntArray = NDArray[np.int64]


def check_header(info: EncodingInfo) -> None:
    """Raise :class:`InvalidHeaderError` for a header the gateway cannot serve (detail names the value)."""
    if info.trajectory.lower() != "cartesian":
        raise InvalidHeaderError(
            f"trajectory {info.trajectory!r} is not supported; the gateway plans Cartesian lines"
        )
    if info.encoded_matrix[2] != 1:
        raise InvalidHeaderError(
            f"encoded matrix z={info.encoded_matrix[2]}: 3D encodings are not supported (2D slices only)"
        )
    if info.receiver_channels is None or info.receiver_channels < 1:
        raise InvalidHeaderError(
            f"receiverChannels={info.receiver_channels}: the header must give the coil count "
            "(acquisitionSystemInformation/receiverChannels)"
        )
    if info.encoded_readout < info.height:
        raise InvalidHeaderError(
            f"encoded readout {info.encoded_readout} is shorter than the recon readout {info.height}"
        )


def check_policy(
    policy: ScanPolicy,
    geometry: ScanGeometry,
    encoding: Encoding,
    bundles: FallbackBundles | None = None,
) -> FallbackPattern | None:
    """Raise for a policy impossible on ``geometry``: :class:`InvalidAccelerationError` (R / ACS, or an R
    the fallback bundle does not serve), :class:`UnknownMaskFamilyError` / :class:`BundleNotFoundError`
    (fallback), :class:`BundleKindError` / :class:`GeometryMismatchError` (fallback bundle),
    :class:`InvalidInputError` (2D fallback, outputs). Returns the fallback bundle's pattern (None for a
    mask family), looked up in ``bundles`` (None: mask families only)."""
    unknown = sorted(set(policy.outputs) - set(IMAGE_FORMATS))
    if unknown:
        raise InvalidInputError(f"outputs {unknown} are not among {list(IMAGE_FORMATS)}")
    line_budget(geometry.width, policy.acceleration, policy.num_acs)
    pattern = resolve_fallback(policy, geometry, bundles)
    if pattern is None:
        family = get_family(policy.fallback)
        if family.dims not in ("1d", "kt"):
            raise InvalidInputError(
                f"fallback family {policy.fallback!r} makes {family.dims} point masks; the gateway plans "
                "lines (use a 1d or kt family)"
            )
    columns = acs_lines(geometry.width, policy.num_acs)
    first, last = encoding.ky_min + encoding.ky_offset, encoding.ky_max + encoding.ky_offset
    if columns[0] < first or columns[-1] > last:
        raise InvalidAccelerationError(
            f"the ACS block (columns {int(columns[0])}..{int(columns[-1])}) leaves the acquirable columns "
            f"{first}..{last} of the header's ky limits",
            num_acs=policy.num_acs,
        )
    return pattern


def new_session(body: ScanCreate, bundles: FallbackBundles | None = None) -> ScanSession:
    """A fresh ``created`` session for ``body`` (nothing stored yet); a fallback naming a fixed-mask
    bundle is resolved in ``bundles`` (the gateway's model repository) and kept in the session."""
    info = parse_header(body.header_xml)
    check_header(info)
    geometry = ScanGeometry(
        slices=info.slices,
        frames=info.frames,
        coils=int(info.receiver_channels or 0),
        height=info.height,
        width=info.width,
        readout_samples=info.encoded_readout,
    )
    encoding = Encoding(
        ky_min=info.ky.minimum,
        ky_max=info.ky.maximum,
        ky_offset=info.ky_offset,
        repetitions=info.repetitions,
        field_of_view_mm=info.recon_fov_mm,
    )
    fallback_pattern = check_policy(body.policy, geometry, encoding, bundles)
    now = now_unix_ms()
    session = ScanSession(
        scan_id=new_scan_id(),
        header_xml=body.header_xml,
        geometry=geometry,
        policy=body.policy,
        encoding=encoding,
        fallback_pattern=fallback_pattern,
        plan_payload=sampler_payload(body.policy, bundles.repository if bundles is not None else None),
        created_unix_ms=now,
        updated_unix_ms=now,
    )
    # The fallback must work whatever the sampler does later: make it once now.
    probe = PlanContext(
        scan_id=session.scan_id,
        policy=session.policy,
        geometry=geometry,
        acquired=tuple(int(c) for c in acs_columns(session)),
        round=0,
        deadline_unix_ms=now,
        fallback_pattern=fallback_pattern,
    )
    fallback_plan(probe, "probe")
    return session


def acs_columns(session: ScanSession) -> IntArray:
    """Columns ``(num_acs,)`` of the centred ACS block."""
    return np.asarray(acs_lines(session.geometry.width, session.policy.num_acs), dtype=np.int64)


def _keys_for(session: ScanSession, frame_columns: NDArray[np.bool_]) -> IntArray:
    """Keys of every slice's lines where ``frame_columns`` ``(frame, W)`` is True."""
    geometry = session.geometry
    frames, columns = np.nonzero(frame_columns)
    slices = np.repeat(np.arange(geometry.slices, dtype=np.int64), frames.size)
    return line_keys(slices, np.tile(frames, geometry.slices), np.tile(columns, geometry.slices), geometry)


def acs_keys(session: ScanSession) -> IntArray:
    """Keys of the ACS lines of every (slice, frame): ``(slices * frames * num_acs,)``."""
    mask = np.zeros((session.geometry.frames, session.geometry.width), dtype=bool)
    mask[:, acs_columns(session)] = True
    return _keys_for(session, mask)


def planned_keys(session: ScanSession, planned: NDArray[np.bool_]) -> IntArray:
    """Keys of the planned lines ``planned`` ``(frame, W)`` in every slice."""
    return _keys_for(session, planned)


def delete_blobs(blobs: BlobStore, session: ScanSession, discard: Callable[[Path], None]) -> None:
    """Remove the scan's blobs: its directory under the blob root through ``discard`` (the gateway's
    :meth:`~kadapt.gateway.domain.trash.Trash.discard`) and the images the recon wrote."""
    discard(blobs.root / "scans" / session.scan_id)
    for path in (session.images_path,):
        if path:
            # A path outside the blob root is not ours to delete (BlobStore refuses it).
            with contextlib.suppress(KadaptError, OSError):
                blobs.delete(path)
