#!/usr/bin/env python3
"""Writes a reproducible initramfs archive (cpio "newc") from a staging directory.

Same tree in, same bytes out: entries sorted by path, owner root:root, one fixed mtime
(SOURCE_DATE_EPOCH), inode numbers counted from 1, no device numbers of the build host.
Only directories, regular files and symlinks are read from the tree; device nodes the
kernel needs before anything is mounted (/dev/console) are added here, so the build needs
no root and no mknod.

    mkcpio.py <staging dir> <output.cpio>

Modes are taken from the tree but normalised: executables 0755, other files 0644,
directories 0755, except the paths listed in MODES.
"""
import os
import stat
import sys

# Device nodes in the archive: path -> (mode, major, minor). Without /dev/console the kernel
# starts init with no stdin, stdout or stderr.
DEVICES = {"dev/console": (stat.S_IFCHR | 0o600, 5, 1)}
# Modes that differ from the normalised ones.
MODES = {"tmp": stat.S_IFDIR | 0o1777, "run": stat.S_IFDIR | 0o755}


def header(ino, mode, nlink, mtime, size, major, minor, name):
    fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, major, minor, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def entries(root):
    found = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found.append(os.path.relpath(path, root))
    for path in DEVICES:
        if path not in found:
            found.append(path)
    return sorted(found)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: mkcpio.py <staging dir> <output.cpio>")
    root, output = sys.argv[1], sys.argv[2]
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    out = bytearray()
    for ino, path in enumerate(entries(root), start=1):
        name = path.encode()
        data = b""
        major = minor = 0
        if path in DEVICES:
            mode, major, minor = DEVICES[path]
            nlink = 1
        else:
            full = os.path.join(root, path)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                mode, nlink = stat.S_IFDIR | 0o755, 2
            elif stat.S_ISLNK(st.st_mode):
                mode, nlink = stat.S_IFLNK | 0o777, 1
                data = os.readlink(full).encode()
            elif stat.S_ISREG(st.st_mode):
                executable = st.st_mode & 0o111
                mode, nlink = stat.S_IFREG | (0o755 if executable else 0o644), 1
                with open(full, "rb") as f:
                    data = f.read()
            else:
                sys.exit(f"mkcpio: {path}: only directories, files and symlinks are archived")
            mode = MODES.get(path, mode)
        out += header(ino, mode, nlink, mtime, len(data), major, minor, name)
        out += name + b"\0" + pad4(110 + len(name) + 1)
        out += data + pad4(len(data))
    out += header(0, 0, 1, 0, 0, 0, 0, b"TRAILER!!!") + b"TRAILER!!!\0" + pad4(110 + 11)
    with open(output, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
