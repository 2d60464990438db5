"""Developer tasks: `nox -s tests`, `lint`, `typecheck`, `docs`, `bench`, `demo`.

Every session builds its own virtualenv (with uv when it is installed) and
installs mlpipe plus every backend plugin found under backends/, so the one
test command runs every suite.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PLUGINS = sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("backends/*/pyproject.toml"))


def _has_test_extra(plugin: str) -> bool:
    import tomllib

    with open(Path(plugin, "pyproject.toml"), "rb") as f:
        return "test" in tomllib.load(f).get("project", {}).get("optional-dependencies", {})


def _install(session: nox.Session, extras: str = "dev") -> None:
    """mlpipe with ``extras`` and every plugin (with its own ``test`` extra when testing)."""
    args = ["-e", f".[{extras}]"]
    for plugin in PLUGINS:
        wanted = "test" in extras.split(",") and _has_test_extra(plugin)
        args += ["-e", f"{plugin}[test]" if wanted else plugin]
    session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    """Every test suite: core, backends, integrations (offline; local servers on 127.0.0.1)."""
    _install(session, "dev,test")
    session.run("pytest", *(session.posargs or ["-q", "-p", "no:cacheprovider"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "mlpipe", "backends")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.run("mypy", "mlpipe", *[f"{p}/src" for p in PLUGINS if Path(p, "src").is_dir()])


@nox.session
def docs(session: nox.Session) -> None:
    session.install("mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against the targets; `nox -s bench -- --quick` for a fast smoke run."""
    _install(session, "dev")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's first command: run the example pipeline locally, then again from the cache."""
    session.install("-e", ".[examples]")
    session.run("mlpipe", "run", "examples/training.py:training", "-p", "n_estimators=200")
    session.run("mlpipe", "run", "examples/training.py:training", "-p", "n_estimators=200")
