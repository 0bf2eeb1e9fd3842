"""qajax.config against real config files written into tmp_path and ml_collections' own behaviour."""

from __future__ import annotations

import json
import textwrap

import ml_collections
import pytest

from qajax import config as qconfig
from qajax.errors import ConfigError

SQUAD_CONFIG = """
import ml_collections
from ml_collections import config_dict


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.name = "squad"
    config.train = ml_collections.ConfigDict()
    config.train.steps = 100
    config.train.batch_size = 32
    config.train.bf16 = False
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = config.train.get_oneway_ref("batch_size")
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 3e-5
    config.optimizer.betas = (0.9, 0.999)
    config.optimizer.schedule = ml_collections.ConfigDict({"warmup": {"steps": 10}})
    config.model = ml_collections.ConfigDict()
    config.model.freeze = ("embeddings", "encoder/layer/0")
    config.model.bucket_lengths = [128, 384]
    config.model.dropout = config_dict.placeholder(float)
    config.model.pooler = config_dict.placeholder(str)
    config.eval_every = config_dict.placeholder(int)
    config.log_every = config_dict.FieldReference(50, field_type=int)
    config.init_from = None
    config.tags = ()
    return config
"""


def write(tmp_path, text: str, name: str = "squad.py") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def squad_path(tmp_path) -> str:
    return write(tmp_path, SQUAD_CONFIG)


def test_load_returns_the_files_values(squad_path):
    config = qconfig.load(squad_path)
    assert config.train.steps == 100
    assert config.optimizer.schedule.warmup.steps == 10
    assert config.model.freeze == ("embeddings", "encoder/layer/0")
    assert config.model.dropout is None
    assert config.eval.batch_size == 32


# repr tells 3 from 3.0, "1" from 1 and a tuple from a list, so each case pins the type as well as the value.
@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.steps=200", "train.steps", 200),
        ("seed=-3", "seed", -3),
        ("optimizer.learning_rate=1e-4", "optimizer.learning_rate", 1e-4),
        ("optimizer.learning_rate=3", "optimizer.learning_rate", 3.0),
        ("train.bf16=TRUE", "train.bf16", True),
        ("train.bf16=yes", "train.bf16", True),
        ("train.bf16=1", "train.bf16", True),
        ("train.bf16=No", "train.bf16", False),
        ("train.bf16=0", "train.bf16", False),
        ("name=squad_v2", "name", "squad_v2"),
        ("name=123", "name", "123"),
        ("name=a=b", "name", "a=b"),
        ("optimizer.schedule.warmup.steps=50", "optimizer.schedule.warmup.steps", 50),
        ("optimizer.betas=[0.8, 0.99]", "optimizer.betas", (0.8, 0.99)),
        ("optimizer.betas=0.5,1", "optimizer.betas", (0.5, 1.0)),
        ("optimizer.betas=[1, 2]", "optimizer.betas", (1.0, 2.0)),
        ("model.freeze=pooler,encoder/layer/1", "model.freeze", ("pooler", "encoder/layer/1")),
        ('model.freeze=["x/y", "z"]', "model.freeze", ("x/y", "z")),
        ("model.freeze=[x,y]", "model.freeze", ("x", "y")),
        ("model.freeze=1,2", "model.freeze", ("1", "2")),
        ("model.freeze=pooler", "model.freeze", ("pooler",)),
        ("model.freeze=[]", "model.freeze", ()),
        ("model.bucket_lengths=[256]", "model.bucket_lengths", [256]),
        ("model.bucket_lengths=64,128", "model.bucket_lengths", [64, 128]),
        ("tags=a,b", "tags", ("a", "b")),
        ("tags=[1, 2]", "tags", (1, 2)),
        ("model.dropout=0.2", "model.dropout", 0.2),
        ("model.dropout=1", "model.dropout", 1.0),
        ("model.pooler=none", "model.pooler", None),
        ("eval_every=500", "eval_every", 500),
        ("eval_every=null", "eval_every", None),
        ("log_every=None", "log_every", None),
        ("log_every=7", "log_every", 7),
        ("init_from=runs/base", "init_from", "runs/base"),
        ("init_from=0.5", "init_from", 0.5),
        ("init_from=[1, 2]", "init_from", [1, 2]),
        ("init_from=true", "init_from", True),
        ("init_from=null", "init_from", None),
    ],
)
def test_override_is_parsed_as_the_type_of_the_field(squad_path, override, key, expected):
    value = qconfig.flatten(qconfig.load(squad_path, [override]))[key]
    assert repr(value) == repr(expected)


def test_override_through_a_reference_reaches_the_values_derived_from_it(squad_path):
    config = qconfig.load(squad_path, ["train.batch_size=64"])
    assert (config.train.batch_size, config.eval.batch_size) == (64, 64)
    config = qconfig.load(squad_path, ["eval.batch_size=8"])  # a one-way reference: the source keeps its value
    assert (config.train.batch_size, config.eval.batch_size) == (32, 8)


def test_a_key_given_twice_keeps_its_last_value(squad_path):
    config = qconfig.load(squad_path, ["train.steps=1", "train.steps=2", "init_from=5", "init_from=runs/x"])
    assert config.train.steps == 2
    assert config.init_from == "runs/x"


@pytest.mark.parametrize(
    "override, suggestions",
    [
        ("train.step=5", ["'train.steps'"]),
        ("learning_rate=1e-4", ["'optimizer.learning_rate'"]),
        ("steps=5", ["'train.steps'", "'optimizer.schedule.warmup.steps'"]),
        ("optimizer.schedule.warmup.step=5", ["'optimizer.schedule.warmup.steps'"]),
    ],
)
def test_unknown_key_names_it_and_suggests_the_closest(squad_path, override, suggestions):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match="did you mean") as error:
        qconfig.load(squad_path, [override])
    assert f"unknown config key '{key}'" in str(error.value)
    for suggestion in suggestions:
        assert suggestion in str(error.value)


def test_unknown_key_without_a_close_match_has_no_suggestion(squad_path):
    with pytest.raises(ConfigError) as error:
        qconfig.load(squad_path, ["zzzzqqq=1"])
    assert str(error.value) == "unknown config key 'zzzzqqq'"


def test_a_group_key_lists_the_keys_inside_it(squad_path):
    with pytest.raises(ConfigError, match="'train' is a group of settings") as error:
        qconfig.load(squad_path, ["train=5"])
    assert "train.steps" in str(error.value) and "train.bf16" in str(error.value)


def test_no_override_is_applied_when_one_is_wrong():
    config = ml_collections.ConfigDict({"train": {"steps": 100, "batch_size": 32}})
    with pytest.raises(ConfigError, match="trian.steps"):
        qconfig.apply_overrides(config, ["train.batch_size=8", "trian.steps=1"])
    assert config.train.batch_size == 32
    assert not config.is_locked


@pytest.mark.parametrize(
    "override, expected_message",
    [
        ("train.steps=1.5", "config key 'train.steps' expects int, got '1.5'"),
        ("train.steps=ten", "config key 'train.steps' expects int, got 'ten'"),
        ("train.steps=none", "config key 'train.steps' expects int, got 'none'"),
        ("train.bf16=maybe", "config key 'train.bf16' expects bool, got 'maybe'"),
        ("train.bf16=2", "config key 'train.bf16' expects bool, got '2'"),
        ("optimizer.learning_rate=fast", "config key 'optimizer.learning_rate' expects float, got 'fast'"),
        ("optimizer.betas=0.9,x", "config key 'optimizer.betas' expects tuple of float, got '0.9,x'"),
        ('optimizer.betas=["a"]', "config key 'optimizer.betas' expects tuple of float, got '[\"a\"]'"),
        ("model.bucket_lengths=1.5,2", "config key 'model.bucket_lengths' expects list of int, got '1.5,2'"),
        ("eval_every=1.5", "config key 'eval_every' expects int, got '1.5'"),
        ("model.dropout=high", "config key 'model.dropout' expects float, got 'high'"),
    ],
)
def test_wrong_type_names_the_key_the_type_and_the_text(squad_path, override, expected_message):
    with pytest.raises(ConfigError) as error:
        qconfig.load(squad_path, [override])
    assert str(error.value) == expected_message


@pytest.mark.parametrize(
    "override, type_name",
    [("heads=qa", "list of ConfigDict"), ("window=1,2", "tuple of tuple"), ("activation=relu", "function")],
)
def test_values_that_text_cannot_express_are_refused(override, type_name):
    config = ml_collections.ConfigDict(
        {"heads": [ml_collections.ConfigDict({"name": "span"})], "window": ((1, 2),), "activation": lambda x: x}
    )
    with pytest.raises(ConfigError) as error:
        qconfig.apply_overrides(config, [override])
    key = override.partition("=")[0]
    assert str(error.value) == f"config key '{key}' holds a {type_name}, which --set cannot write"


def test_override_without_equals_sign_fails(squad_path):
    with pytest.raises(ConfigError, match="override 'train.steps' has no '='"):
        qconfig.load(squad_path, ["train.steps"])


def test_arg_after_colon_reaches_get_config(tmp_path):
    path = write(
        tmp_path,
        """
        import ml_collections

        def get_config(arg):
            model, _, mode = arg.partition(",")
            return ml_collections.ConfigDict({"arg": arg, "model": model.split("=")[1], "runlocal": mode == "runlocal"})
        """,
    )
    config = qconfig.load(f"{path}:model=minilm,runlocal")
    assert (config.arg, config.model, config.runlocal) == ("model=minilm,runlocal", "minilm", True)
    with pytest.raises(ConfigError, match=r"get_config\(arg\) needs an argument"):
        qconfig.load(path)


def test_arg_is_optional_when_get_config_has_a_default(tmp_path):
    path = write(
        tmp_path,
        """
        import ml_collections

        def get_config(arg=None):
            return ml_collections.ConfigDict({"arg": arg or "default"})
        """,
    )
    assert qconfig.load(path).arg == "default"
    assert qconfig.load(f"{path}:small").arg == "small"


def test_arg_given_to_a_get_config_without_parameters_fails(squad_path):
    with pytest.raises(ConfigError, match=r"get_config\(\) takes no argument, but 'small' was given") as error:
        qconfig.load(f"{squad_path}:small")
    assert "squad.py" in str(error.value)


def test_files_are_imported_by_path_not_by_module_name(tmp_path):
    text = "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({{'x': {}}})\n"
    first, second = write(tmp_path, text.format(1), "a/c.py"), write(tmp_path, text.format(2), "b/c.py")
    assert (qconfig.load(first).x, qconfig.load(second).x) == (1, 2)


def test_loaded_config_is_locked(squad_path):
    config = qconfig.load(squad_path, ["train.steps=5"])
    assert config.is_locked
    with pytest.raises(AttributeError, match="does not exist"):
        config.train.stpes = 10
    with pytest.raises(AttributeError, match="does not exist"):
        config.new_key = 1
    with pytest.raises(AttributeError, match="Did you mean"):
        _ = config.train.stpes
    config.train.steps = 6  # existing keys stay writable: locking guards against new keys only
    assert config.train.steps == 6


def test_required_placeholder_must_be_set(tmp_path):
    path = write(
        tmp_path,
        """
        import ml_collections
        from ml_collections import config_dict

        def get_config():
            return ml_collections.ConfigDict({"data": {"train_file": config_dict.required_placeholder(str)}})
        """,
    )
    with pytest.raises(ConfigError, match=r"'data.train_file' is required .* --set data.train_file="):
        qconfig.load(path)
    assert qconfig.load(path, ["data.train_file=train.jsonl"]).data.train_file == "train.jsonl"


@pytest.mark.parametrize(
    "text, expected_message",
    [
        ("x = 1\n", "defines no get_config(); expected get_config() or get_config(arg: str)"),
        ("def get_config():\n    return {'a': 1}\n", "get_config() returned a dict; expected a ConfigDict"),
        ("def get_config(:\n", "line 1"),
    ],
)
def test_a_bad_config_file_is_named_with_what_was_expected(tmp_path, text, expected_message):
    path = write(tmp_path, text, "bad.py")
    with pytest.raises(ConfigError) as error:
        qconfig.load(path)
    assert str(error.value).startswith(path)
    assert expected_message in str(error.value)


def test_a_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError, match="does not exist") as error:
        qconfig.load(f"{missing}:arg")
    assert str(missing) in str(error.value)


def test_flatten_gives_dotted_keys_and_leaf_values():
    config = ml_collections.ConfigDict({"a": 1, "b": {"c": (1, 2), "d": {"e": None}}, "f": []})
    assert qconfig.flatten(config) == {"a": 1, "b.c": (1, 2), "b.d.e": None, "f": []}


def test_save_then_read_saved_round_trips(squad_path, tmp_path):
    config = qconfig.load(squad_path, ["train.steps=7", "model.dropout=0.1", "optimizer.betas=0.8,0.9"])
    workdir = tmp_path / "run"
    path = qconfig.save(config, workdir)
    assert path == workdir / "config.json"

    data = json.loads(path.read_text())
    assert list(data) == sorted(data)
    assert data["optimizer"]["betas"] == [0.8, 0.9]
    assert data["model"]["dropout"] == 0.1
    assert data["eval"]["batch_size"] == 32  # references are saved as their values

    restored = qconfig.read_saved(workdir)
    assert restored.is_locked
    # JSON has lists only; read_saved gives tuples back, as configs write them.
    assert qconfig.flatten(restored) == {**qconfig.flatten(config), "model.bucket_lengths": (128, 384)}
    restored = qconfig.apply_overrides(restored, ["train.steps=9", "optimizer.betas=[0.5, 0.6]"])
    assert (restored.train.steps, restored.optimizer.betas) == (9, (0.5, 0.6))


def test_save_names_the_key_that_is_not_json(tmp_path):
    config = ml_collections.ConfigDict({"train": {"steps": 1, "metrics": {"f1", "em"}}})
    with pytest.raises(ConfigError, match="cannot save config key 'train.metrics': a set is not JSON"):
        qconfig.save(config, tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    "text, expected_message",
    [
        (None, "does not exist"),
        ('{"train": {"steps": 1', "is not valid JSON"),
        ("[1, 2]", "expected a JSON object of config keys, found a list"),
    ],
)
def test_read_saved_names_a_missing_or_malformed_file(tmp_path, text, expected_message):
    if text is not None:
        (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=expected_message) as error:
        qconfig.read_saved(tmp_path)
    assert str(tmp_path / "config.json") in str(error.value)
