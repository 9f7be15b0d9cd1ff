"""Tests for kernel.config: TOML -> attrs classes, and the errors that name
the source, the key path and what was expected."""

from __future__ import annotations

import datetime
import enum
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import pytest
from cattrs.errors import StructureHandlerNotFoundError
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.config.durations import format_duration, parse_duration
from kernel.config.files import KernelConfig, KernelSettings, PluginEntry, load_config, parse_config
from kernel.config.structure import key_path, structure_config
from kernel.errors import ConfigError, KernelError
from kernel.serialization import converter

T = TypeVar("T")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


# -- plugin config classes, as plugins would write them ----------------------


@attrs.frozen
class SyncConfig:
    source: str
    interval: datetime.timedelta = datetime.timedelta(minutes=5)
    batch_size: int = 50


@attrs.frozen
class Rule:
    match: str
    days: int = attrs.field(validator=attrs.validators.ge(1))
    action: Literal["delete", "archive"] = "delete"


@attrs.frozen
class RetentionConfig:
    rules: list[Rule]
    every: datetime.timedelta = datetime.timedelta(hours=1)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Window:
    start: int
    end: int = attrs.field()

    @end.validator
    def _after_start(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value <= self.start:
            raise ValueError(f"end must be after start ({self.start}), got {value}")


@attrs.frozen
class Spanning:
    low: int
    high: int

    def __attrs_post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low must not exceed high")


@attrs.frozen
class Kinds:
    color: Color = Color.RED
    priority: Priority = Priority.LOW
    where: Path | None = None
    ratio: float = 1.0
    tags: list[str] = attrs.Factory(list)
    pair: tuple[int, str] = (0, "")
    either: int | str = 0
    window: Window | None = None
    targets: dict[str, Rule] = attrs.Factory(dict)
    names: frozenset[str] = frozenset()
    when: datetime.datetime | None = None
    flag: bool = False


def problem(error: ConfigError) -> tuple[str, str]:
    return error.path, error.reason


def config_error(text: str, *, source: str = "kernel.toml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=source)
    return caught.value


def outcome(function: Callable[..., T], *args: Any, **kwargs: Any) -> T | ConfigError:
    """What ``function`` returns, or the `ConfigError` it raises (anything
    else it raises fails the test)."""
    try:
        return function(*args, **kwargs)
    except ConfigError as error:
        return error


def structure_error(data: Any, cls: type, *, prefix: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        structure_config(data, cls, source="kernel.toml", prefix=prefix)
    return caught.value


# -- the kernel's own schema ------------------------------------------------------


def test_an_empty_document_is_all_defaults() -> None:
    config = parse_config("", source="empty.toml")
    assert config == KernelConfig(kernel=KernelSettings(), plugins={}, source="empty.toml")
    assert config.kernel.storage == "sqlite:///kernel.db"
    assert config.kernel.bus == "local://"
    assert config.kernel.notifier == "log://"
    assert config.kernel.shutdown_grace == datetime.timedelta(seconds=10)
    assert config.kernel.health_interval == datetime.timedelta(seconds=30)
    assert config.kernel.status_socket is None
    assert config.kernel.log_level == "info"


def test_every_kernel_setting_is_read() -> None:
    config = parse_config(
        """
        [kernel]
        storage = "sqlite:///state.db"
        bus = "redis://localhost/0"
        notifier = "webhook+https://hooks.example.com/x"
        shutdown_grace = "1m30s"
        health_interval = 5
        status_socket = "run/kernel.sock"
        log_level = "debug"
        """,
        source="kernel.toml",
    )
    assert config.kernel == KernelSettings(
        storage="sqlite:///state.db",
        bus="redis://localhost/0",
        notifier="webhook+https://hooks.example.com/x",
        shutdown_grace=datetime.timedelta(seconds=90),
        health_interval=datetime.timedelta(seconds=5),
        status_socket=Path("run/kernel.sock"),
        log_level="debug",
    )


def test_plugins_keep_file_order_and_raw_config() -> None:
    config = parse_config(
        """
        [plugins.zeta]
        use = "zeta"
        [plugins.alpha]
        use = "pkg.mod:Alpha"
        enabled = false
        [plugins.alpha.config]
        interval = "1m"
        nested = { a = [1, 2] }
        [plugins."m.2"]
        use = "m"
        """,
        source="kernel.toml",
    )
    assert list(config.plugins) == ["zeta", "alpha", "m.2"]
    assert config.plugins["zeta"] == PluginEntry(use="zeta")
    assert config.plugins["alpha"] == PluginEntry(
        use="pkg.mod:Alpha", enabled=False, config={"interval": "1m", "nested": {"a": [1, 2]}}
    )


def _docs_example() -> str:
    match = re.search(r"## A full example\s+```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert match is not None, "docs/configuration.md lost its full example"
    return match.group(1)


def test_the_documented_example_parses_and_its_plugin_configs_structure() -> None:
    config = parse_config(_docs_example(), source="kernel.toml")
    assert config.kernel.storage == "sqlite:///state.db"
    assert config.kernel.status_socket == Path("kernel.sock")
    assert list(config.plugins) == ["sync", "retention"]
    sync = structure_config(
        config.plugins["sync"].config,
        SyncConfig,
        source="kernel.toml",
        prefix="plugins.sync.config",
    )
    assert sync == SyncConfig(
        source="https://example.com/feed.json",
        interval=datetime.timedelta(minutes=1),
        batch_size=100,
    )
    retention = structure_config(
        config.plugins["retention"].config, RetentionConfig, source="kernel.toml"
    )
    assert retention.rules == [
        Rule(match="jobs/*", days=30),
        Rule(match="logs/*", days=7, action="archive"),
    ]


def test_load_config_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "kernel.toml"
    path.write_bytes(b'\xef\xbb\xbf[kernel]\nlog_level = "error"\n')  # with a byte-order mark
    config = load_config(path)
    assert config.kernel.log_level == "error"
    assert config.source == str(path)
    assert load_config(str(path)) == config


# -- file and TOML errors ---------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"config error in {path}: no such file"
    assert (caught.value.source, caught.value.path) == (str(path), "")
    assert caught.value.problems == (caught.value,)


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a directory, not a file$"):
        load_config(tmp_path)


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kernel.toml"
    path.write_text("")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"config error in {path}: permission denied"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "kernel.toml"
    path.write_bytes(b'[kernel]\nlog_level = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (
        str(caught.value)
        == f"config error in {path}: not UTF-8 text (invalid byte at line 2, column 14)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '[kernel]\nstorage = "memory://\n',
            "invalid TOML at line 2, column 21: illegal character '\\n'",
        ),
        ("[kernel]\nlog_level = verbose\n", "invalid TOML at line 2, column 13: invalid value"),
        (
            "[kernel]\n[kernel]\n",
            "invalid TOML at line 2, column 8: cannot declare ('kernel',) twice",
        ),
        ("a = [1", "invalid TOML at end of document: unclosed array"),
    ],
)
def test_invalid_toml_names_line_and_column(text: str, reason: str) -> None:
    error = config_error(text)
    assert error.source == "kernel.toml"
    assert error.path == ""
    assert error.reason == reason
    assert str(error) == f"config error in kernel.toml: {reason}"


def test_absurd_toml_is_still_a_config_error() -> None:
    assert "too many digits" in config_error("x = 1" + "0" * 5000).reason
    assert config_error("x = " + "[" * 50_000).reason == "invalid TOML: nested too deeply"


# -- value errors in the kernel's schema ----------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[kernel]\nstorage = 5",
            "config error in kernel.toml at kernel.storage: expected a string, got 5",
        ),
        (
            '[kernel]\nbus = "local"',
            "config error in kernel.toml at kernel.bus: expected a URL like 'scheme://...' "
            "(e.g. 'memory://', 'sqlite:///state.db'), got 'local'",
        ),
        (
            '[kernel]\nnotifier = " log://"',
            "config error in kernel.toml at kernel.notifier: expected a URL like 'scheme://...' "
            "(e.g. 'log://', 'apprise+ntfy://topic'), got ' log://'",
        ),
        (
            '[kernel]\nshutdown_grace = "0s"',
            "config error in kernel.toml at kernel.shutdown_grace: "
            "expected a positive duration, got 0s",
        ),
        (
            '[kernel]\nhealth_interval = "soon"',
            "config error in kernel.toml at kernel.health_interval: expected a duration like "
            "'90s', '5m', '1h30m', '2d' or '250ms', got 'soon'",
        ),
        (
            "[kernel]\nhealth_interval = -1",
            "config error in kernel.toml at kernel.health_interval: "
            "expected a number of seconds that is not negative, got -1",
        ),
        (
            '[kernel]\nlog_level = "verbose"',
            "config error in kernel.toml at kernel.log_level: "
            "expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        ),
        (
            '[kernel]\nstatus_socket = ""',
            "config error in kernel.toml at kernel.status_socket: "
            "expected a non-empty path, got ''",
        ),
        ("kernel = 1", "config error in kernel.toml at kernel: expected a table, got 1"),
        ("plugins = []", "config error in kernel.toml at plugins: expected a table, got []"),
        (
            "[plugins]\nsync = true",
            "config error in kernel.toml at plugins.sync: expected a table, got true",
        ),
        (
            "[plugins.sync]\nenabled = false",
            "config error in kernel.toml at plugins.sync: missing required key 'use'",
        ),
        (
            '[plugins.sync]\nuse = "a:b:c"',
            "config error in kernel.toml at plugins.sync.use: "
            "expected an entry-point name or 'package.module:attribute', got 'a:b:c'",
        ),
        (
            '[plugins.sync]\nuse = "x"\nenabled = "yes"',
            "config error in kernel.toml at plugins.sync.enabled: "
            "expected a boolean (true or false), got 'yes'",
        ),
        (
            '[plugins.sync]\nuse = "x"\nconfig = "interval=1"',
            "config error in kernel.toml at plugins.sync.config: "
            "expected a table, got 'interval=1'",
        ),
    ],
)
def test_wrong_values_name_the_key_and_the_expectation(text: str, message: str) -> None:
    error = config_error(text)
    assert str(error) == message
    assert len(error.problems) == 1


def test_a_type_error_carries_what_was_expected() -> None:
    error = config_error("[kernel]\nstorage = 5")
    assert (error.source, error.path, error.expected) == (
        "kernel.toml",
        "kernel.storage",
        "a string",
    )
    assert error.reason == "expected a string, got 5"
    assert isinstance(error, KernelError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("name", ["sync", "a", "0", "sync-2", "eu_west.sync", "x" * 63])
def test_valid_plugin_names(name: str) -> None:
    config = parse_config(f'[plugins."{name}"]\nuse = "x"', source="kernel.toml")
    assert list(config.plugins) == [name]


@pytest.mark.parametrize("name", ["Sync", "-sync", "_sync", "sy nc", "", "x" * 64, "sync!"])
def test_invalid_plugin_names(name: str) -> None:
    error = config_error(f'[plugins."{name}"]\nuse = "x"')
    assert error.reason == (
        f"invalid plugin name {name!r}: expected 1-63 characters of a-z, 0-9, '_', '.', '-' "
        "starting with a letter or digit"
    )
    assert error.path.startswith("plugins.")


def test_a_kernel_config_built_in_python_checks_plugin_names_too() -> None:
    with pytest.raises(ValueError, match="invalid plugin name 'Sync'"):
        KernelConfig(plugins={"Sync": PluginEntry(use="x")})


def test_a_quoted_plugin_name_is_quoted_in_the_path() -> None:
    error = config_error('[plugins."eu.sync"]\nuse = "x"\nenabled = 1')
    assert error.path == 'plugins."eu.sync".enabled'


def test_key_paths_are_written_as_toml_writes_them() -> None:
    assert key_path("plugins", "sync", "config") == "plugins.sync.config"
    assert key_path("plugins", "eu.sync", "config") == 'plugins."eu.sync".config'
    assert key_path("rules", 2, "days") == "rules[2].days"
    assert key_path("a b", 'q"', "") == '"a b"."q\\"".""'


def test_unknown_keys_suggest_the_closest_known_key() -> None:
    error = config_error('[kernel]\nhealt_interval = "5s"')
    assert str(error) == (
        "config error in kernel.toml at kernel.healt_interval: "
        "unknown key 'healt_interval'; did you mean 'health_interval'?"
    )
    assert config_error("[kernal]").reason == "unknown key 'kernal'; did you mean 'kernel'?"
    assert config_error('[plugins.sync]\nuse = "x"\nenabeld = true').problems[0].path == (
        "plugins.sync.enabeld"
    )


def test_unknown_keys_far_from_any_list_the_known_keys() -> None:
    error = config_error('[plugins.sync]\nuse = "x"\nzzz = 1')
    assert error.reason == "unknown key 'zzz'; known keys: 'use', 'enabled', 'config'"


def test_several_problems_are_reported_at_once() -> None:
    error = config_error(
        """
        [kernel]
        storage = 1
        log_level = "loud"
        [plugins.Bad]
        use = "x"
        """
    )
    assert [problem(p) for p in error.problems] == [
        ("kernel.storage", "expected a string, got 1"),
        ("kernel.log_level", "expected one of 'debug', 'info', 'warning', 'error', got 'loud'"),
        (
            "plugins.Bad",
            "invalid plugin name 'Bad': expected 1-63 characters of a-z, 0-9, '_', '.', '-' "
            "starting with a letter or digit",
        ),
    ]
    assert error.problems[0] is not error
    assert (error.path, error.reason) == problem(error.problems[0])
    assert str(error) == (
        "config error in kernel.toml at kernel.storage: expected a string, got 1 "
        "(and 2 more problems)"
    )
    two = config_error("[kernel]\nstorage = 1\nbus = 2")
    assert str(two).endswith("(and 1 more problem)")


def test_a_message_is_one_line_even_when_a_validator_speaks_in_lines() -> None:
    @attrs.frozen
    class Chatty:
        value: int = attrs.field(validator=attrs.validators.gt(0))

        @value.validator
        def _also(self, attribute: attrs.Attribute[int], value: int) -> None:
            raise ValueError("first line\nsecond line")

    error = structure_error({"value": 1}, Chatty)
    assert str(error) == "config error in kernel.toml at value: first line second line"


# -- structure_config: plugin config classes -------------------------------------


def test_the_brief_example_of_a_plugin_config_error() -> None:
    config = parse_config(
        '[plugins.sync]\nuse = "x"\n[plugins.sync.config]\nsource = "s"\nbatch_size = "ten"',
        source="kernel.toml",
    )
    with pytest.raises(ConfigError) as caught:
        structure_config(
            config.plugins["sync"].config,
            SyncConfig,
            source=config.source,
            prefix="plugins.sync.config",
        )
    assert str(caught.value) == (
        "config error in kernel.toml at plugins.sync.config.batch_size: "
        "expected an integer, got 'ten'"
    )
    assert caught.value.expected == "an integer"


def test_a_source_that_is_not_a_file() -> None:
    with pytest.raises(ConfigError) as caught:
        structure_config({"source": "s", "intervl": 3}, SyncConfig, source="plugin 'sync'")
    assert str(caught.value) == (
        "config error in plugin 'sync' at intervl: unknown key 'intervl'; did you mean 'interval'?"
    )


def test_a_missing_required_key_is_reported_at_its_table() -> None:
    assert str(structure_error({}, SyncConfig)) == (
        "config error in kernel.toml: missing required key 'source'"
    )
    error = structure_error({"rules": [{"match": "a", "days": 1}, {"days": 2}]}, RetentionConfig)
    assert problem(error) == ("rules[1]", "missing required key 'match'")


def test_nested_lists_of_attrs_classes_name_the_index() -> None:
    rules = [
        {"match": "a", "days": 1},
        {"match": "b", "days": 2, "action": "archive"},
        {"match": "c", "days": 0},
        {"match": "d", "days": "many", "acton": "delete"},
    ]
    error = structure_error({"rules": rules}, RetentionConfig, prefix="retention")
    assert [problem(p) for p in error.problems] == [
        ("retention.rules[2].days", "'days' must be >= 1: 0"),
        ("retention.rules[3].days", "expected an integer, got 'many'"),
        ("retention.rules[3].acton", "unknown key 'acton'; did you mean 'action'?"),
    ]
    assert str(error) == (
        "config error in kernel.toml at retention.rules[2].days: 'days' must be >= 1: 0 "
        "(and 2 more problems)"
    )


def test_a_validator_is_pinned_on_its_key_even_when_it_reads_another_field() -> None:
    assert problem(structure_error({"start": 5, "end": 3}, Window, prefix="w")) == (
        "w.end",
        "end must be after start (5), got 3",
    )
    assert structure_config({"start": 1, "end": 3}, Window, source="s") == Window(1, 3)


def test_a_post_init_check_is_reported_at_the_table() -> None:
    error = structure_error({"low": 5, "high": 3}, Spanning, prefix="plugins.x.config")
    assert problem(error) == ("plugins.x.config", "low must not exceed high")


def test_an_attrs_converter_that_rejects_a_value_is_pinned_on_its_key() -> None:
    def port_number(value: int) -> int:
        if not 0 < value < 65536:
            raise ValueError(f"not a port number: {value}")
        return value

    @attrs.frozen
    class Listen:
        host: str
        port: int = attrs.field(converter=port_number)

    assert problem(structure_error({"host": "h", "port": 70000}, Listen)) == (
        "port",
        "not a port number: 70000",
    )


def test_a_validator_bug_is_not_disguised_as_a_config_error() -> None:
    @attrs.frozen
    class Buggy:
        value: int = attrs.field()

        @value.validator
        def _check(self, attribute: attrs.Attribute[int], value: int) -> None:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug") as caught:
        structure_config({"value": 1}, Buggy, source="kernel.toml", prefix="p")
    assert any("kernel.toml at p" in note for note in caught.value.__notes__)


def test_a_class_the_converter_cannot_handle_is_a_programming_error() -> None:
    @attrs.frozen
    class Odd:
        value: complex

    with pytest.raises(StructureHandlerNotFoundError):
        structure_config({"value": 1}, Odd, source="kernel.toml")


def test_the_supported_types() -> None:
    kinds = structure_config(
        {
            "color": "green",
            "priority": 2,
            "where": "data/out",
            "ratio": 2,
            "tags": ["a", "b"],
            "pair": [1, "x"],
            "either": "text",
            "window": {"start": 1, "end": 2},
            "targets": {"jobs": {"match": "jobs/*", "days": 3}},
            "names": ["a", "a", "b"],
            "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "flag": True,
        },
        Kinds,
        source="kernel.toml",
    )
    assert kinds == Kinds(
        color=Color.GREEN,
        priority=Priority.HIGH,
        where=Path("data/out"),
        ratio=2.0,
        tags=["a", "b"],
        pair=(1, "x"),
        either="text",
        window=Window(1, 2),
        targets={"jobs": Rule(match="jobs/*", days=3)},
        names=frozenset({"a", "b"}),
        when=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        flag=True,
    )
    assert type(kinds.ratio) is float
    assert structure_config({"either": 3}, Kinds, source="s").either == 3


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"color": "blue"}, "color", "expected one of 'red', 'green', got 'blue'"),
        ({"color": "RED"}, "color", "expected one of 'red', 'green', got 'RED'"),
        ({"priority": "HIGH"}, "priority", "expected one of 1, 2, got 'HIGH'"),
        ({"priority": True}, "priority", "expected one of 1, 2, got true"),
        ({"where": 3}, "where", "expected a path, got 3"),
        ({"ratio": "1.5"}, "ratio", "expected a number, got '1.5'"),
        ({"ratio": False}, "ratio", "expected a number, got false"),
        ({"tags": "ab"}, "tags", "expected an array, got 'ab'"),
        ({"tags": ["a", 1]}, "tags[1]", "expected a string, got 1"),
        ({"pair": [1]}, "pair", "expected an array of 2 items, got [1]"),
        ({"pair": [1, 2]}, "pair[1]", "expected a string, got 2"),
        ({"either": 1.5}, "either", "expected an integer or a string, got 1.5"),
        ({"either": True}, "either", "expected an integer or a string, got true"),
        ({"window": {"start": "1", "end": 2}}, "window.start", "expected an integer, got '1'"),
        ({"window": 7}, "window", "expected a table, got 7"),
        ({"targets": {"a b": {"match": "m", "days": 0}}}, 'targets."a b".days', None),
        ({"targets": []}, "targets", "expected a table, got []"),
        ({"when": "yesterday"}, "when", "expected a date-time like 1979-05-27T07:32:00Z, got "),
        ({"flag": 1}, "flag", "expected a boolean (true or false), got 1"),
    ],
)
def test_wrong_types_in_plugin_configs(data: dict[str, Any], path: str, reason: str | None) -> None:
    error = structure_error(data, Kinds, prefix="plugins.k.config")
    assert len(error.problems) == 1
    assert error.path == f"plugins.k.config.{path}"
    if reason is not None:
        assert error.reason.startswith(reason)


def test_integers_are_never_coerced() -> None:
    for bad in ["10", 10.0, True, [10]]:
        error = structure_error({"source": "s", "batch_size": bad}, SyncConfig)
        assert error.expected == "an integer"
    for bad in [5, True, ["s"]]:
        assert structure_error({"source": bad}, SyncConfig).expected == "a string"


def test_the_top_level_must_be_a_table() -> None:
    assert str(structure_error([1, 2], SyncConfig, prefix="plugins.s.config")) == (
        "config error in kernel.toml at plugins.s.config: expected a table, got [1, 2]"
    )


def test_long_values_are_cut_short_in_messages() -> None:
    error = structure_error({"source": "s", "batch_size": "x" * 500}, SyncConfig)
    assert len(error.reason) < 100
    assert error.reason.endswith("...")


# -- durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", datetime.timedelta(seconds=90)),
        ("5m", datetime.timedelta(minutes=5)),
        ("1h30m", datetime.timedelta(hours=1, minutes=30)),
        ("2d", datetime.timedelta(days=2)),
        ("1d 12h", datetime.timedelta(days=1, hours=12)),
        ("250ms", datetime.timedelta(milliseconds=250)),
        ("1m500ms", datetime.timedelta(minutes=1, milliseconds=500)),
        ("1.5h", datetime.timedelta(minutes=90)),
        ("0.000001s", datetime.timedelta(microseconds=1)),
        ("0s", datetime.timedelta(0)),
        (90, datetime.timedelta(seconds=90)),
        (0.25, datetime.timedelta(milliseconds=250)),
    ],
)
def test_durations(text: str | float, expected: datetime.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad",
    ["", " ", "5", "5x", "30m1h", "1h1h", "-5s", "+5s", "1.s", ".5s", "5 s", "5 min", "1e3s", "5S"],
)
def test_malformed_durations_are_config_errors(bad: str) -> None:
    error = structure_error({"source": "s", "interval": bad}, SyncConfig, prefix="plugins.s.config")
    assert error.path == "plugins.s.config.interval"
    assert error.reason == (
        f"expected a duration like '90s', '5m', '1h30m', '2d' or '250ms', got {bad!r}"
    )


@pytest.mark.parametrize("bad", [-1, math.inf, math.nan, True, [1], {"s": 1}])
def test_durations_that_are_not_non_negative_numbers_or_strings(bad: object) -> None:
    error = structure_error({"source": "s", "interval": bad}, SyncConfig)
    assert error.path == "interval"
    assert error.reason.startswith("expected a")


def test_a_duration_past_timedelta_range_is_a_config_error() -> None:
    for bad in ["9999999999d", 1e300]:
        error = structure_error({"source": "s", "interval": bad}, SyncConfig)
        assert error.reason.startswith("expected a duration of at most 999999999 days")


components = st.integers(min_value=0, max_value=100_000)


@settings(max_examples=200)
@given(
    days=components,
    hours=components,
    minutes=components,
    seconds=components,
    shown=st.lists(st.booleans(), min_size=4, max_size=4).filter(any),
    space=st.sampled_from(["", " "]),
)
def test_written_components_parse_back_to_their_sum(
    days: int, hours: int, minutes: int, seconds: int, shown: list[bool], space: str
) -> None:
    values = [days, hours, minutes, seconds]
    text = space.join(
        f"{value}{unit}" for value, unit, keep in zip(values, "dhms", shown, strict=True) if keep
    )
    expected = datetime.timedelta(
        **{
            name: value if keep else 0
            for name, value, keep in zip(
                ["days", "hours", "minutes", "seconds"], values, shown, strict=True
            )
        }
    )
    assert parse_duration(text) == expected


@settings(max_examples=200)
@given(st.timedeltas(min_value=datetime.timedelta(0)))
def test_format_duration_round_trips(value: datetime.timedelta) -> None:
    text = format_duration(value)
    assert re.fullmatch(r"(\d+d)?(\d+h)?(\d+m)?(\d+(\.\d+)?s)?", text)
    assert parse_duration(text) == value


def test_format_duration_examples() -> None:
    assert format_duration(datetime.timedelta(0)) == "0s"
    assert format_duration(datetime.timedelta(hours=1, minutes=30)) == "1h30m"
    assert format_duration(datetime.timedelta(days=1, seconds=4, microseconds=500_000)) == (
        "1d4.5s"
    )
    with pytest.raises(ValueError, match="negative"):
        format_duration(datetime.timedelta(seconds=-1))


@settings(max_examples=200)
@given(st.text(max_size=20))
def test_any_duration_text_parses_or_is_a_config_error(text: str) -> None:
    result = outcome(structure_config, {"source": "s", "interval": text}, SyncConfig, source="k")
    if isinstance(result, ConfigError):
        assert result.path == "interval"
    else:
        assert result.interval >= datetime.timedelta(0)


# -- round trips through the converter --------------------------------------------


@settings(max_examples=100)
@given(
    st.builds(
        KernelSettings,
        storage=st.sampled_from(["memory://", "sqlite:///s.db", "postgresql://u@db/jobs"]),
        shutdown_grace=st.timedeltas(min_value=datetime.timedelta(microseconds=1)),
        health_interval=st.timedeltas(min_value=datetime.timedelta(microseconds=1)),
        status_socket=st.none() | st.sampled_from([Path("k.sock"), Path("/run/k/k.sock")]),
        log_level=st.sampled_from(["debug", "info", "warning", "error"]),
    )
)
def test_kernel_settings_survive_unstructure_and_structure(settings_: KernelSettings) -> None:
    data = converter.unstructure(settings_)
    if data["status_socket"] is None:
        del data["status_socket"]  # TOML has no null: an absent key is None
    assert structure_config(data, KernelSettings, source="s") == settings_


def test_a_plugin_config_survives_unstructure_and_structure() -> None:
    retention = RetentionConfig(
        rules=[Rule("a", 1), Rule("b", 30, "archive")], every=datetime.timedelta(hours=6)
    )
    data = converter.unstructure(retention)
    assert data["every"] == "6h"
    assert structure_config(data, RetentionConfig, source="s") == retention


# -- fuzz: nothing but ConfigError ------------------------------------------------


def toml_value(value: object) -> str:
    """A tiny TOML writer: scalars, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string for these
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: dict[str, object]) -> str:
    return "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in document.items())


safe_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12
)
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | safe_text
    | st.sampled_from(["memory://", "1h30m", "0s", "-1s", "info", "x:y", "sqlite:///s.db"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
    max_leaves=8,
)
kernel_keys = st.sampled_from(
    [
        "storage",
        "bus",
        "notifier",
        "shutdown_grace",
        "health_interval",
        "status_socket",
        "log_level",
        "stroage",
    ]
)
plugin_tables = st.dictionaries(
    st.sampled_from(["use", "enabled", "config", "confg"]) | safe_text, values, max_size=4
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "kernel": st.dictionaries(kernel_keys, values, max_size=5) | values,
        "plugins": st.dictionaries(
            st.sampled_from(["sync", "Sync", "a.b", "", "x-1"]) | safe_text,
            plugin_tables | values,
            max_size=3,
        )
        | values,
        "extra": values,
    },
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_documents_parse_or_raise_config_error(document: dict[str, object]) -> None:
    text = toml_document(document)
    result = outcome(parse_config, text, source="fuzz.toml")
    if isinstance(result, ConfigError):
        assert "\n" not in str(result)
        assert str(result).startswith("config error in fuzz.toml")
        assert result.problems[0].path == result.path
        assert all(p.source == "fuzz.toml" for p in result.problems)
    else:
        assert list(result.plugins) == list(document.get("plugins", {}))  # type: ignore[call-overload]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_parses_or_raises_config_error(text: str) -> None:
    result = outcome(parse_config, text, source="fuzz.toml")
    if isinstance(result, ConfigError):
        assert "\n" not in str(result)
    else:
        assert isinstance(result, KernelConfig)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["rules", "every", "rulez"]) | safe_text, values))
def test_random_plugin_configs_structure_or_raise_config_error(data: dict[str, object]) -> None:
    result = outcome(structure_config, data, RetentionConfig, source="k", prefix="plugins.r.config")
    if isinstance(result, ConfigError):
        assert all(p.path.startswith("plugins.r.config") for p in result.problems)
    else:
        assert all(rule.days >= 1 for rule in result.rules)
