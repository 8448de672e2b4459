"""How a bad job spec is worded: the field, what is wrong, and for a misspelt field the name meant."""

import pytest

from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces.errors import SpecError

BASE = {"study": "s", "budget": {"avg_bits": 4.25}}


@pytest.mark.parametrize("extra, message", [
    ({"sapce": {}}, "spec: field 'sapce': unknown field; did you mean 'space'?"),
    ({"budget": {"avg_bit": 4}}, "spec: field 'budget.avg_bit': unknown field; did you mean 'avg_bits'?"),
    ({"workers": {"cont": 2}}, "spec: field 'workers.cont': unknown field; did you mean 'count'?"),
    ({"space": {"layers": [{"match": "x"}, {"match": "y", "optoins": ["fp16"]}]}},
     "spec: field 'space.layers.1.optoins': unknown field; did you mean 'options'?"),
    ({"zzzzzz": 1}, "spec: field 'zzzzzz': unknown field"),  # nothing close: no guess
])
def test_unknown_field_says_which_was_meant(extra, message):
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **extra})
    assert str(info.value) == message


def test_searcher_parameter_typo_is_guessed_too():
    spec = {**BASE, "searcher": {"name": "evolutionary", "params": {"ofspring": 8}}}
    with pytest.raises(SpecError, match=r"searcher.params.ofspring: unknown field; did you mean "
                                        r"'offspring'\? \(parameters of 'evolutionary': "):
        parse_spec(spec)


@pytest.mark.parametrize("extra, field", [
    ({"objective": "nope"}, "objective"),
    ({"storage": {"url": "env:MPSEARCH_TEST_UNSET_VARIABLE"}}, "storage.url"),
])
def test_a_validators_message_reaches_the_user_without_pydantics_prefix(extra, field):
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **extra})
    message = str(info.value)
    assert message.startswith(f"spec: field '{field}': ") and "Value error" not in message
