import uuid

import pyarrow.fs as pafs
import pytest

from seedstory import storage


def test_s3fs_round_trip(s3):
    prefix = f"s3://{s3.bucket}/roundtrip-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(storage.join(prefix, "a", "one.bin"), b"\x00\x01payload")
    storage.write_bytes(storage.join(prefix, "a", "two.txt"), b"two")
    fs, path = storage.filesystem_for(prefix)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/a", refresh=True)) == ["one.bin", "two.txt"]
    assert storage.read_bytes(storage.join(prefix, "a", "one.bin")) == b"\x00\x01payload"
    fs.rm(f"{path}/a/one.bin")
    fs.invalidate_cache()
    assert not fs.exists(f"{path}/a/one.bin")
    assert fs.exists(f"{path}/a/two.txt")


def test_pyarrow_reads_what_s3fs_wrote(s3):
    uri = f"s3://{s3.bucket}/arrow/{uuid.uuid4().hex[:8]}.txt"
    storage.write_bytes(uri, b"hello arrow")
    fs, path = storage.arrow_filesystem_for(uri)
    assert isinstance(fs, pafs.S3FileSystem)
    with fs.open_input_stream(path) as stream:
        assert stream.read() == b"hello arrow"


def test_local_paths_use_the_local_filesystem(tmp_path):
    uri = str(tmp_path / "nested" / "file.bin")
    storage.write_bytes(uri, b"x")
    assert storage.read_bytes(uri) == b"x"


def test_settings_never_show_secrets():
    settings = storage.S3Settings.from_env(
        {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret", "AWS_SESSION_TOKEN": "tok"}
    )
    for text in (repr(settings), str(settings)):
        assert "very-secret" not in text and "AKIAEXAMPLE" not in text and "tok'" not in text
    assert settings.secret_key.get_secret_value() == "very-secret"


def test_split_uri_rejects_non_s3():
    assert storage.split_uri("s3://b/k/x") == ("b", "k/x")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        storage.split_uri("/local/path")


def test_a_folder_is_checked_writable_without_being_made(s3, tmp_path):
    storage.check_writable(str(tmp_path / "new" / "deeper"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        storage.check_writable(str(tmp_path / "file" / "story"))
    folder = f"s3://{s3.bucket}/checked-{uuid.uuid4().hex[:6]}"
    storage.check_writable(folder)
    fs, path = storage.filesystem_for(folder)
    fs.invalidate_cache()
    assert not [p for p in fs.find(path) if not fs.isdir(p)], "the probe is removed"
