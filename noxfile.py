"""The sessions: tests, lint, bench, up and perf (`nox -s NAME`)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *extras: str) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against real nats-server, HTTP and SQLite."""
    _install(session, "bench", "test")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and mypy."""
    _install(session, "bench", "test", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark matrix; arguments go to `python -m bench run`."""
    _install(session, "bench")
    session.run("python", "-m", "bench", "run", *session.posargs)


@nox.session
def up(session: nox.Session) -> None:
    """Start one variant's stack with load and a live view, until Ctrl-C."""
    _install(session, "bench")
    session.run("python", "-m", "bench", "up", *session.posargs)


@nox.session
def perf(session: nox.Session) -> None:
    """Benchmarks of the harness itself (report time and memory on big runs)."""
    _install(session, "bench")
    session.run("python", "-m", "bench", "perf", *session.posargs)
