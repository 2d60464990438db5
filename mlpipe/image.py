"""The runtime image for remote backends: a Dockerfile, requirements and wheels for ``python -m mlpipe.runtime``.

Every remote backend (Kubeflow, Vertex, SageMaker) runs each step as
``python -m mlpipe.runtime`` in a container image that holds mlpipe, the
libraries the steps import, and the user's code. :func:`write_image_files`
writes what builds that image; it never runs Docker. Backend-neutral: nothing
here knows about an orchestrator.

* mlpipe and the profile's backend plugin are installed from wheels built from
  the source checkout they are installed from here (``wheels/`` in the output
  directory), never by name from the package index: ``mlpipe`` there is an
  unrelated project.
* The base image's Python is this interpreter's minor version, because step
  code that cannot be imported travels pickled and only loads on the Python
  that pickled it; the Dockerfile checks it, so a ``--base`` of another
  version fails the build instead of the task.
* Requirements are pinned to the versions installed here (what the pipeline
  was developed and cached against): the packages the steps' code reaches
  (from the code fingerprint), pyarrow when pandas outputs are stored as
  Parquet, the filesystem package of the store's scheme (s3fs, gcsfs), and the
  project's own ``requirements.txt``.
* The user's modules are copied from the build context (the project
  directory) to ``/app``, which is on ``PYTHONPATH``, so steps travel by
  import path.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.errors import DefinitionError

if TYPE_CHECKING:
    from mlpipe.pipeline import Pipeline

__all__ = ["ImageFiles", "requirements_for", "source_tree", "write_image_files"]

# Libraries a materializer needs next to the one the step imports.
_COMPANIONS = {"pandas": ("pyarrow",)}
# The fsspec implementation a store URL's scheme needs (import name, distribution).
_FILESYSTEMS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_IGNORE = (".git", ".mlpipe", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", "node_modules")
_BUILD_DIR = "/tmp/mlpipe-build"


@dataclass(frozen=True)
class ImageFiles:
    """What :func:`write_image_files` wrote, and how to build it."""

    dockerfile: Path
    requirements: Path
    dockerignore: Path
    context: Path
    wheels: tuple[Path, ...] = ()

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


def _pin(dist: str) -> str:
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def source_tree(dist: str) -> Path:
    """The source checkout the installed distribution ``dist`` was installed from (``pip install [-e] DIR``).

    Raises:
        DefinitionError: ``dist`` is not installed, or not from a local directory (a wheel from an index
            cannot be rebuilt, and ``mlpipe`` on the public index is another project).
    """
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise DefinitionError(f"{dist} is not installed here, so its wheel cannot be built for the image") from None
    text = found.read_text("direct_url.json")
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    url = str(info.get("url", ""))
    if url.startswith("file://") and "dir_info" in info:
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if (path / "pyproject.toml").is_file():
            return path
    raise DefinitionError(
        f"{dist} {found.version} is not installed from a source checkout, so `mlpipe image` cannot build its "
        f"wheel; install it from the checkout (pip install -e /path/to/{dist}) and run `mlpipe image` again"
    )


def _build_wheels(sources: list[Path], dest: Path) -> list[Path]:
    """Build one wheel per source tree into ``dest`` (uv when installed, else pip), no dependencies."""
    uv = shutil.which("uv")
    built: list[Path] = []
    for src in sources:
        before = set(dest.glob("*.whl"))
        if uv:
            cmd = [uv, "build", "--wheel", "--out-dir", str(dest), str(src)]
        else:
            cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        new = sorted(set(dest.glob("*.whl")) - before)
        if proc.returncode != 0 or len(new) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DefinitionError(
                f"building the wheel of {src} failed ({' '.join(cmd[:3])} exited {proc.returncode}): "
                + " / ".join(tail)
            )
        built.append(new[0])
    return built


def _plugin_distribution(backend: str | None) -> str | None:
    """The distribution that provides the backend ``backend`` (None for the built-in ones)."""
    if backend is None:
        return None
    from mlpipe.plugins import BACKENDS

    eps = BACKENDS.entry_points().get(backend, [])
    for ep in eps:
        if ep.dist is not None:
            return str(ep.dist.name)
    return None


def requirements_for(
    pipeline: Pipeline,
    context: Path,
    extra: Path | None = None,
    *,
    wheels: tuple[str, ...] = (),
    store: str | None = None,
) -> str:
    """The text of ``requirements.txt`` for the pipeline's runtime image.

    Args:
        pipeline: The pipeline whose steps the image runs.
        context: The build context (its ``requirements.txt`` is added unless ``extra`` names another file).
        extra: The project's requirements file.
        wheels: Requirement lines for the wheels built from the checkout (``./wheels/NAME.whl``).
        store: The store URL the tasks use: its scheme adds the filesystem package (s3fs, gcsfs).
    """
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
    packages = {p for p in packages if p != "mlpipe" and not p.startswith("mlpipe_")}
    for top in list(packages):
        packages.update(_COMPANIONS.get(top, ()))
    pins = _distributions(packages)
    lines = [
        f"# Runtime image requirements for pipeline {ir.name!r} (Python {sys.version_info.major}."
        f"{sys.version_info.minor}), written by `mlpipe image`.",
        "# mlpipe and its plugins come from wheels built from the checkout (the index's `mlpipe` is another "
        "project); install from this directory: pip install -r requirements.txt",
        *wheels,
    ]
    scheme = store.split("://", 1)[0] if store and "://" in store else None
    fs = _FILESYSTEMS.get(scheme or "")
    if fs is not None:
        lines.append(f"# The filesystem of the store ({scheme}://):")
        lines.append(_pin(fs))
        pins.pop(fs, None)
    if pins:
        lines.append("# Imported by the steps' code; pinned to the versions installed where this was generated:")
        lines.extend(pins[k] for k in sorted(pins))
    user = extra if extra is not None else (context / "requirements.txt")
    if user.is_file():
        lines.append(f"# From {user.name}:")
        lines.extend(line.rstrip() for line in user.read_text().splitlines() if line.strip())
    elif extra is not None:
        raise DefinitionError(f"requirements file {extra} does not exist; pass an existing file to --requirements")
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


def _check_output(out: Path, ctx: Path) -> None:
    """Refuse an output directory that cannot hold the files, before anything is written."""
    try:
        out.relative_to(ctx)
    except ValueError:
        raise DefinitionError(
            f"the output directory {out} must be inside the build context {ctx} (Docker copies only from the "
            "context); pass -o DIR under the project directory or --context"
        ) from None
    if out == ctx:
        raise DefinitionError(f"-o {out} is the build context itself; pass a subdirectory such as -o image")
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise DefinitionError(f"-o {out}: {parent} exists and is not a directory; pass another -o")
            if not os.access(parent, os.W_OK):
                raise DefinitionError(f"-o {out}: {parent} is not writable; pass another -o")
            break


def write_image_files(
    pipeline: Pipeline,
    out_dir: str | os.PathLike[str],
    *,
    context: str | os.PathLike[str] | None = None,
    base_image: str | None = None,
    requirements: str | os.PathLike[str] | None = None,
    store: str | None = None,
    backend: str | None = None,
) -> ImageFiles:
    """Write ``Dockerfile``, ``requirements.txt``, ``Dockerfile.dockerignore`` and ``wheels/`` into ``out_dir``.

    Everything is checked, and the wheels built, before the first file is
    written: a refusal leaves ``out_dir`` as it was.

    Args:
        pipeline: The pipeline whose steps the image must run.
        out_dir: Where to write the files (created if missing), inside the context.
        context: The Docker build context, the project directory (default: the working directory).
        base_image: Defaults to ``python:<this minor version>-slim``.
        requirements: The project's requirements file (default: ``requirements.txt`` in the context, if any).
        store: The store URL the tasks use (the profile's): adds s3fs or gcsfs for its scheme.
        backend: The profile's backend: the wheel of the plugin that provides it is built too.

    Raises:
        DefinitionError: ``out_dir`` is outside the context or not a writable directory, a step's module lies
            outside the context, the requirements file is missing, mlpipe or the plugin is not installed from
            a source checkout, or a wheel does not build.
    """
    ctx = Path(context or os.getcwd()).resolve()
    out = Path(out_dir).resolve()
    _check_output(out, ctx)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = base_image or f"python:{python}-slim"
    copies = _code_paths(pipeline, ctx)
    dists = ["mlpipe"]
    plugin = _plugin_distribution(backend)
    if plugin is not None:
        dists.append(plugin)
    sources = [source_tree(d) for d in dists]
    user_reqs = Path(requirements).resolve() if requirements else None
    if user_reqs is not None and not user_reqs.is_file():
        raise DefinitionError(
            f"requirements file {requirements} does not exist; pass an existing file to --requirements"
        )
    with tempfile.TemporaryDirectory(prefix="mlpipe-wheels-") as tmp:
        built = _build_wheels(sources, Path(tmp))
        wheel_lines = tuple(f"./wheels/{w.name}" for w in built)
        req_text = requirements_for(pipeline, ctx, user_reqs, wheels=wheel_lines, store=store)
        # Everything is known: now write.
        out.mkdir(parents=True, exist_ok=True)
        wheel_dir = out / "wheels"
        if wheel_dir.exists():
            shutil.rmtree(wheel_dir)  # wheels of an earlier checkout must not be installed
        wheel_dir.mkdir()
        wheels = tuple(Path(shutil.copy2(w, wheel_dir / w.name)) for w in built)
    req_path = out / "requirements.txt"
    req_path.write_text(req_text)
    rel = out.relative_to(ctx).as_posix()
    major, minor = sys.version_info[:2]
    check = (
        f"import sys; v = sys.version_info[:2]; sys.exit(0 if v == ({major}, {minor}) else "
        f"'the base image runs Python %d.%d, but the pipeline is compiled on {python} and pickled step code "
        f"loads only on the same minor version: use a python:{python} base image' % v)"
    )
    lines = [
        f"# Runtime image for the mlpipe pipeline {pipeline.name!r}: every remote task runs",
        "#   python -m mlpipe.runtime --store URL --ir DIGEST --run-id ID --step NAME ...",
        f"# Build from the project directory: docker build -f {rel}/Dockerfile -t IMAGE .",
        f"# Python {python} matches the interpreter that compiles the pipeline (pickled step code needs it).",
        f"FROM {base}",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"RUN python -c {json.dumps(check)}",
        f"WORKDIR {_BUILD_DIR}",
        f"COPY {rel}/wheels ./wheels",
        f"COPY {rel}/requirements.txt ./requirements.txt",
        f"RUN pip install -r requirements.txt && rm -rf {_BUILD_DIR}",
        "WORKDIR /app",
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
    return ImageFiles(dockerfile=dockerfile, requirements=req_path, dockerignore=ignore, context=ctx, wheels=wheels)
