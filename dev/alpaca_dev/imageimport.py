"""Images from the local builder's storage into a node's containerd, layer by layer: only what
containerd does not hold yet crosses over.

buildah pushes the image into a scratch OCI layout in which every blob containerd has already
appears as a hard link to containerd's own copy, so buildah writes only the new blobs (after a
source change: a few megabytes, not the 5 GB torch layer underneath; buildah's blob-info cache
remembers which compressed blob stands for which layer). An OCI archive of the manifest, the
config and the new layers goes to `ctr images import` through a pipe; containerd finds the
rest in its store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from alpaca_dev.images import (
    Buildah,
    BuiltImage,
    Cache,
    cache_root,
    exclusive,
    log,
    run,
    timed,
)

CONTENT = Path("io.containerd.content.v1.content") / "blobs" / "sha256"
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def _link_known_blobs(content: Path, folder: Path) -> set[str]:
    """Hard links to containerd's blobs in the folder; the digests (hex) containerd has."""
    known = set()
    if content.is_dir():
        for blob in content.iterdir():
            known.add(blob.name)
            with contextlib.suppress(OSError):  # another filesystem: buildah writes it, fine
                os.link(blob, folder / blob.name)
    return known


def _stream(layout: Path, stored: str, ref: str, known: set[str], sink: IO[bytes]) -> int:
    """Write the OCI archive of `stored` (pushed into `layout`) to `sink`, named `ref`; the
    bytes of layers sent (those containerd does not have)."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == stored)
    manifest_hex = entry["digest"].removeprefix("sha256:")
    manifest = json.loads((blobs / manifest_hex).read_bytes())
    entry = entry | {"annotations": {IMAGE_NAME: ref, REF_NAME: ref}}
    needed = [manifest_hex, manifest["config"]["digest"].removeprefix("sha256:")]
    sent = 0
    for layer in manifest["layers"]:
        hex_ = layer["digest"].removeprefix("sha256:")
        if hex_ not in known:
            needed.append(hex_)
            sent += int(layer["size"])
    with tarfile.open(fileobj=sink, mode="w|") as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
            ("index.json", json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for hex_ in needed:
            tar.add(blobs / hex_, arcname=f"blobs/sha256/{hex_}")
    return sent


def import_into_containerd(
    ctr: Path,
    address: str,
    images: Iterable[BuiltImage],
    containerd_root: Path,
    namespace: str = "k8s.io",
    cache: Path | None = None,
) -> list[str]:
    """Import each image this containerd does not hold yet (its store outlives a node: usually
    none, or the few a source change made new); the refs imported."""
    base = [str(ctr), "--address", address, "--namespace", namespace, "images"]
    present = set(run([*base, "ls", "--quiet"]).split())
    missing = [image for image in images if image.ref not in present]
    if not missing:
        return []
    store = Cache(cache or cache_root())
    buildah = Buildah(store)
    with exclusive(store):
        for image in missing:
            layout = store.tmp / f"{image.name}-oci"
            (layout / "blobs" / "sha256").mkdir(parents=True)
            try:
                with timed(f"{image.name}: import into containerd"):
                    known = _link_known_blobs(
                        containerd_root / CONTENT, layout / "blobs" / "sha256"
                    )
                    buildah.push_oci(image.stored, layout)
                    # ctr prints "<ref> saved" on stdout: not ours to write on (a caller's
                    # stdout may be a protocol, as the node tier's recovery test reads it)
                    importer = subprocess.Popen(
                        [*base, "import", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
                    )
                    assert importer.stdin is not None
                    with importer.stdin:
                        sent = _stream(layout, image.stored, image.ref, known, importer.stdin)
                    if importer.wait() != 0:
                        raise RuntimeError(f"ctr images import of {image.ref} failed")
                    log(f"{image.name}: {sent / 2**20:.1f} MiB of new layers sent")
            finally:
                shutil.rmtree(layout, ignore_errors=True)
    return [image.ref for image in missing]


def forget_older(
    ctr: Path, address: str, images: Iterable[BuiltImage], namespace: str = "k8s.io"
) -> list[str]:
    """Remove from containerd the images of ours it holds besides these (older builds of the
    same repositories), and the references by ID the CRI made for them (`sha256:<id>`, which
    would keep their layers), waiting for the garbage collector to free their content and
    snapshots: the store does not grow by an image per source change. The refs removed."""
    keep = {image.ref for image in images}
    ours = {image.ref.rsplit(":", 1)[0] for image in images}
    base = [str(ctr), "--address", address, "--namespace", namespace, "images"]
    targets = {}  # ref -> the manifest it names
    for line in run([*base, "ls"]).splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            targets[fields[0]] = fields[2]
    old = [
        ref
        for ref in targets
        if not ref.startswith("sha256:") and ref not in keep and ref.rsplit(":", 1)[0] in ours
    ]
    named = {d for r, d in targets.items() if not r.startswith("sha256:") and r not in old}
    by_id = [r for r, d in targets.items() if r.startswith("sha256:") and d not in named]
    if old or by_id:
        run([*base, "rm", "--sync", *old, *by_id])
    return old + by_id
