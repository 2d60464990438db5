"""The runtime image for remote backends: a Dockerfile and requirements for ``python -m mlpipe.runtime``.

Every remote backend (Kubeflow, Vertex, SageMaker) runs each step as
``python -m mlpipe.runtime`` in a container image that holds mlpipe, the
libraries the steps import, and the user's code. :func:`write_image_files`
writes what builds that image; it never runs Docker. Backend-neutral: nothing
here knows about an orchestrator.

* The base image's Python is this interpreter's minor version, because step
  code that cannot be imported travels pickled and only loads on the Python
  that pickled it.
* Requirements are pinned to the versions installed here (what the pipeline
  was developed and cached against): mlpipe, the packages the steps' code
  reaches (from the code fingerprint), pyarrow when pandas outputs are
  stored as Parquet, and the project's own ``requirements.txt``.
* The user's modules are copied from the build context (the project
  directory) to ``/app``, which is on ``PYTHONPATH``, so steps travel by
  import path.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.errors import DefinitionError

if TYPE_CHECKING:
    from mlpipe.pipeline import Pipeline

__all__ = ["ImageFiles", "requirements_for", "write_image_files"]

# Libraries a materializer needs next to the one the step imports.
_COMPANIONS = {"pandas": ("pyarrow",)}
_IGNORE = (".git", ".mlpipe", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", "node_modules")


@dataclass(frozen=True)
class ImageFiles:
    """What :func:`write_image_files` wrote, and how to build it."""

    dockerfile: Path
    requirements: Path
    dockerignore: Path
    context: Path

    def build_command(self, tag: str) -> str:
        return f"docker build -f {self.dockerfile} -t {tag} {self.context}"


def _distributions(packages: set[str]) -> dict[str, str]:
    """Top-level import names → ``dist==version`` of what is installed here."""
    mapping = importlib.metadata.packages_distributions()
    out: dict[str, str] = {}
    for top in sorted(packages):
        for dist in mapping.get(top, [])[:1]:
            try:
                out[dist.lower()] = f"{dist}=={importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def requirements_for(pipeline: Pipeline, context: Path, extra: Path | None = None) -> str:
    """The text of ``requirements.txt`` for the pipeline's runtime image."""
    from mlpipe import __version__
    from mlpipe.code import resolve
    from mlpipe.fingerprint import fingerprint

    ir = pipeline.ir
    packages: set[str] = set()
    for spec in ir.steps:
        packages |= set(fingerprint(resolve(spec)).packages)
        # Types only named in annotations (pandas.DataFrame) and the materializers that store them.
        for text in [
            *(i.type for i in spec.inputs),
            *(o.type for o in spec.outputs),
            *(o.materializer for o in spec.outputs),
        ]:
            packages.update(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\.", text))
    packages.discard("mlpipe")
    for top in list(packages):
        packages.update(_COMPANIONS.get(top, ()))
    pins = _distributions(packages)
    lines = [
        f"# Runtime image requirements for pipeline {ir.name!r} (Python {sys.version_info.major}."
        f"{sys.version_info.minor}), written by `mlpipe image`.",
        f"mlpipe=={__version__}",
    ]
    if pins:
        lines.append("# Imported by the steps' code; pinned to the versions installed where this was generated:")
        lines.extend(pins[k] for k in sorted(pins))
    user = extra if extra is not None else (context / "requirements.txt")
    if user.is_file():
        lines.append(f"# From {user.name}:")
        lines.extend(line.rstrip() for line in user.read_text().splitlines() if line.strip())
    elif extra is not None:
        raise DefinitionError(f"requirements file {extra} does not exist")
    return "\n".join(lines) + "\n"


def _code_paths(pipeline: Pipeline, context: Path) -> list[tuple[str, str]]:
    """(source relative to the context, destination under /app) for the user's step modules."""
    copies: dict[str, str] = {}
    for spec in pipeline.ir.steps:
        module = sys.modules.get(spec.code.module)
        file = getattr(module, "__file__", None)
        if module is None or file is None:
            continue  # __main__ or a notebook: the code travels pickled in the store
        path = Path(file).resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue  # an installed distribution: in the requirements
        top = spec.code.module.split(".")[0]
        depth = spec.code.module.count(".")
        root = path.parent
        for _ in range(depth):
            root = root.parent
        source = root / top if depth or path.name == "__init__.py" else path
        try:
            rel = source.relative_to(context)
        except ValueError:
            raise DefinitionError(
                f"step {spec.name!r}: its module {spec.code.module} ({path}) is outside the build context "
                f"{context}; run `mlpipe image` from the project directory or pass --context",
                step=spec.name,
            ) from None
        copies[rel.as_posix()] = f"/app/{source.name}"
    return sorted(copies.items())


def write_image_files(
    pipeline: Pipeline,
    out_dir: str | os.PathLike[str],
    *,
    context: str | os.PathLike[str] | None = None,
    base_image: str | None = None,
    requirements: str | os.PathLike[str] | None = None,
) -> ImageFiles:
    """Write ``Dockerfile``, ``requirements.txt`` and ``Dockerfile.dockerignore`` into ``out_dir``.

    Args:
        pipeline: The pipeline whose steps the image must run.
        out_dir: Where to write the files (created if missing).
        context: The Docker build context, the project directory (default: the working directory).
        base_image: Defaults to ``python:<this minor version>-slim``.
        requirements: The project's requirements file (default: ``requirements.txt`` in the context, if any).

    Raises:
        DefinitionError: a step's module lies outside the context, or the requirements file is missing.
    """
    ctx = Path(context or os.getcwd()).resolve()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = base_image or f"python:{python}-slim"
    req_text = requirements_for(pipeline, ctx, Path(requirements).resolve() if requirements else None)
    req_path = out / "requirements.txt"
    req_path.write_text(req_text)
    try:
        req_rel = req_path.relative_to(ctx).as_posix()
    except ValueError:
        raise DefinitionError(f"the output directory {out} must be inside the build context {ctx}") from None
    copies = _code_paths(pipeline, ctx)
    lines = [
        f"# Runtime image for the mlpipe pipeline {pipeline.name!r}: every remote task runs",
        "#   python -m mlpipe.runtime --store URL --ir DIGEST --run-id ID --step NAME ...",
        f"# Build from the project directory: docker build -f {out.relative_to(ctx).as_posix()}/Dockerfile -t IMAGE .",
        f"# Python {python} matches the interpreter that compiles the pipeline (pickled step code needs it).",
        f"FROM {base}",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "WORKDIR /app",
        f"COPY {req_rel} /tmp/mlpipe-requirements.txt",
        "RUN pip install -r /tmp/mlpipe-requirements.txt",
    ]
    lines.extend(f"COPY {src} {dest}" for src, dest in copies)
    lines += [
        "ENV PYTHONPATH=/app",
        'CMD ["python", "-m", "mlpipe.runtime", "--help"]',
    ]
    dockerfile = out / "Dockerfile"
    dockerfile.write_text("\n".join(lines) + "\n")
    ignore = out / "Dockerfile.dockerignore"  # BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile
    ignore.write_text("\n".join(f"**/{p}" for p in _IGNORE) + "\n")
    return ImageFiles(dockerfile=dockerfile, requirements=req_path, dockerignore=ignore, context=ctx)
