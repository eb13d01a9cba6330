"""The MRD session config grammar (``kadapt`` or key=value pairs) and the JSON TEXT overrides."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadapt.errors import InvalidInputError, UnknownConfigError
from kadapt.gateway.mrd_server.config import apply_text_overrides, parse_config
from kadapt.schemas import ScanPolicy


def test_the_bare_pipeline_name_runs_the_defaults_retrospectively() -> None:
    config = parse_config("kadapt")
    assert config.policy == ScanPolicy(retrospective=True)
    assert config.mode == "retrospective"
    assert config.send_feedback is False
    assert config.series_index == 1
    assert parse_config("  KADAPT \n").policy == config.policy  # any case, surrounding blanks


@pytest.mark.parametrize(
    "text",
    [
        "kadapt;policy=equispaced;R=3;acs=24;recon=cg-sense;deadline_ms=150;mode=prospective;seed=7",
        "kadapt policy=equispaced  R=3\tacs=24;;recon=cg-sense deadline_ms=150 mode=prospective seed=7",
        "sampler=equispaced;acceleration=3;num_acs=24;recon=cg-sense;plan_deadline_ms=150;MODE=Prospective;seed=7",
    ],
)
def test_key_value_pairs_set_the_policy_whatever_the_separators_and_aliases(text: str) -> None:
    config = parse_config(text)
    assert config.policy == ScanPolicy(
        sampler="equispaced",
        acceleration=3.0,
        num_acs=24,
        recon="cg-sense",
        plan_deadline_ms=150.0,
        retrospective=False,
        seed=7,
    )
    assert config.send_feedback is True  # prospective: the sequence consumes the 1028 message
    assert config.source == text.strip()


@pytest.mark.parametrize(("value", "expected"), [("on", True), ("off", False), ("yes", True), ("0", False)])
def test_feedback_can_be_forced_either_way(value: str, expected: bool) -> None:
    assert parse_config(f"kadapt;feedback={value}").send_feedback is expected
    assert parse_config(f"kadapt;mode=prospective;feedback={value}").send_feedback is expected
    assert parse_config("kadapt;mode=prospective;feedback=auto").send_feedback is True


@pytest.mark.parametrize("text", ["default", "simplefft", "invertcontrast", "", "  ", "kadaptx;R=2", "R"])
def test_foreign_configs_are_unknown_and_named(text: str) -> None:
    with pytest.raises(UnknownConfigError) as caught:
        parse_config(text)
    assert caught.value.slug == "config-not-found"
    assert repr(text.strip()) in caught.value.detail


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kadapt;speed=3", "'speed' is unknown"),
        ("kadapt;R=fast", "R='fast': not a number"),
        ("kadapt;acs=2.5", "acs='2.5': not an integer"),
        ("kadapt;R=0.5", "R=0.5"),
        ("kadapt;mode=live", "mode='live'"),
        ("kadapt;feedback=maybe", "feedback='maybe'"),
        ("kadapt;R=2;acceleration=3", "given twice"),
        ("kadapt;recon=", "recon= has no value"),
        ("kadapt;R=2;stray", "'stray' is not key=value"),
        ("kadapt;series=70000", "series=70000"),
    ],
)
def test_bad_keys_and_values_are_invalid_input_naming_them(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_config(text)
    assert not isinstance(caught.value, UnknownConfigError)
    assert fragment in caught.value.detail


def test_json_text_overrides_apply_on_top_of_the_config() -> None:
    config = parse_config("kadapt;R=4;acs=24;recon=cg-sense")
    text = json.dumps({"kadapt": {"R": 2, "recon": "zero-filled", "feedback": True, "series": 7}})
    updated = apply_text_overrides(config, text)
    assert (updated.policy.acceleration, updated.policy.num_acs) == (2.0, 24)
    assert updated.policy.recon == "zero-filled"
    assert updated.send_feedback is True
    assert updated.series_index == 7
    assert "TEXT" in updated.source


@pytest.mark.parametrize(
    "text",
    [
        "plain log text",
        json.dumps({"parameters": {"config": "invertcontrast", "customconfig": ""}}),  # FIRE configAdditional
        json.dumps([1, 2, 3]),
        "",
    ],
)
def test_other_text_leaves_the_config_alone(text: str) -> None:
    config = parse_config("kadapt;R=3")
    assert apply_text_overrides(config, text) is config


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"kadapt": "R=2"}, "must be an object"),
        ({"kadapt": {"R": [2]}}, "kadapt.R"),
        ({"kadapt": {"warp": 9}}, "'warp' is unknown"),
        ({"kadapt": {"acs": 0}}, "acs=0"),
    ],
)
def test_bad_overrides_are_invalid_input(document: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        apply_text_overrides(parse_config("kadapt"), json.dumps(document))
    assert fragment in caught.value.detail


_WORDS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(text=_WORDS)
def test_any_text_parses_or_raises_a_kadapt_error(text: str) -> None:
    try:
        config = parse_config(text)
    except (InvalidInputError, UnknownConfigError):
        return
    assert isinstance(config.policy, ScanPolicy)


def test_dicom_output_is_off_unless_asked_for() -> None:
    assert parse_config("kadapt").dicom is False
    assert parse_config("kadapt").deidentify is None  # the gateway's dicom_deidentify decides
    config = parse_config("kadapt;dicom=on;deidentify=off")
    assert (config.dicom, config.deidentify) == (True, False)
