"""Property test: any mapping either loads or fails with one SpecError line, never
a traceback from deep inside pydantic, Ray or torch."""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raytune_ctr import checks
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
        checks.from_dict(mapping)
    except SpecError as err:
        msg = str(err)
        assert "\n" not in msg and ": " in msg, msg
        key = msg.split(":", 1)[0]
        assert key.split(".")[0].split("[")[0] in {*SECTIONS, "name", "bogus", "spec",
                                                   "description"}, msg


QUICKSTART = checks.load("experiments/configs/quickstart.yaml").to_dict()
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
        checks.from_dict(mapping)
    except SpecError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(("search", section, "train.batch_size")), str(err)


# --- files as a user might hand them over (issue: nothing lost under bad input) -------

def _load_text(tmp_path_factory, raw: bytes):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_bytes(raw)
    return path, checks.load(path)


def _one_line(err: SpecError) -> str:
    msg = str(err)
    assert "\n" not in msg and ": " in msg, msg
    return msg


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_bytes_load_or_fail_with_one_line(tmp_path_factory, raw):
    try:
        _load_text(tmp_path_factory, raw)
    except SpecError as err:
        _one_line(err)


FLOAT_FIELDS = [(section, f.name) for section, cls in SECTIONS.items()
                for f in dataclasses.fields(cls) if "float" in str(f.type).lower()] + [
    ("search.asha", "max_t"), ("search.asha", "grace_period"),
    ("search.asha", "reduction_factor"), ("cost", "node_cpus"), ("cost", "node_gpus")]


def test_every_float_field_is_checked():
    assert ("train", "lr") in FLOAT_FIELDS and ("report", "target_acc") in FLOAT_FIELDS
    assert len(FLOAT_FIELDS) >= 12


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FLOAT_FIELDS), st.sampled_from([".inf", "-.inf", ".nan", ".NaN", "+.Inf"]))
def test_non_finite_floats_are_refused_in_every_float_field(tmp_path_factory, field, word):
    section, key = field
    parts = section.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts)) + \
        f"{'  ' * len(parts)}{key}: {word}\n"
    try:
        _load_text(tmp_path_factory, text.encode())
    except SpecError as err:
        msg = _one_line(err)
        assert msg.startswith(f"{section}.{key}"), msg
        assert "finite" in msg, msg
    else:
        raise AssertionError(f"{section}.{key}: {word} was accepted")


def _yaml_lines(mapping: dict, indent: int, dup: tuple | None, at: tuple = ()) -> list[str]:
    """Block-style YAML (scalars as JSON, which is YAML); `dup` names the key path
    written a second time."""
    import json

    out = []
    for k, v in mapping.items():
        times = 2 if dup == (*at, k) else 1
        for _ in range(times):
            if isinstance(v, dict) and v:
                out.append(f"{' ' * indent}{k}:")
                out += _yaml_lines(v, indent + 2, dup, (*at, k))
            else:
                out.append(f"{' ' * indent}{k}: {json.dumps(v)}")
    return out


def _paths(mapping: dict, at: tuple = ()) -> list[tuple]:
    out = []
    for k, v in mapping.items():
        out.append((*at, k))
        if isinstance(v, dict):
            out += _paths(v, (*at, k))
    return out


nested = st.recursive(st.one_of(st.integers(0, 9), st.text("abc", max_size=3)),
                      lambda inner: st.dictionaries(st.sampled_from(KEYS), inner,
                                                    min_size=1, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from([*SECTIONS, "name"]), nested, min_size=1, max_size=4),
       st.data())
def test_a_key_written_twice_at_any_depth_is_named(tmp_path_factory, mapping, data):
    dup = data.draw(st.sampled_from(_paths(mapping)))
    text = "\n".join(_yaml_lines(mapping, 0, dup)) + "\n"
    try:
        _load_text(tmp_path_factory, text.encode())
    except SpecError as err:
        msg = _one_line(err)
        assert msg.startswith(".".join(dup) + ": written twice"), (msg, text)
    else:
        raise AssertionError(f"{'.'.join(dup)} written twice was accepted:\n{text}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.text(" \t\r\n", max_size=20), st.booleans())
def test_empty_or_whitespace_files_are_refused(tmp_path_factory, blank, comment):
    text = blank + ("# only a comment\n" if comment else "")
    try:
        _load_text(tmp_path_factory, text.encode())
    except SpecError as err:
        assert "is empty" in _one_line(err)
    else:
        raise AssertionError(f"{text!r} was accepted")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.sampled_from(["", " ", ".", "..", "/", "a/b", "../x", "a\\b", "a?b", "a#b",
                                  "a%41b", "a b"]),
                 st.text(max_size=6).map(lambda t: t + "/" + t)))
def test_names_that_are_not_a_folder_name_are_refused(name):
    try:
        checks.from_dict({"name": name})
    except SpecError as err:
        assert _one_line(err).startswith("name: must be a plain folder name"), str(err)
    else:
        raise AssertionError(f"name {name!r} was accepted")


def test_nested_yaml_aliases_are_walked_once(tmp_path):
    """A "billion laughs" file: each level names the one before it ten times. The
    duplicate-key check visits each node once, so this ends (before: minutes)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    try:
        checks.load(path)
    except SpecError as err:
        assert "a0" in str(err) and "\n" not in str(err)  # not a spec key
