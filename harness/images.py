"""`harness images build`: the service images built from source, no registry.

A base image from ``debootstrap --variant=minbase bookworm`` (the Debian mirror apt already
uses) imported into the engine, then one image per service from ``docker/images/<service>``
``FROM`` that base, installing the same Debian packages the local provider runs. Idempotent:
an image whose recipe (Dockerfile, context files, base image id) is unchanged is kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import install_hint
from harness.services.docker_engine import docker_client
from harness.services.local_recipes import local_version, which
from harness.services.spec import SERVICE_NAMES, get_spec

BASE_IMAGE = "purista-harness/debian:bookworm"
SUITE = "bookworm"
RECIPE_LABEL = "org.purista-harness.recipe"
REPO_DIR = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO_DIR / "docker" / "images"
SERVICE_IMAGE = "purista-harness/service:latest"
SERVICE_DOCKERFILE = REPO_DIR / "docker" / "service.Dockerfile"
SOURCE_DIRS = ("reference_services", "harness", "conformance")
# Debian's python3 is 3.11.2: redis-py needs async-timeout below 3.11.3, which the host's
# newer Python does not pull in when it builds the wheels
IMAGE_ONLY_DEPS = ("async-timeout>=4.0.3,<6",)
# the project's extras the image holds: every built-in adapter's client library, and the
# OpenTelemetry SDK for OTEL_SPANS_FILE
SERVICE_EXTRA = "adapters,telemetry"
SOURCES_FILES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


class ImageBuildError(RuntimeError):
    """A base or service image could not be built (the message says what and why)."""


@dataclass
class BuildResult:
    """What happened to one image."""

    image: str
    action: str  # "built" or "kept"
    seconds: float


def apt_mirror(files: Iterable[Path] = SOURCES_FILES) -> tuple[str, Path]:
    """The Debian mirror apt uses for bookworm, and the sources file that names it."""
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = _deb822(stanza)
                if "deb" in fields.get("types", "").split() and SUITE in fields.get(
                        "suites", "").split():
                    return fields["uris"].split()[0], path
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1], path
    names = ", ".join(str(p) for p in files)
    raise ImageBuildError(f"no 'deb ... {SUITE}' mirror in {names}; cannot debootstrap the base")


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def _image(client: Any, name: str) -> Any | None:
    import docker.errors

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def build_base(client: Any, force: bool = False, log: Path | None = None) -> BuildResult:
    """debootstrap a minimal bookworm and `docker import` it as BASE_IMAGE."""
    started = time.monotonic()
    if not force and _image(client, BASE_IMAGE) is not None:
        return BuildResult(BASE_IMAGE, "kept", 0.0)
    debootstrap = which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError("debootstrap is not installed (make docker-engine installs it)")
    if os.geteuid() != 0:
        raise ImageBuildError("building the base image needs root (debootstrap)")
    mirror, sources = apt_mirror()
    work = Path(tempfile.mkdtemp(prefix="harness-base-", dir="/var/tmp"))
    try:
        root = work / "root"
        with (log or Path(os.devnull)).open("ab") as out:
            proc = subprocess.run([debootstrap, "--variant=minbase", SUITE, str(root), mirror],
                                  stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise ImageBuildError(f"debootstrap failed (exit {proc.returncode}); see {log}")
        apt_dir = root / "etc/apt"
        if sources.suffix == ".sources":
            shutil.copy(sources, apt_dir / "sources.list.d" / sources.name)
            (apt_dir / "sources.list").unlink(missing_ok=True)
        else:
            shutil.copy(sources, apt_dir / "sources.list")
        for junk in ("var/lib/apt/lists", "var/cache/apt"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# no daemons start inside image builds\nexit 101\n")
        policy.chmod(0o755)
        archive = work / "base.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        repo, tag = BASE_IMAGE.rsplit(":", 1)
        client.api.import_image(src=str(archive), repository=repo, tag=tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(BASE_IMAGE, "built", time.monotonic() - started)


def _context(name: str, dest: Path) -> None:
    src = IMAGES_DIR / name
    if not (src / "Dockerfile").is_file():
        raise ImageBuildError(f"no Dockerfile for {name!r} under {IMAGES_DIR}")
    shutil.copytree(src, dest, dirs_exist_ok=True)
    if name == "toxiproxy":
        binary = which("toxiproxy-server")
        if binary is None:
            raise ImageBuildError(f"toxiproxy-server is not installed ({install_hint()})")
        want = get_spec(name).image.rsplit(":", 1)[-1]
        have = local_version("toxiproxy")
        if have != want:
            raise ImageBuildError(f"{binary} is toxiproxy {have}, the image needs {want}")
        shutil.copy(binary, dest / "toxiproxy-server")
    elif name == "moto":
        _moto_wheels(dest)
    elif name == "dapr":
        from harness.services.local_recipes import dapr_component

        binary = which("daprd")
        if binary is None:
            raise ImageBuildError(f"daprd is not installed ({install_hint()})")
        want, have = get_spec(name).image.rsplit(":", 1)[-1], local_version("dapr")
        if have != want:
            raise ImageBuildError(f"{binary} is dapr {have}, the image needs {want}")
        shutil.copy(binary, dest / "daprd")
        (dest / "statestore.yaml").write_text(dapr_component("127.0.0.1:6379"))


def _moto_wheels(dest: Path) -> None:
    """The wheels of moto's server (the version the spec names) for Debian's python3."""
    version = get_spec("moto").image.rsplit(":", 1)[-1]
    requirement = f"moto[server,secretsmanager,ssm]=={version}"
    (dest / "requirement.txt").write_text(requirement + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                           str(dest / "wheels"), requirement],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"pip wheel {requirement} failed: {proc.stderr.strip()[-500:]}")


def _recipe_hash(context: Path, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def build_service(client: Any, name: str, force: bool = False,
                  log: Path | None = None) -> BuildResult:
    """Build one service's image (tagged as its spec names it) unless it is up to date."""
    started = time.monotonic()
    image = get_spec(name).image
    base = _image(client, BASE_IMAGE)
    if base is None:
        raise ImageBuildError(f"base image {BASE_IMAGE} is missing (build it first)")
    with tempfile.TemporaryDirectory(prefix=f"harness-image-{name}-") as tmp:
        context = Path(tmp)
        _context(name, context)
        recipe = _recipe_hash(context, base.id)
        current = _image(client, image)
        if not force and current is not None and current.labels.get(RECIPE_LABEL) == recipe:
            return BuildResult(image, "kept", 0.0)
        _docker_build(client, context, image, recipe, log)
    return BuildResult(image, "built", time.monotonic() - started)


def _docker_build(client: Any, context: Path, image: str, recipe: str,
                  log: Path | None) -> None:
    lines: list[str] = []
    try:
        # network_mode host: the build's apt-get reaches the mirror like the host does
        # (the daemon runs without NAT); pull=False: FROM is the local base image.
        for chunk in client.api.build(path=str(context), tag=image, network_mode="host",
                                      pull=False, rm=True, forcerm=True, decode=True,
                                      labels={RECIPE_LABEL: recipe}):
            lines.append(chunk.get("stream") or chunk.get("error") or "")
            if "error" in chunk:
                raise ImageBuildError(f"{image}: {chunk['error'].strip()}")
    finally:
        if log is not None:
            with log.open("a") as out:
                out.write("".join(lines))


def _source_hash(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode() + SERVICE_DOCKERFILE.read_bytes())
    files = [REPO_DIR / "pyproject.toml"]
    for top in SOURCE_DIRS:
        files += [p for p in (REPO_DIR / top).rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO_DIR)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def build_service_image(client: Any, force: bool = False,
                        log: Path | None = None) -> BuildResult:
    """The project itself on the base image (docker/service.Dockerfile), from wheels built
    here, for the deployment suite's one-service-per-container pattern."""
    started = time.monotonic()
    base = _image(client, BASE_IMAGE)
    if base is None:
        raise ImageBuildError(f"base image {BASE_IMAGE} is missing (build it first)")
    if not (REPO_DIR / "pyproject.toml").is_file():
        raise ImageBuildError(f"no project source at {REPO_DIR} to build {SERVICE_IMAGE} from")
    recipe = _source_hash(base.id)
    current = _image(client, SERVICE_IMAGE)
    if not force and current is not None and current.labels.get(RECIPE_LABEL) == recipe:
        return BuildResult(SERVICE_IMAGE, "kept", 0.0)
    with tempfile.TemporaryDirectory(prefix="harness-image-service-") as tmp:
        context = Path(tmp)
        shutil.copy(SERVICE_DOCKERFILE, context / "Dockerfile")
        with (log or Path(os.devnull)).open("ab") as out:
            proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                                   str(context / "wheels"), f"{REPO_DIR}[{SERVICE_EXTRA}]",
                                   *IMAGE_ONLY_DEPS],
                                  stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise ImageBuildError(f"pip wheel of the project failed (exit {proc.returncode})"
                                  f"; see {log}")
        _docker_build(client, context, SERVICE_IMAGE, recipe, log)
    return BuildResult(SERVICE_IMAGE, "built", time.monotonic() - started)


def service_image_stale(client: Any) -> str | None:
    """None when SERVICE_IMAGE exists and was built from the current source, else why not."""
    hint = "build it with `harness images build service`"
    base, image = _image(client, BASE_IMAGE), _image(client, SERVICE_IMAGE)
    if base is None or image is None:
        return f"image {SERVICE_IMAGE} missing; {hint}"
    if image.labels.get(RECIPE_LABEL) != _source_hash(base.id):
        return f"image {SERVICE_IMAGE} was built from other source; re{hint}"
    return None


def images_missing(client: Any, names: Iterable[str] = SERVICE_NAMES) -> list[str]:
    """The images of these services (``service``: the project's) the engine does not have."""
    images = [SERVICE_IMAGE if n == "service" else get_spec(n).image for n in names]
    return [image for image in images if _image(client, image) is None]


def build_images(names: Iterable[str] = SERVICE_NAMES, force: bool = False,
                 log: Path | None = None) -> list[BuildResult]:
    """Build the base and the named images (idempotent); one result per image. The name
    ``service`` is the project's own image (SERVICE_IMAGE)."""
    client = docker_client()
    try:
        results = [build_base(client, force, log)]
        results += [build_service_image(client, force, log) if n == "service"
                    else build_service(client, n, force, log) for n in names]
        return results
    finally:
        client.close()
