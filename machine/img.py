"""`python3 -m machine.img create [-f raw] FILE SIZE`: make a disk image, as `qemu-img create`
does for QEMU, so the README's first steps need no other tool.

Only raw images exist here (the only format the machine opens): a sparse file of SIZE bytes,
rounded up to whole 512-byte sectors; SIZE takes qemu-img's suffixes (k, M, G, T; a bare number
is bytes). An existing file is overwritten, as by qemu-img."""

from __future__ import annotations

import os
import stat
import sys

from machine.cli import parse_size

PROG = "machine.img"
SECTOR = 512
USAGE = f"usage: python3 -m {PROG} create [-f raw] FILE SIZE"


class ImgError(Exception):
    """Bad input: the message is the one line to print."""


def create(path: str, size: int) -> int:
    """Create (or truncate) a sparse raw image of `size` bytes rounded up to a whole sector;
    returns the size written."""
    size = (size + SECTOR - 1) // SECTOR * SECTOR
    try:
        # O_NONBLOCK: a FIFO named as the image must not block the command forever.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
    except OSError as err:
        raise ImgError(f"{path}: error while creating raw: Could not create '{path}': "
                       f"{err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImgError(f"{path}: error while creating raw: not a regular file")
        os.ftruncate(fd, size)
    except OSError as err:
        raise ImgError(f"{path}: error while creating raw: {err.strerror}") from None
    finally:
        os.close(fd)
    return size


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0 if args else 1
        if args[0] != "create":
            raise ImgError(f"Command not found: {args[0]} ({USAGE})")
        rest = args[1:]
        fmt = "raw"
        while rest and rest[0].startswith("-"):
            if rest[0] == "-f" and len(rest) > 1:
                fmt = rest[1]
                rest = rest[2:]
            else:
                raise ImgError(f"unknown option '{rest[0]}' ({USAGE})")
        if fmt != "raw":
            raise ImgError(f"format '{fmt}' is not supported (this machine opens raw images only)")
        if len(rest) != 2:
            raise ImgError(f"expected FILE and SIZE ({USAGE})")
        path, text = rest
        try:
            size = parse_size(text, default_unit=1)
        except ValueError:
            raise ImgError("Invalid image size specified. You may use k, M, G, T, P or E "
                           "suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes "
                           "and exabytes.") from None
        size = create(path, size)
        print(f"Formatting '{path}', fmt=raw size={size}")
        return 0
    except ImgError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
