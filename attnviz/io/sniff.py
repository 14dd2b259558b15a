"""What a checkpoint file is, read from its bytes without deserialising anything.

:func:`check_file` refuses a missing, empty or folder path; :func:`file_kind` tells torch's
formats apart (TorchScript, zip, legacy pickle, legacy tar) and names what any other file looks
like (ONNX, safetensors, HDF5, a plain pickle, text, ...).
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
import tarfile
import zipfile
from collections.abc import Sequence

from attnviz.runtime.errors import CheckpointError
from attnviz.runtime.files import require_file

__all__ = ["check_file", "file_kind"]

_WHAT_WE_READ = "attnviz reads PyTorch checkpoints: a state_dict, a whole model or TorchScript"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a (pre-1.6) torch.save file


def check_file(source: str) -> None:
    """Refuse a path that does not exist, is a folder, cannot be read or is empty (:class:`CheckpointError`)."""
    require_file(source, "checkpoint", CheckpointError)


def file_kind(source: str) -> str:
    """``"torchscript"``, ``"zip"``, ``"legacy"`` or ``"tar"``, read from the bytes without deserialising.

    Raises:
        CheckpointError: The file is not a PyTorch checkpoint; the message says what it looks like.
    """
    head = _head(source)
    names = _zip_names(source)
    if names is not None and _has_record(names, "constants.pkl"):
        return "torchscript"  # torch.load itself hands any zip with constants.pkl to torch.jit.load
    if head.startswith(b"PK\x03\x04") and (names is None or _has_record(names, "data.pkl")):
        return "zip"  # a damaged zip is left to torch.load, which says why it cannot read it
    if _starts_with_legacy_magic(head):
        return "legacy"
    if _is_legacy_tar(source):
        return "tar"
    what = _looks_like(head, source, names)
    raise CheckpointError(f"{source!r} is not a PyTorch checkpoint: it {what} ({_WHAT_WE_READ})")


def _head(source: str, size: int = 512) -> bytes:
    try:
        with open(source, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source!r}: {exc.strerror or exc}") from None


def _zip_names(source: str) -> list[str] | None:
    """The entries of a zip archive (its central directory only), or None if it is not one."""
    try:
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def _has_record(names: Sequence[str], record: str) -> bool:
    """Whether the archive holds ``record`` in its top-level folder, as torch's zip reader names it."""
    return any(name == record or name.split("/", 1)[-1] == record for name in names)


def _starts_with_legacy_magic(head: bytes) -> bool:
    """Whether the first pickle is torch's magic number (read with ``pickletools``, never executed)."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name in ("PROTO", "FRAME"):
                continue
            return isinstance(arg, int) and not isinstance(arg, bool) and arg == _LEGACY_MAGIC
    except (ValueError, EOFError, IndexError, UnicodeDecodeError):
        return False
    return False


def _is_legacy_tar(source: str) -> bool:
    """torch's oldest format: an uncompressed tar holding ``pickle``, ``tensors`` and ``storages``."""
    try:
        with tarfile.open(source, mode="r:") as archive:
            return "pickle" in archive.getnames()
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False


def _looks_like(head: bytes, source: str, zip_names: Sequence[str] | None) -> str:
    """What a file that is not a PyTorch checkpoint seems to be, as the end of "it ..."."""
    text = _as_text(head)
    onnx_binary = head[:1] + head[2:3] == b"\x08\x12"  # field 1 (ir_version), then field 2 (producer_name)
    if source.lower().endswith(".onnx") or (text or "").lstrip().startswith("ir_version") or onnx_binary:
        return "looks like an ONNX model"
    if zip_names is not None:
        shown = ", ".join(zip_names[:3]) + (", ..." if len(zip_names) > 3 else "")
        return f"is a zip archive without PyTorch's data.pkl (it holds {shown or 'nothing'})"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "looks like a safetensors file (load it with safetensors and torch.save its state_dict)"
    signatures = {
        b"\x89HDF\r\n\x1a\n": "looks like an HDF5 file (Keras?)",
        b"\x93NUMPY": "looks like a NumPy array file",
        b"\x1f\x8b": "is gzip-compressed (decompress it first)",
    }
    for signature, what in signatures.items():
        if head.startswith(signature):
            return what
    if head[4:8] == b"PTMF":
        return "looks like a PyTorch Mobile (lite interpreter) model, which attnviz cannot read"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= pickle.HIGHEST_PROTOCOL:
        return "is a Python pickle not written by torch.save"
    if text is not None:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"is a text file (it starts with {first!r})"
    return f"is binary data of an unknown format (it starts with {head[:8].hex(' ')})"


def _as_text(head: bytes) -> str | None:
    """The file's first bytes as text, or None if they are not printable UTF-8."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut last character is fine
    except UnicodeDecodeError:
        return None
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None
