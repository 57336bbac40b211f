"""The sync services' settings: flags, defaults, and values refused at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service_core.config import load
from sync_variant.config import GeneratorConfig, RequestorConfig


@pytest.mark.parametrize(
    ("module", "flags"),
    [
        ("sync_variant.requestor", ["--generator-urls", "--breaker", "--fail-max"]),
        ("sync_variant.generator", ["--requestor-url", "--poll-interval-s"]),
    ],
)
def test_each_service_describes_its_flags_in_help(
    module: str, flags: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    assert result.returncode == 0
    for flag in [*flags, "--call-timeout-s", "--reset-timeout-s", "--no-breaker"]:
        assert flag in result.stdout


def test_defaults_are_the_documented_ones() -> None:
    requestor = load(RequestorConfig, [], prog="requestor", description="", environ={})
    generator = load(GeneratorConfig, [], prog="generator", description="", environ={})

    for config in (requestor, generator):
        assert config.breaker is True
        assert config.call_timeout_s == 1.0
        assert config.fail_max == 5
        assert config.reset_timeout_s == 2.0
    assert generator.poll_interval_s == 0.5
    assert generator.poll_batch == 1000


def test_flags_and_environment_set_the_breaker_and_the_peers() -> None:
    requestor = load(
        RequestorConfig,
        ["--no-breaker", "--generator-urls", "http://127.0.0.1:1,http://127.0.0.1:2"],
        prog="requestor",
        description="",
        environ={"COUPLING_FAIL_MAX": "7"},
    )

    assert requestor.breaker is False
    assert requestor.generator_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert requestor.fail_max == 7


@pytest.mark.parametrize(
    ("kind", "argv", "complaint"),
    [
        (RequestorConfig, ["--generator-urls", ""], "at least one generator"),
        (RequestorConfig, ["--generator-urls", "127.0.0.1:1"], "base URL"),
        (RequestorConfig, ["--call-timeout-s", "0"], "call_timeout_s"),
        (RequestorConfig, ["--fail-max", "0"], "fail_max"),
        (GeneratorConfig, ["--requestor-url", "http://h:1/x"], "without a path"),
        (GeneratorConfig, ["--poll-batch", "10001"], "poll_batch"),
        (GeneratorConfig, ["--poll-interval-s", "-1"], "poll_interval_s"),
        (GeneratorConfig, ["--instance", "gen 1"], "instance"),
    ],
)
def test_out_of_range_settings_are_refused_with_a_reason(
    capsys: pytest.CaptureFixture[str],
    kind: type[RequestorConfig | GeneratorConfig],
    argv: list[str],
    complaint: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(kind, argv, prog="service", description="", environ={})

    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err
