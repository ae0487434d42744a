"""Hypothesis strategies: AlpacaModel and AlpacaFineTune specs, valid and mutated.

A spec starts from an examples/ manifest or from the CRD schema the Pydantic models generate
(tests/fuzz/specs.py), then takes zero to three mutations (tests/fuzz/mutations.py).
"""

from __future__ import annotations

import copy

from hypothesis import strategies as st

from tests.fuzz.mutations import mutate
from tests.fuzz.specs import Case, example_specs, objects, spec_schema


@st.composite
def cases(draw: st.DrawFn, kind: str) -> Case:
    """A spec of the kind, from an example or the schema, with zero to three mutations."""
    schema = spec_schema(kind)
    if draw(st.booleans()):
        spec = copy.deepcopy(draw(st.sampled_from(example_specs(kind))))
    else:
        spec = draw(objects(schema))
    case = Case(kind, spec)
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        case = draw(mutate(case, schema))
    return case
