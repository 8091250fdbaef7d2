"""`deepdetect-operator run` flags -> kopf settings, as a real API server will read them."""

from __future__ import annotations

import argparse

import pytest
from deepdetect_operator.runtime import add_arguments, config_from_args, make_settings, query_seconds


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv", [(), ("--watch-timeout", "120")])
def test_watch_timeout_reaches_kopf_as_an_integer(argv: tuple[str, ...]) -> None:
    """kopf sends `str(settings.watching.server_timeout)` as timeoutSeconds; the API server parses it with
    strconv.ParseInt, so "300.0" is a 400 on every watch (cases.json: watch-timeout-must-be-integer)."""
    settings = make_settings(config_from_args(_parse(*argv)))
    timeout = settings.watching.server_timeout
    assert isinstance(timeout, int)
    assert str(timeout).isdigit()
    assert settings.watching.client_timeout is not None and settings.watching.client_timeout > timeout


@pytest.mark.parametrize("value", ["300.0", "1.5", "0", "-5", "soon"])
def test_watch_timeout_flag_refuses_what_the_api_server_would(value: str) -> None:
    with pytest.raises(argparse.ArgumentError, match="seconds"):
        _parse("--watch-timeout", value)


def test_query_seconds_refuses_fractions() -> None:
    assert query_seconds(300) == 300 and isinstance(query_seconds(300.0), int)
    with pytest.raises(ValueError, match="whole number"):
        query_seconds(2.5)
