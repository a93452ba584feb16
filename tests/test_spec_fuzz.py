"""Property test: any mapping either loads or fails with one SpecError line, never
a traceback from deep inside pydantic, Ray or torch."""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raytune_ctr import spec as spec_lib
from raytune_ctr.spec import SpecError

SECTIONS = {"data": spec_lib.DataSpec, "train": spec_lib.TrainSpec,
            "resources": spec_lib.ResourceSpec, "search": spec_lib.SearchSpec,
            "report": spec_lib.ReportSpec}
KEYS = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
              | {"choice", "uniform", "loguniform", "randint", "time_attr", "bogus"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300),
                    st.floats(-10, 10), st.just(float("nan")), st.text(max_size=8),
                    st.sampled_from(["grid", "random", "optuna", "asha", "max", "min", "auto",
                                     "mlp", "digits", "sgd", "bf16", "epoch", "train_time_s"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
specs = st.dictionaries(st.sampled_from([*SECTIONS, "name", "bogus"]),
                        st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values,
                                                          max_size=5)), max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_any_mapping_loads_or_fails_with_one_line(mapping):
    try:
        spec_lib.from_dict(mapping)
    except SpecError as err:
        msg = str(err)
        assert "\n" not in msg and ": " in msg, msg
        key = msg.split(":", 1)[0]
        assert key.split(".")[0].split("[")[0] in {*SECTIONS, "name", "bogus", "spec",
                                                   "description"}, msg


QUICKSTART = spec_lib.load("experiments/configs/quickstart.yaml").to_dict()
PATHS = [(s, k) for s in SECTIONS for k in QUICKSTART[s]] + [
    ("search", "space"), ("search", "grid"), ("search", "points"), ("search", "asha")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), values, st.sampled_from(["grid", "random", "optuna"]))
def test_one_bad_field_in_a_good_spec_is_named(path, value, method):
    mapping = {k: (dict(v) if isinstance(v, dict) else v) for k, v in QUICKSTART.items()}
    mapping["search"]["method"] = method
    section, key = path
    mapping[section][key] = value
    try:
        spec_lib.from_dict(mapping)
    except SpecError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(("search", section, "train.batch_size")), str(err)
