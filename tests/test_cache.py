import h5py
import numpy as np
import pytest

from feature_extractor.cache import CacheRow, FeatureCache, list_caches
from feature_extractor.errors import FeatureCacheError

IDENTITY = {"backbone": "vgg16", "weights_source": "file", "weights_sha256": "ab" * 32,
            "input_height": 224, "input_width": 224, "preprocessing": "p", "pooling": "avg", "augment": "none", "window": "-600,1500",
            "precision": "float32", "crop": "none"}


def rows(n, start=0):
    return [CacheRow(f"{i:064x}", np.full(4, i, np.float32), f"/img/{i}.png", i % 2, f"p{i}", "train")
            for i in range(start, start + n)]


def test_append_and_read_in_requested_order(tmp_path):
    cache = FeatureCache.open_or_create(tmp_path, IDENTITY, 4, {"command": "test"})
    cache.append(rows(3))
    cache.append(rows(2, start=3))
    assert len(cache) == 5
    keys = [f"{i:064x}" for i in (4, 0, 2, 0)]
    np.testing.assert_array_equal(cache.read(keys)[:, 0], [4, 0, 2, 0])  # from pending batches
    assert cache.consolidate() == 5 and not cache.has_pending()
    np.testing.assert_array_equal(cache.read(keys)[:, 0], [4, 0, 2, 0])  # from the file
    with h5py.File(cache.path) as fh:
        assert fh.attrs["backbone"] == "vgg16" and fh.attrs["weights_sha256"] == "ab" * 32
        assert "numpy" in fh.attrs["provenance"] and fh.attrs["keras_version"]
        assert list(fh["label"][:]) == [0, 1, 0, 1, 0]
        assert fh["patient"][1].decode() == "p1"


def test_missing_keys_are_reported(tmp_path):
    cache = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    cache.append(rows(1))
    with pytest.raises(FeatureCacheError, match="1 of 2 images have no features"):
        cache.read([f"{0:064x}", "f" * 64])


def test_identity_decides_the_file(tmp_path):
    a = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    b = FeatureCache.open_or_create(tmp_path, {**IDENTITY, "input_height": 128}, 4)
    assert a.path != b.path
    assert FeatureCache.open_or_create(tmp_path, dict(IDENTITY), 4).path == a.path
    assert [c.path for c in list_caches(tmp_path, "vgg16")] and not list_caches(tmp_path, "resnet50")


def test_non_utf8_path_is_stored(tmp_path):
    cache = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    odd = b"/img/caf\xe9.png".decode("utf-8", "surrogateescape")
    cache.append([CacheRow("1" * 64, np.zeros(4, np.float32), odd)])
    cache.consolidate()
    with h5py.File(cache.path) as fh:
        assert "caf" in fh["path"][0].decode()


def test_rows_mix_file_and_pending_and_duplicates_are_merged_once(tmp_path):
    cache = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    cache.append(rows(3))
    cache.consolidate()
    cache.append(rows(3, start=2))  # key 2 again, as a second writer could add it
    np.testing.assert_array_equal(cache.read([f"{i:064x}" for i in range(5)])[:, 0], range(5))
    assert cache.consolidate() == 2 and len(cache) == 5


def test_half_written_batch_is_ignored(tmp_path):
    """A batch killed mid-write is only a .tmp file: readers never see it."""
    cache = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    cache.append(rows(2))
    (cache.pending_dir / "x.tmp").write_bytes(b"PK\x03\x04 half a zip")
    assert len(cache) == 2 and cache.consolidate() == 2


def test_lock_is_exclusive_across_processes(tmp_path):
    import fcntl
    import subprocess
    import sys

    cache = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys; fh = open(sys.argv[1], 'a+'); fcntl.flock(fh, fcntl.LOCK_EX); "
        "print('locked', flush=True); sys.stdin.readline()"), str(cache.lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with open(cache.lock_path, "a+") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.communicate("release\n")  # the holder exits, releasing the lock
    with cache.lock():
        pass


def test_caches_of_an_older_version_are_ignored(tmp_path):
    current = FeatureCache.open_or_create(tmp_path, IDENTITY, 4)
    old = tmp_path / "vgg16-file-old.h5"
    with h5py.File(old, "w") as fh:  # no "window" attribute: made before it was part of the identity
        for k, v in IDENTITY.items():
            if k != "window":
                fh.attrs[k] = v
    assert [c.path for c in list_caches(tmp_path, "vgg16")] == [current.path]
