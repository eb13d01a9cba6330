"""The config string of an MRD session (CONFIG_FILE / CONFIG_TEXT) and the JSON TEXT overrides.

FIRE and Gadgetron clients name a server-side pipeline in their first message. kadapt runs one pipeline
(plan -> filter or acquire -> reconstruct) whose policy the config string sets::

    config  := "kadapt" | "kadapt" SEP pairs | pairs
    pairs   := pair (SEP pair)*
    pair    := key "=" value            (keys case-insensitive, values as written)
    SEP     := one or more of ";" and whitespace

    kadapt;policy=vd-random;R=4;acs=24;recon=cg-sense;deadline_ms=200;mode=prospective

Keys (aliases after the slash): ``policy`` / ``sampler`` (sampler policy or bundle), ``R`` /
``acceleration`` (float > 1), ``acs`` / ``num_acs`` (int), ``recon`` (method or bundle), ``deadline_ms``
/ ``plan_deadline_ms`` (float), ``fallback`` (mask family or fixed-mask bundle), ``seed`` (int), ``mode``
(``retrospective`` | ``prospective``), ``feedback`` (``on`` | ``off`` | ``auto``: send the 1028
``kadapt_plan`` message; auto = prospective only), ``series`` (``image_series_index`` of the images
sent back), ``dicom`` (``on``: also write the images as a DICOM series under the gateway's
``mrd_dicom_dir``) and ``deidentify`` (``on`` | ``off``: remove patient fields from that series; default
the gateway's ``dicom_deidentify``). Unset keys keep :class:`~kadapt.schemas.ScanPolicy`'s defaults,
except ``mode``: retrospective, because stock clients stream fully sampled files.

Anything else is refused before the header is read: a bare word other than ``kadapt`` (FIRE's
``default``, ``simplefft``, ``invertcontrast``, Gadgetron's XML chains) is an unknown config
(:class:`UnknownConfigError`), an unknown key or a bad value an :class:`InvalidInputError` naming it.

A TEXT message between the HEADER and the first ACQUISITION may carry JSON overrides in a ``kadapt``
member, with the same keys: ``{"kadapt": {"R": 2, "recon": "zero-filled"}}``. Other JSON (FIRE's
``configAdditional`` with its ``parameters``) and plain text are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from kadapt.errors import InvalidInputError, UnknownConfigError
from kadapt.schemas import ScanPolicy

PIPELINE = "kadapt"
_SEPARATORS = re.compile(r"[;\s]+")
_MODES = ("retrospective", "prospective")
_SWITCHES = {
    "on": True,
    "true": True,
    "yes": True,
    "1": True,
    "off": False,
    "false": False,
    "no": False,
    "0": False,
}
_SWITCHES_AUTO = "auto"

# config key -> (canonical name, value kind)
_KEYS: dict[str, tuple[str, str]] = {
    "policy": ("sampler", "str"),
    "sampler": ("sampler", "str"),
    "r": ("acceleration", "float"),
    "acceleration": ("acceleration", "float"),
    "acs": ("num_acs", "int"),
    "num_acs": ("num_acs", "int"),
    "recon": ("recon", "str"),
    "deadline_ms": ("plan_deadline_ms", "float"),
    "plan_deadline_ms": ("plan_deadline_ms", "float"),
    "fallback": ("fallback", "str"),
    "seed": ("seed", "int"),
    "mode": ("mode", "mode"),
    "feedback": ("feedback", "switch"),
    "series": ("series", "int"),
    "dicom": ("dicom", "switch"),
    "deidentify": ("deidentify", "switch"),
}
KNOWN_KEYS = (
    "policy", "R", "acs", "recon", "deadline_ms", "fallback", "seed", "mode", "feedback", "series", "dicom",
    "deidentify",
)  # fmt: skip
_POLICY_FIELDS = ("sampler", "acceleration", "num_acs", "recon", "plan_deadline_ms", "fallback", "seed")


@dataclass(frozen=True)
class SessionConfig:
    """What a session runs: the scan ``policy``, whether to send the 1028 feedback (``feedback``: None =
    auto, i.e. prospective only), the ``series_index`` of the images, whether to write a DICOM series
    (``dicom``; ``deidentify``: None = the gateway's default), and ``source`` (the config as received,
    for logs)."""

    policy: ScanPolicy
    feedback: bool | None = None
    series_index: int = 1
    dicom: bool = False
    deidentify: bool | None = None
    source: str = PIPELINE

    @property
    def mode(self) -> str:
        return "retrospective" if self.policy.retrospective else "prospective"

    @property
    def send_feedback(self) -> bool:
        """Stock clients (``ismrmrd`` ProtocolDeserializer, python-ismrmrd-server's client) stop at an
        unknown message id, so the 1028 message goes only to sessions that want it."""
        return self.feedback if self.feedback is not None else not self.policy.retrospective


def _convert(key: str, kind: str, value: str) -> object:
    text = value.strip()
    try:
        if kind == "float":
            return float(text)
        if kind == "int":
            return int(text)
    except ValueError:
        noun = "an integer" if kind == "int" else "a number"
        raise InvalidInputError(f"config {key}={value!r}: not {noun}") from None
    if kind == "mode":
        if text.lower() not in _MODES:
            raise InvalidInputError(f"config mode={value!r}: use {' or '.join(_MODES)}")
        return text.lower()
    if kind == "switch":
        if text.lower() == _SWITCHES_AUTO:
            return None
        if text.lower() not in _SWITCHES:
            raise InvalidInputError(f"config {key}={value!r}: use on, off or auto")
        return _SWITCHES[text.lower()]
    if not text:
        raise InvalidInputError(f"config {key}= has no value")
    return text


def _apply(base: SessionConfig, pairs: list[tuple[str, str]], source: str) -> SessionConfig:
    """``base`` with the ``(key, value)`` pairs applied; the policy is re-validated as a whole."""
    fields: dict[str, object] = {}
    seen: dict[str, str] = {}
    for key, value in pairs:
        known = _KEYS.get(key.lower())
        if known is None:
            raise InvalidInputError(
                f"config key {key!r} is unknown; kadapt's keys are {', '.join(KNOWN_KEYS)}", key=key
            )
        name, kind = known
        if name in seen:
            raise InvalidInputError(f"config key {key!r} given twice (also as {seen[name]!r})", key=key)
        seen[name] = key
        fields[name] = _convert(key, kind, value)
    policy_fields: dict[str, Any] = base.policy.model_dump()
    policy_fields.update({name: value for name, value in fields.items() if name in _POLICY_FIELDS})
    if "mode" in fields:
        policy_fields["retrospective"] = fields["mode"] == "retrospective"
    try:
        policy = ScanPolicy.model_validate(policy_fields)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "policy"
        key = seen.get(name, name)
        raise InvalidInputError(f"config {key}={fields.get(name)!r}: {first['msg']}", key=key) from None
    series = fields.get("series", base.series_index)
    if not isinstance(series, int) or not 0 <= series <= 0xFFFF:
        raise InvalidInputError(f"config series={series!r}: image_series_index is 0..65535")
    feedback = fields.get("feedback", base.feedback)
    deidentify = fields.get("deidentify", base.deidentify)
    return SessionConfig(
        policy=policy,
        feedback=feedback if isinstance(feedback, bool) else None,
        series_index=series,
        dicom=bool(fields.get("dicom", base.dicom)),
        deidentify=deidentify if isinstance(deidentify, bool) else None,
        source=source,
    )


def default_config() -> SessionConfig:
    """The ``kadapt`` config: ScanPolicy's defaults in retrospective mode."""
    return SessionConfig(policy=ScanPolicy(retrospective=True))


def parse_config(text: str) -> SessionConfig:
    """Parse a CONFIG_FILE name or CONFIG_TEXT (grammar in the module docstring).

    Raises :class:`UnknownConfigError` for a config that is not kadapt's (naming it) and
    :class:`InvalidInputError` for an unknown key or a bad value (naming the key and value).
    """
    source = text.strip()
    tokens = [token for token in _SEPARATORS.split(source) if token]
    if tokens and tokens[0].lower() == PIPELINE:
        tokens = tokens[1:]
    elif not tokens or "=" not in tokens[0]:
        shown = source if len(source) <= 80 else source[:77] + "..."
        raise UnknownConfigError(
            f"config {shown!r} is unknown: this server runs 'kadapt' or key=value configs such as "
            "'kadapt;policy=vd-random;R=4;acs=24;recon=cg-sense;mode=retrospective'",
            config=shown,
        )
    pairs: list[tuple[str, str]] = []
    for token in tokens:
        key, equals, value = token.partition("=")
        if not equals or not key:
            raise InvalidInputError(f"config item {token!r} is not key=value (in {source!r})")
        pairs.append((key, value))
    return _apply(default_config(), pairs, source)


def apply_text_overrides(config: SessionConfig, text: str) -> SessionConfig:
    """``config`` updated by the ``kadapt`` member of a JSON TEXT message; other text leaves it as is.

    The member must be an object of config keys to strings, numbers or booleans
    (:class:`InvalidInputError` naming the offending key otherwise).
    """
    try:
        document = json.loads(text)
    except ValueError:
        return config
    if not isinstance(document, Mapping) or PIPELINE not in document:
        return config
    overrides = document[PIPELINE]
    if not isinstance(overrides, Mapping):
        raise InvalidInputError(
            f"TEXT JSON member 'kadapt' must be an object of config keys, got {overrides!r}"
        )
    pairs: list[tuple[str, str]] = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            pairs.append((str(key), "on" if value else "off"))
        elif isinstance(value, int | float | str):
            pairs.append((str(key), str(value)))
        else:
            raise InvalidInputError(f"TEXT JSON kadapt.{key}={value!r}: use a string, number or boolean")
    updated = _apply(config, pairs, config.source)
    return replace(updated, source=f"{config.source} + TEXT {json.dumps(dict(overrides), sort_keys=True)}")
