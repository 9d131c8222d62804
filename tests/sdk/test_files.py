"""Files through the SDK's `files`: read, write, list, info, make_dir, rename, remove, users,
metadata, several files at once, gzip, large files, and the SDK's errors."""

import hashlib
import io
import os

import pytest
from e2b import FileType, NotFoundException
from e2b.exceptions import SandboxException


def test_write_read_text_and_bytes(sbx, workdir):
    info = sbx.files.write(f"{workdir}/a.txt", "hello ✓")
    assert info.path == f"{workdir}/a.txt"
    assert info.name == "a.txt"
    assert sbx.files.read(f"{workdir}/a.txt") == "hello ✓"
    sbx.files.write(f"{workdir}/b.bin", bytes(range(256)))
    assert bytes(sbx.files.read(f"{workdir}/b.bin", format="bytes")) == bytes(range(256))


def test_write_creates_parents_and_overwrites(sbx, workdir):
    sbx.files.write(f"{workdir}/x/y/z.txt", "one")
    sbx.files.write(f"{workdir}/x/y/z.txt", "two")
    assert sbx.files.read(f"{workdir}/x/y/z.txt") == "two"


def test_relative_paths_resolve_against_home(sbx, workdir, home):
    name = os.path.basename(workdir)
    sbx.files.write(f"{name}/rel.txt", "r")
    assert sbx.files.read(f"{workdir}/rel.txt") == "r"


def test_get_info_fields(sbx, workdir):
    sbx.files.write(f"{workdir}/f.txt", "12345")
    i = sbx.files.get_info(f"{workdir}/f.txt")
    assert (i.name, i.type, i.size, i.owner, i.group) == ("f.txt", FileType.FILE, 5, "user", "user")
    assert i.permissions == "-rw-r--r--"
    assert i.mode & 0o777 == 0o644
    assert i.modified_time.year >= 2024
    d = sbx.files.get_info(workdir)
    assert d.type == FileType.DIR and d.permissions.startswith("d")
    sbx.commands.run(f"ln -s {workdir}/f.txt {workdir}/link")
    link = sbx.files.get_info(f"{workdir}/link")
    assert link.symlink_target == f"{workdir}/f.txt"
    assert link.type == FileType.SYMLINK  # the SDK maps is_symlink to SYMLINK


def test_list_with_depth(sbx, workdir):
    sbx.files.write(f"{workdir}/top.txt", "t")
    sbx.files.write(f"{workdir}/sub/deep.txt", "d")
    names1 = sorted(e.name for e in sbx.files.list(workdir))
    assert names1 == ["sub", "top.txt"]
    paths2 = sorted(e.path for e in sbx.files.list(workdir, depth=2))
    assert paths2 == [f"{workdir}/sub", f"{workdir}/sub/deep.txt", f"{workdir}/top.txt"]


def test_exists_make_dir_rename_remove(sbx, workdir):
    assert sbx.files.exists(f"{workdir}/nope") is False
    assert sbx.files.make_dir(f"{workdir}/d/e") is True
    assert sbx.files.make_dir(f"{workdir}/d/e") is False
    assert sbx.files.exists(f"{workdir}/d/e") is True
    sbx.files.write(f"{workdir}/old.txt", "o")
    moved = sbx.files.rename(f"{workdir}/old.txt", f"{workdir}/new/place.txt")
    assert moved.path == f"{workdir}/new/place.txt"
    assert sbx.files.exists(f"{workdir}/old.txt") is False
    sbx.files.remove(f"{workdir}/d")
    assert sbx.files.exists(f"{workdir}/d") is False


def test_missing_files_raise_not_found(sbx, workdir):
    with pytest.raises(NotFoundException):
        sbx.files.read(f"{workdir}/missing.txt")
    with pytest.raises(NotFoundException):
        sbx.files.get_info(f"{workdir}/missing.txt")
    # Removing what is not there is not an error, as with envd.
    sbx.files.remove(f"{workdir}/missing.txt")
    assert not sbx.files.exists(f"{workdir}/missing.txt")


def test_reading_a_directory_is_a_clear_error(sbx, workdir):
    with pytest.raises(SandboxException) as e:
        sbx.files.read(workdir)
    assert "is a directory" in str(e.value)


def test_users_own_what_they_write_and_cannot_reach_roots_home(sbx, workdir):
    root_home = sbx.commands.run("echo $HOME", user="root").stdout.strip()
    sbx.files.write(f"{root_home}/by-root.txt", "r", user="root")
    assert sbx.files.get_info(f"{root_home}/by-root.txt", user="root").owner == "root"
    with pytest.raises(SandboxException):
        sbx.files.read(f"{root_home}/by-root.txt")
    with pytest.raises(SandboxException):
        sbx.files.write(f"{root_home}/by-user.txt", "u")
    assert not sbx.files.exists(f"{root_home}/by-user.txt", user="root")
    sbx.files.remove(f"{root_home}/by-root.txt", user="root")


def test_write_files_several_at_once(sbx, workdir):
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    infos = sbx.files.write_files([WriteEntry(path=f"{workdir}/m{i}.txt", data=f"m{i}") for i in range(3)])
    assert sorted(i.path for i in infos) == [f"{workdir}/m{i}.txt" for i in range(3)]
    assert [sbx.files.read(f"{workdir}/m{i}.txt") for i in range(3)] == ["m0", "m1", "m2"]


def test_gzip_octet_stream_upload(sbx, workdir):
    data = b"compress me " * 1000
    sbx.files.write(f"{workdir}/g.txt", data, gzip=True)
    assert bytes(sbx.files.read(f"{workdir}/g.txt", format="bytes")) == data


def test_metadata_round_trip(sbx, workdir):
    sbx.files.write(f"{workdir}/meta.txt", "m", metadata={"Owner": "alice", "stage": "2"})
    assert sbx.files.get_info(f"{workdir}/meta.txt").metadata == {"owner": "alice", "stage": "2"}
    sbx.files.write(f"{workdir}/meta.txt", "m2", metadata={"only": "this"})
    assert sbx.files.get_info(f"{workdir}/meta.txt").metadata == {"only": "this"}


def test_large_file_streams_both_ways(sbx, workdir):
    size = 32 << 20
    blob = os.urandom(1 << 20) * 32
    digest = hashlib.sha256(blob).hexdigest()
    sbx.files.write(f"{workdir}/big.bin", io.BytesIO(blob))
    assert sbx.files.get_info(f"{workdir}/big.bin").size == size
    h = hashlib.sha256()
    for chunk in sbx.files.read(f"{workdir}/big.bin", format="stream"):
        h.update(chunk)
    assert h.hexdigest() == digest
    out = sbx.commands.run(f"sha256sum {workdir}/big.bin").stdout.split()[0]
    assert out == digest
