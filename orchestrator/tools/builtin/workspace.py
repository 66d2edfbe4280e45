"""A per-user scratch directory the model can list, read, write and delete in.

Every path the model gives goes through `resolve_in_workspace`, which is the only place that
decides whether a path is inside the workspace. It resolves symlinks before deciding, so a link
planted inside the workspace cannot be used to read or write outside it.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..registry import ToolContext, ToolError, tool

MAX_READ_BYTES = 256 * 1024
MAX_WRITE_BYTES = 1024 * 1024
MAX_LIST_ENTRIES = 1000
MAX_PATH_LENGTH = 1024

_TEMP_PREFIX = ".cortex-tmp-"
# O_NOFOLLOW narrows the window between the check and the open: if the checked file has since
# been swapped for a symlink, the open fails instead of following it. Not every OS has it.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _relative_path(relative: str) -> PurePosixPath:
    """Check the path as text: relative, forward slashes, no `..`. "" and "." mean the root."""
    if not isinstance(relative, str):
        raise ToolError("the path must be a string")
    if len(relative) > MAX_PATH_LENGTH:
        raise ToolError(f"the path is longer than {MAX_PATH_LENGTH} characters")
    if "\x00" in relative:
        raise ToolError("the path contains a NUL character")
    if "\\" in relative:
        raise ToolError("use forward slashes (/) in workspace paths")
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise ToolError(f"{relative!r} is absolute; give a path relative to the workspace root")
    if ".." in pure.parts:
        raise ToolError(f"{relative!r} contains '..'; paths may not leave the workspace")
    return pure


def resolve_in_workspace(root: Path, relative: str) -> Path:
    """Return the real path of `relative` inside `root`, or raise ToolError.

    Refuses absolute paths, `..` components, and anything whose real path (symlinks resolved,
    including a dangling link's target) is outside the real path of `root`.
    """
    pure = _relative_path(relative)
    try:
        real_root = root.resolve()
        real = (real_root / pure).resolve()
    except (OSError, RuntimeError) as exc:
        raise ToolError(f"cannot resolve {relative!r}: {exc}") from None
    if not real.is_relative_to(real_root):
        raise ToolError(f"{relative!r} leads outside the workspace (through a symbolic link); refused")
    return real


def _root(ctx: ToolContext) -> Path:
    root = Path(ctx.workspace)
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _file_in_workspace(root: Path, relative: str) -> Path:
    """The real path of a file to read or write: inside the workspace, and not its root."""
    target = resolve_in_workspace(root, relative)
    if target == root.resolve():
        raise ToolError("give the path of a file, not the workspace root")
    return target


def _entry_to_delete(root: Path, relative: str) -> tuple[Path, PurePosixPath]:
    """The real parent directory and the name of what to delete. Only the parent is resolved: the
    last component is removed, never followed, so deleting a symlink leaves its target alone."""
    pure = _relative_path(relative)
    if not pure.parts:
        raise ToolError("the workspace root cannot be deleted")
    return resolve_in_workspace(root, pure.parent.as_posix()), pure


# The same rules the handlers apply, for arguments a person edits before approving: they are
# refused on the confirmation card instead of failing when the tool runs.
def _check_directory(args: dict[str, Any], ctx: ToolContext) -> None:
    resolve_in_workspace(Path(ctx.workspace), args.get("path", ""))


def _check_file(args: dict[str, Any], ctx: ToolContext) -> None:
    _file_in_workspace(Path(ctx.workspace), args.get("path", ""))


def _check_delete(args: dict[str, Any], ctx: ToolContext) -> None:
    _entry_to_delete(Path(ctx.workspace), args.get("path", ""))


async def _in_thread(action: str, relative: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking file work off the event loop; turn unexpected OS errors into ToolError."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as exc:
        raise ToolError(f"cannot {action} {relative!r}: {exc.strerror or exc}") from None


def _shown(root: Path, path: Path) -> str:
    relative = path.relative_to(root).as_posix()
    return relative or "."


# --- list -------------------------------------------------------------------------------------


def _entry(path: Path, name: str) -> dict[str, Any]:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(info.st_mode):
        kind = "directory"
    elif stat.S_ISREG(info.st_mode):
        kind = "file"
    else:
        kind = "other"
    entry: dict[str, Any] = {"name": name, "type": kind}
    if kind == "file":
        entry["size"] = info.st_size
    return entry


def _list(root: Path, relative: str, recursive: bool) -> dict[str, Any]:
    directory = resolve_in_workspace(root, relative)
    if not directory.exists():
        raise ToolError(f"{relative!r} does not exist in the workspace")
    if not directory.is_dir():
        raise ToolError(f"{relative!r} is a file, not a directory; use workspace_read")
    entries: list[dict[str, Any]] = []
    truncated = False
    # os.walk does not descend into symlinked directories, so a link cannot widen the listing.
    for current, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        base = Path(current)
        for name in sorted(dirnames + filenames):
            if name.startswith(_TEMP_PREFIX):
                continue
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                break
            try:
                entries.append(_entry(base / name, (base / name).relative_to(directory).as_posix()))
            except FileNotFoundError:
                continue  # removed while listing
        if truncated or not recursive:
            break
    return {"path": _shown(root, directory), "entries": entries, "truncated": truncated}


@tool(
    name="workspace_list",
    category="files",
    description=(
        "List files and directories in your workspace (a private scratch directory). "
        f"Non-recursive unless recursive is true; at most {MAX_LIST_ENTRIES} entries. "
        "Each entry has name, type (file, directory, symlink) and size for files."
    ),
    risk="low",
    idempotent=True,
    timeout=15.0,
    check=_check_directory,
    parameters={
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "maxLength": MAX_PATH_LENGTH,
                "description": "Directory relative to the workspace root; omit for the root.",
            },
            "recursive": {"type": "boolean", "description": "Include subdirectories. Default false."},
        },
        "required": [],
        "additionalProperties": False,
    },
)
async def workspace_list(ctx: ToolContext, *, path: str = "", recursive: bool = False) -> dict[str, Any]:
    root = await _in_thread("open the workspace for", path, _root, ctx)
    return await _in_thread("list", path, _list, root, path, recursive)


# --- read -------------------------------------------------------------------------------------


def _read(root: Path, relative: str) -> dict[str, Any]:
    target = _file_in_workspace(root, relative)
    try:
        fd = os.open(target, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        raise ToolError(f"{relative!r} does not exist in the workspace") from None
    except IsADirectoryError:
        raise ToolError(f"{relative!r} is a directory; use workspace_list") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ToolError(f"{relative!r} changed into a symbolic link while being opened; refused") from None
        raise ToolError(f"cannot open {relative!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ToolError(f"{relative!r} is a directory; use workspace_list")
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{relative!r} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_READ_BYTES + 1)
    truncated = len(data) > MAX_READ_BYTES
    data = data[:MAX_READ_BYTES]
    if b"\x00" in data:
        raise ToolError(f"{relative!r} is a binary file ({info.st_size} bytes); workspace_read only returns text")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # When truncated, a multi-byte character cut at the limit is held back, not an error.
        text = decoder.decode(data, final=not truncated)
    except UnicodeDecodeError:
        raise ToolError(
            f"{relative!r} is not UTF-8 text ({info.st_size} bytes); workspace_read only returns text"
        ) from None
    result: dict[str, Any] = {
        "path": _shown(root, target),
        "size": info.st_size,
        "content": text,
        "truncated": truncated,
    }
    if truncated:
        result["note"] = f"only the first {MAX_READ_BYTES} bytes are shown"
    return result


@tool(
    name="workspace_read",
    category="files",
    description=(
        "Read a UTF-8 text file from your workspace. Returns at most the first 256 KiB "
        "(truncated is then true). Binary files are refused."
    ),
    risk="low",
    idempotent=True,
    timeout=15.0,
    check=_check_file,
    parameters={
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PATH_LENGTH,
                "description": "File path relative to the workspace root, e.g. \"notes/plan.md\".",
            }
        },
        "required": ["path"],
        "additionalProperties": False,
    },
)
async def workspace_read(ctx: ToolContext, *, path: str) -> dict[str, Any]:
    root = await _in_thread("open the workspace for", path, _root, ctx)
    return await _in_thread("read", path, _read, root, path)


# --- write ------------------------------------------------------------------------------------


def _write(root: Path, relative: str, content: str) -> dict[str, Any]:
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"the content is {len(data)} bytes; the limit is {MAX_WRITE_BYTES} bytes (1 MiB)")
    target = _file_in_workspace(root, relative)
    if target.is_dir():
        raise ToolError(f"{relative!r} is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ToolError(f"cannot create the directories for {relative!r}: a file is in the way") from None
    # Re-check: the parents may have been created or replaced since the first check.
    if resolve_in_workspace(root, relative) != target:
        raise ToolError(f"{relative!r} changed while being written; refused")
    try:
        previous_mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        previous_mode = None
    # Write a sibling and rename it over the target: a reader never sees half a file, and the
    # rename replaces a symlink itself rather than writing through it.
    fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=target.parent)
    try:
        if previous_mode is not None:
            os.fchmod(fd, previous_mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return {"path": _shown(root, target), "bytes": len(data), "created": previous_mode is None}


@tool(
    name="workspace_write",
    category="files",
    description=(
        "Write a UTF-8 text file in your workspace, replacing it if it exists and creating parent "
        "directories. Content is limited to 1 MiB."
    ),
    risk="medium",
    idempotent=True,
    timeout=15.0,
    check=_check_file,
    parameters={
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PATH_LENGTH,
                "description": "File path relative to the workspace root, e.g. \"notes/plan.md\".",
            },
            "content": {"type": "string", "maxLength": MAX_WRITE_BYTES, "description": "The full new file content."},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    },
)
async def workspace_write(ctx: ToolContext, *, path: str, content: str) -> dict[str, Any]:
    root = await _in_thread("open the workspace for", path, _root, ctx)
    return await _in_thread("write", path, _write, root, path, content)


# --- delete -----------------------------------------------------------------------------------


def _delete(root: Path, relative: str) -> dict[str, Any]:
    parent, pure = _entry_to_delete(root, relative)
    entry = parent / pure.name
    shown = _shown(root, parent / pure.name)
    try:
        info = entry.lstat()
    except FileNotFoundError:
        return {"path": shown, "deleted": False, "note": "nothing to delete: the path does not exist"}
    except NotADirectoryError:
        return {"path": shown, "deleted": False, "note": "nothing to delete: a parent is a file"}
    if stat.S_ISDIR(info.st_mode):
        try:
            entry.rmdir()
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise ToolError(f"{relative!r} is a directory that is not empty; delete its contents first") from None
            raise
        kind = "directory"
    else:
        entry.unlink()
        kind = "symlink" if stat.S_ISLNK(info.st_mode) else "file"
    return {"path": shown, "deleted": True, "type": kind}


@tool(
    name="workspace_delete",
    category="files",
    description=(
        "Delete a file, a symbolic link or an empty directory in your workspace. "
        "Deleting a path that does not exist succeeds with deleted=false."
    ),
    risk="high",
    idempotent=True,
    timeout=15.0,
    check=_check_delete,
    parameters={
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PATH_LENGTH,
                "description": "Path relative to the workspace root.",
            }
        },
        "required": ["path"],
        "additionalProperties": False,
    },
)
async def workspace_delete(ctx: ToolContext, *, path: str) -> dict[str, Any]:
    root = await _in_thread("open the workspace for", path, _root, ctx)
    return await _in_thread("delete", path, _delete, root, path)
