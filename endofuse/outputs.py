"""Where commands write: outputs checked against inputs, owned output folders, checked atomic writes.

Every command that writes files goes through this module so the same rules hold everywhere:

* `refuse_overlap` - an output is never an input (same file, hard or symbolic link), never a
  folder that contains an input, never a file written straight into an input folder that is
  read as a whole (an image-folder source), and two outputs never share a path. Called before
  any work, it raises one `EndofuseError` line.
* `OutputFolder` - an existing output folder that holds files endofuse did not write is refused
  unless `force=True`. Files a command writes are listed in `.endofuse-outputs.json` inside the
  folder, so running the same command again into it is allowed. A command that is refused or fails
  before writing a file leaves no folder behind: `commit` removes the folders `prepare` created
  when they hold no file, and so does `remove_unused_folders_on_error` (the CLI runs every command
  under it) for an error raised between the two.
* `atomic_write_bytes` / `atomic_write_text` / `write_json` / `write_image` - temp file in the
  same folder, fsync, `os.replace`; an `OSError` (a full disk, a read-only folder) becomes a
  `WriteError` naming the file and the reason; the previous file is kept and the temp file removed.
* `check_writable_dir` - an output folder exists and accepts a file, checked before the work.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from endofuse.errors import EndofuseError

MANIFEST = ".endofuse-outputs.json"


class WriteError(EndofuseError):
    """Writing an output failed (no space left, read-only, permission): exit 1, the file named."""


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _same(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    child, folder = _real(child), _real(folder)
    return child != folder and folder in child.parents


def refuse_overlap(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None],
                   output_dirs: Iterable[str] = (), input_dirs: Iterable[str] = ()) -> None:
    """Raise one line when an output would overwrite or sit among an input (see the module docstring).

    `outputs` / `inputs` map a label (e.g. "--out") to a path (None entries are skipped).
    `output_dirs` names the outputs that are folders (everything under them is written),
    `input_dirs` the inputs that are folders read as a whole (files written straight into them
    would be read back as input next time).
    """
    outs = {k: Path(v) for k, v in outputs.items() if v is not None}
    ins = {k: Path(v) for k, v in inputs.items() if v is not None}
    out_dirs, in_dirs = set(output_dirs), set(input_dirs)
    for out_label, out in outs.items():
        for in_label, src in ins.items():
            if _same(out, src) or _real(out) == _real(src):
                raise EndofuseError(f"{out_label} '{out}' is the same as the input {in_label} '{src}': "
                                    "choose another output path (inputs are never overwritten)")
            if out_label in out_dirs and _inside(src, out):
                raise EndofuseError(f"{out_label} '{out}' contains the input {in_label} '{src}': "
                                    "choose an output folder outside the inputs")
            if in_label in in_dirs and _real(out).parent == _real(src):
                raise EndofuseError(f"{out_label} '{out}' is inside the input folder {in_label} '{src}' "
                                    "(it would be read as input next time): choose another output path")
    labels = list(outs)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if _real(outs[a]) == _real(outs[b]):
                raise EndofuseError(f"{a} and {b} are the same path '{outs[a]}': give each output its own path")


def check_writable_dir(folder: str | os.PathLike, what: str) -> None:
    """The folder exists, is a folder and accepts a new file (checked before an hour of work)."""
    folder = Path(folder)
    if not folder.exists():
        raise EndofuseError(f"{what}: folder '{folder}' does not exist")
    if not folder.is_dir():
        raise EndofuseError(f"{what}: '{folder}' is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".endofuse-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WriteError(f"{what}: cannot write in '{folder}': {reason(exc)}") from None


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """An output file path whose folder is writable and that is not an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise EndofuseError(f"{what} '{path}' is a folder: give a file name")
    check_writable_dir(path.parent if str(path.parent) else Path("."), f"{what} '{path}'")
    return path


def reason(exc: OSError) -> str:
    """"no space left on device" and the like: the OS's reason, lower-case."""
    text = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))  # the OS's wording for errno
    return text[:1].lower() + text[1:]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                durable: bool = True) -> Iterator:
    """Open a temp file beside `path`; on success fsync + rename over `path`, on failure remove it.

    `durable=False` skips the fsync (per-frame images of a live run, where it would cost the frame
    rate); write errors are still caught, a power cut may lose the newest files.

    Any `OSError` while writing becomes a `WriteError` naming `path`; `path` itself is untouched
    until the new content is complete on disk.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make reports private to the writer
        with os.fdopen(fd, mode, encoding=encoding, **({"newline": ""} if "b" not in mode else {})) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WriteError(f"cannot write '{path}': {reason(exc)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_file(path, "wb", durable=durable) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _plain(value):
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def finite_or_none(value):
    """Floats that are NaN/inf (a statistic over zero values) become None; everything else unchanged."""
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def dumps_json(payload) -> str:
    """Strict JSON (no NaN/Infinity: a non-finite number here is a bug, not a value)."""
    return json.dumps(_plain(payload), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, payload) -> None:
    atomic_write_text(path, dumps_json(payload))


def write_image(path: str | os.PathLike, image, durable: bool = True) -> None:
    """Encode with OpenCV (format from the suffix) and write atomically; cv2.imwrite ignores a full disk."""
    import cv2

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise WriteError(f"cannot write '{path}': OpenCV cannot encode a {path.suffix} image")
    atomic_write_bytes(path, encoded.tobytes(), durable=durable)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another library wrote (e.g. a video) to disk; OSError -> WriteError."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write '{path}': {reason(exc)}") from None


_created_folders: list[Path] = []  # output folders this process created, parents before children


def _remove_if_unused(folders: list[Path]) -> None:
    """Remove each folder (deepest first) that holds no file, also in its sub-folders; leave the others."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if not folder.is_dir():
            continue
        if any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
            continue
        try:
            for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                os.rmdir(sub)  # empty sub-folders a command made before it failed
            os.rmdir(folder)
        except OSError:
            continue  # something appeared meanwhile (another process): leave it


@contextlib.contextmanager
def remove_unused_folders_on_error() -> Iterator[None]:
    """Run a command; when it raises, remove the output folders it created that still hold no file."""
    start = len(_created_folders)
    try:
        yield
    except BaseException:
        _remove_if_unused(_created_folders[start:])
        raise
    finally:
        del _created_folders[start:]


class OutputFolder:
    """An output folder the command may fill: new, empty, or holding only files endofuse wrote.

        folder = OutputFolder(args.out, "evaluate --out", force=args.force).prepare()
        ...                       # write files under folder.path
        folder.commit()           # list the new files in the manifest (also after a failure)
    """

    def __init__(self, path: str | os.PathLike, what: str, force: bool = False, own: Iterable[str] = ()) -> None:
        """`own`: names the command keeps in the folder itself (a lock file), never counted as foreign."""
        self.path, self.what, self.force = Path(path), what, force
        self.own = set(own)
        self._before: set[str] = set()
        self._owned: set[str] = set()
        self._created: list[Path] = []  # the folder and parents prepare() made
        self._had_manifest = False

    def _files(self) -> set[str]:
        if not self.path.is_dir():
            return set()
        names = {str(p.relative_to(self.path)) for p in self.path.rglob("*")
                 if (p.is_file() or p.is_symlink()) and p.name != MANIFEST}
        return names - self.own

    def _manifest(self) -> set[str]:
        try:
            data = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
            return set(data.get("files", []))
        except (OSError, ValueError, AttributeError):
            return set()

    def prepare(self) -> OutputFolder:
        """Refuse a file, or a folder with files endofuse did not write (unless force); create it."""
        if self.path.exists() and not self.path.is_dir():
            raise EndofuseError(f"{self.what} '{self.path}' is an existing file: give a folder path")
        self._before = self._files()
        self._had_manifest = (self.path / MANIFEST).is_file()
        self._owned = self._manifest() & self._before
        foreign = sorted(self._before - self._owned)
        if foreign and not self.force:
            raise EndofuseError(f"{self.what} '{self.path}' already holds {len(foreign)} file(s) endofuse did not "
                                f"write (e.g. '{foreign[0]}'): choose an empty or new folder, or pass --force")
        absent = [p for p in (self.path, *self.path.parents) if not p.exists()][::-1]  # parents first
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"{self.what}: cannot create '{self.path}': {reason(exc)}") from None
        self._created = [p for p in absent if p.is_dir()]
        _created_folders.extend(self._created)
        try:
            check_writable_dir(self.path, self.what)
        except EndofuseError:
            _remove_if_unused(self._created)
            raise
        return self

    def commit(self) -> None:
        """Record every file written since `prepare` (and those recorded before) as endofuse's.

        Nothing written: no manifest is added, and the folders `prepare` created are removed.
        """
        new = self._files() - self._before
        if not new and not self._had_manifest:
            _remove_if_unused(self._created)
            return
        files = {f for f in self._owned | new if (self.path / f).exists()}
        try:
            write_json(self.path / MANIFEST, {"written_by": "endofuse", "files": sorted(files)})
        except WriteError:
            pass  # the folder is full or gone: the error that caused it is the one to report
