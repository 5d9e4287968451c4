"""`RegularizationSpec`: canonical text form, round trips, coercion and the errors of bad specs."""

from __future__ import annotations

import pytest

from lit_cifar.spec import TOKENS, RegularizationSpec, Token

Spec = RegularizationSpec

ROUND_TRIP_SPECS = [
    Spec(),
    Spec(normalize="pixel"),
    Spec(normalize="channel"),
    Spec(batchnorm=True),
    Spec(l1=0.01),
    Spec(l2=0.01),
    Spec(max_norm=3.0),
    Spec(dropout=0.25),
    Spec(augment=True),
    Spec(l1=1e-05),
    Spec(l2=0.123456789),
    Spec(l2=1e-300),
    Spec(max_norm=0.5),
    Spec(max_norm=1e-07),
    Spec(dropout=0.999999),
    Spec(l1=2.5, l2=100.0),
    Spec("pixel", True, 1e-05, 0.123456789, 3.0, 0.5, True),
    Spec("channel", False, 0.0, 0.001, 4.0, 0.0, True),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=str)
def test_parse_of_str_round_trips(spec: Spec) -> None:
    assert Spec.parse(str(spec)) == spec
    assert spec.name == str(spec)


@pytest.mark.parametrize("spec", [Spec(l1=1e16), Spec(max_norm=1e20)], ids=str)
def test_parse_of_str_round_trips_for_huge_numbers(spec: Spec) -> None:
    assert Spec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("baseline", "baseline"),
        (" baseline ", "baseline"),
        ("dropout=0.25+bn+pixel", "pixel+bn+dropout=0.25"),
        (
            "augment+dropout=0.5+maxnorm=3+l2=0.01+l1=0.001+bn+channel",
            "channel+bn+l1=0.001+l2=0.01+maxnorm=3+dropout=0.5+augment",
        ),
        ("l2=1", "l2=1"),
        ("l2=1.0", "l2=1"),
        ("l2=0.010", "l2=0.01"),
        ("maxnorm=3.0", "maxnorm=3"),
        ("l1=1e-5", "l1=1e-05"),
        ("dropout=0", "baseline"),
        (" bn + pixel ", "pixel+bn"),
    ],
)
def test_str_is_canonical(text: str, canonical: str) -> None:
    assert str(Spec.parse(text)) == canonical


def test_parse_sets_every_field() -> None:
    spec = Spec.parse("channel+bn+l1=0.001+l2=0.01+maxnorm=3+dropout=0.5+augment")
    assert spec == Spec(normalize="channel", batchnorm=True, l1=0.001, l2=0.01, max_norm=3.0, dropout=0.5, augment=True)


def test_integer_and_float_values_give_one_spec() -> None:
    assert Spec(l2=1) == Spec(l2=1.0)
    assert str(Spec(l2=1)) == str(Spec(l2=1.0)) == "l2=1"
    assert isinstance(Spec(l1=1, max_norm=3).max_norm, float)


def test_to_dict_has_one_flat_key_per_field() -> None:
    assert Spec.parse("pixel+l2=0.01+maxnorm=3").to_dict() == {
        "normalize": "pixel",
        "batchnorm": False,
        "l1": 0.0,
        "l2": 0.01,
        "max_norm": 3.0,
        "dropout": 0.0,
        "augment": False,
    }
    assert Spec().to_dict()["max_norm"] is None


@pytest.mark.parametrize(
    "form",
    [
        Spec(normalize="pixel", l2=0.01),
        "pixel+l2=0.01",
        {"normalize": "pixel", "l2": 0.01},
        Spec(normalize="pixel", l2=0.01).to_dict(),
    ],
    ids=["spec", "str", "partial-dict", "to_dict"],
)
def test_coerce_accepts_spec_text_and_dict(form) -> None:
    assert Spec.coerce(form) == Spec(normalize="pixel", l2=0.01)


def test_coerce_returns_a_spec_unchanged() -> None:
    spec = Spec(batchnorm=True)
    assert Spec.coerce(spec) is spec


def test_coerce_rejects_unknown_dict_keys_and_other_types() -> None:
    with pytest.raises(ValueError, match="weight_decay"):
        Spec.coerce({"weight_decay": 0.1})
    with pytest.raises(TypeError):
        Spec.coerce(3)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("pixle", "pixle"),
        ("bn+batchnorm", "batchnorm"),
        ("bn=1", "bn=1"),
        ("l2", "l2"),
        ("l2=abc", "l2=abc"),
        ("dropout=", "dropout="),
        ("dropout=1", "dropout=1"),
        ("dropout=1.5", "dropout=1.5"),
        ("dropout=-0.1", "dropout=-0.1"),
        ("l2=-0.1", "l2=-0.1"),
        ("l1=inf", "l1=inf"),
        ("l1=nan", "l1=nan"),
        ("maxnorm=0", "maxnorm=0"),
        ("maxnorm=-1", "maxnorm=-1"),
        ("pixel+channel", "channel"),
        ("bn+bn", "bn"),
        ("l2=0.1+l2=0.2", "l2"),
        ("pixel+baseline", "baseline"),
        ("", "''"),
        ("   ", "'   '"),
    ],
)
def test_bad_spec_raises_value_error_naming_the_token(text: str, bad: str) -> None:
    with pytest.raises(ValueError) as error:
        Spec.parse(text)
    assert bad in str(error.value)


@pytest.mark.parametrize("text", ["pixle", "bn+dropuot=0.5", "l2", ""])
def test_unknown_or_empty_spec_lists_the_valid_tokens(text: str) -> None:
    with pytest.raises(ValueError) as error:
        Spec.parse(text)
    message = str(error.value)
    for token in ("baseline", "pixel", "channel", "bn", "l1=", "l2=", "maxnorm", "dropout", "augment"):
        assert token in message


@pytest.mark.parametrize("fields", [{"normalize": "global"}, {"l1": -1.0}, {"max_norm": 0.0}, {"dropout": 1.0}])
def test_constructor_validates_fields(fields: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        Spec(**fields)


def test_spec_is_frozen_and_hashable() -> None:
    spec = Spec(l2=0.01)
    with pytest.raises(AttributeError):
        spec.l2 = 0.1  # type: ignore[misc]
    assert {spec: 1}[Spec.parse("l2=0.01")] == 1


@pytest.mark.parametrize(
    "fields",
    [{"batchnorm": "no"}, {"augment": 1}, {"l2": "0.1"}, {"dropout": True}, {"max_norm": "3"}, {"normalize": 1}],
)
def test_constructor_rejects_fields_of_the_wrong_type(fields: dict) -> None:
    """A non-empty string such as ``batchnorm="no"`` is truthy: only the field's own type is accepted."""
    with pytest.raises(TypeError, match=next(iter(fields))):
        Spec(**fields)


@pytest.mark.parametrize("token", TOKENS, ids=lambda token: token.text)
def test_each_token_of_the_table_parses_prints_and_is_listed(token: Token) -> None:
    text = f"{token.text}=0.5" if token.numeric else token.text
    spec = Spec.parse(text)
    assert str(spec) == text and getattr(spec, token.field) == (0.5 if token.numeric else token.flag)
    with pytest.raises(ValueError) as error:
        Spec.parse("nonsense")
    assert token.usage() in str(error.value)
