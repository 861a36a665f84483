"""SamplingParams: defaults, normalisation, and validate() messages that name field and range."""

import math

import pytest

from seedstream.sampler import SAMPLER_VERSION, SamplingParams


def test_defaults_and_greedy():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (1.0, 0, 1.0, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert p.logit_bias == () and p.seed is None
    assert not p.is_greedy and SamplingParams(temperature=0).is_greedy
    p.validate()
    assert isinstance(SAMPLER_VERSION, str) and SAMPLER_VERSION


def test_frozen_and_hashable():
    p = SamplingParams(seed=3, logit_bias={5: 1.0})
    with pytest.raises(AttributeError):
        p.temperature = 2.0
    assert hash(p) == hash(SamplingParams(seed=3, logit_bias=((5, 1.0),)))


def test_logit_bias_mapping_is_normalised_to_sorted_tuple():
    p = SamplingParams(logit_bias={9: -1, 2: 0.5, 4: 100})
    assert p.logit_bias == ((2, 0.5), (4, 100.0), (9, -1.0))
    assert SamplingParams(logit_bias=[(9, -1.0), (2, 0.5)]).logit_bias == ((2, 0.5), (9, -1.0))
    assert p == SamplingParams(logit_bias=((2, 0.5), (4, 100.0), (9, -1.0)))


BAD = [
    ("temperature", -1.0, "[0, 100]"),
    ("temperature", 101.0, "[0, 100]"),
    ("temperature", math.nan, "finite"),
    ("temperature", math.inf, "finite"),
    ("top_k", -1, ">= 0"),
    ("top_k", 2.5, "integer"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_p", math.nan, "(0, 1]"),
    ("min_p", -0.1, "[0, 1]"),
    ("min_p", 1.1, "[0, 1]"),
    ("repetition_penalty", 0.0, "(0, inf)"),
    ("repetition_penalty", -1.0, "(0, inf)"),
    ("repetition_penalty", math.inf, "finite"),
    ("presence_penalty", 2.5, "[-2, 2]"),
    ("frequency_penalty", -2.5, "[-2, 2]"),
    ("frequency_penalty", math.nan, "[-2, 2]"),
    ("seed", -1, "[0, 2**64)"),
    ("seed", 2**64, "[0, 2**64)"),
    ("seed", 1.5, "[0, 2**64)"),
]


@pytest.mark.parametrize("field,value,allowed", BAD)
def test_validate_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as err:
        SamplingParams(**{field: value}).validate()
    msg = str(err.value)
    assert msg.startswith(f"{field}="), msg
    assert repr(value) in msg and allowed in msg, msg


def test_validate_edges_are_allowed():
    for kw in (
        dict(temperature=0.0),
        dict(temperature=100.0),
        dict(top_p=1.0),
        dict(top_p=1e-9),
        dict(min_p=1.0),
        dict(presence_penalty=-2.0),
        dict(frequency_penalty=2.0),
        dict(repetition_penalty=1e-3),
        dict(seed=0),
        dict(seed=2**64 - 1),
        dict(top_k=10**9),
    ):
        SamplingParams(**kw).validate(vocab_size=10)


def test_validate_logit_bias():
    SamplingParams(logit_bias={0: -100.0, 9: 100.0}).validate(vocab_size=10)
    with pytest.raises(ValueError, match=r"logit_bias token id=10 is out of range: allowed .*\[0, 10\)"):
        SamplingParams(logit_bias={10: 1.0}).validate(vocab_size=10)
    with pytest.raises(ValueError, match=r"logit_bias token id=-1 .*\[0, vocab_size\)"):
        SamplingParams(logit_bias={-1: 1.0}).validate()
    with pytest.raises(ValueError, match=r"logit_bias\[3\]=100.5 is out of range: allowed \[-100, 100\]"):
        SamplingParams(logit_bias={3: 100.5}).validate()
    with pytest.raises(ValueError, match=r"logit_bias\[3\]=nan .*finite"):
        SamplingParams(logit_bias={3: math.nan}).validate()
    with pytest.raises(ValueError, match="twice"):
        SamplingParams(logit_bias=[(3, 1.0), (3, 2.0)]).validate()
