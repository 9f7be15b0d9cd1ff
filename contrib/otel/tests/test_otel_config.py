"""The ``[otel]`` table: its errors are one line and exit status 2 through
``kernel run`` (in-process with click's runner, and once as a real process),
and the providers it builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace.sampling import ParentBased
from otel_helpers import kernel_run

import kernel_otel.serve
from kernel.cli import main
from kernel.errors import ConfigError
from kernel_otel import OtelConfig, build_providers

BASE = '[kernel]\nstorage = "memory://"\n\n[otel]\n'


def config_file(tmp_path: Path, otel: str) -> Path:
    path = tmp_path / "kernel.toml"
    path.write_text(BASE + otel)
    return path


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('exporter = "console"\ncolour = "blue"\n', "at otel.colour: unknown key 'colour'"),
        ('exporter = "zipkin"\n', "at otel.exporter: expected one of 'otlp', 'console', 'none'"),
        ("sample_ratio = 1.5\n", "at otel.sample_ratio: expected a ratio from 0 to 1, got 1.5"),
        ('sample_ratio = "all"\n', "otel.sample_ratio"),
        ('endpoint = "collector:4318"\n', "at otel.endpoint: expected an http:// or https:// URL"),
        (
            'endpoint = "http://user:pw@collector:4318"\n',
            "at otel.endpoint: put credentials in headers, not in the URL",
        ),
        (
            'headers = { "bad header" = "x" }\n',
            "at otel.headers: 'bad header' is not an HTTP header",
        ),
        ("headers = { authorization = 7 }\n", "otel.headers"),
        ('service_name = ""\n', "otel.service_name"),
    ],
)
def test_a_bad_table_is_one_line_and_exit_2(tmp_path: Path, table: str, message: str) -> None:
    path = config_file(tmp_path, table)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(path) in lines[0]
    assert message in lines[0]


def test_otlp_without_its_exporter_installed_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed(name: str) -> None:
        raise ModuleNotFoundError(f"No module named 'opentelemetry.exporter.otlp.{name}'")

    monkeypatch.setattr(kernel_otel.serve, "_otlp_module", not_installed)
    monkeypatch.chdir(tmp_path)
    path = config_file(tmp_path, 'exporter = "otlp"\n')
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: config error in {path} at otel.exporter: exporter 'otlp' needs the OTLP"
        " exporter, which is not installed: pip install 'trio-kernel-otel[otlp]'"
        " (opentelemetry-exporter-otlp-proto-http)"
    ]


def test_as_a_user_sees_it(tmp_path: Path) -> None:
    """A real `kernel run` process: one line on stderr, no traceback."""
    path = config_file(tmp_path, 'exporter = "jaeger"\n')
    code, out, err = kernel_run(path)
    assert code == 2
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: config error in {path} at otel.exporter")
    assert "'jaeger'" in line


def test_headers_stay_out_of_the_repr() -> None:
    config = OtelConfig(headers={"authorization": "Bearer s3cret-value"})
    assert "s3cret" not in repr(config)


def test_providers_from_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    providers = build_providers(OtelConfig(exporter="none", sample_ratio=0.25))
    try:
        resource = providers.tracer_provider.resource
        assert resource.attributes[SERVICE_NAME] == "trio-kernel"
        sampler = providers.tracer_provider.sampler
        assert isinstance(sampler, ParentBased)
        assert "TraceIdRatioBased{0.25}" in sampler.get_description()
    finally:
        providers.shutdown()
    named = build_providers(OtelConfig(service_name="billing", exporter="none"))
    assert named.tracer_provider.resource.attributes[SERVICE_NAME] == "billing"
    named.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    from_env = build_providers(OtelConfig(exporter="none"))
    assert from_env.tracer_provider.resource.attributes[SERVICE_NAME] == "from-env"
    from_env.shutdown()


def test_the_otlp_error_names_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(kernel_otel.serve, "_otlp_module", not_installed)
    with pytest.raises(ConfigError, match=r"app\.toml at otel\.exporter: exporter 'otlp' needs"):
        build_providers(OtelConfig(), source="app.toml")
