import json
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from feature_extractor.cache import FeatureCache, find_cache, list_caches
from feature_extractor.errors import FeatureCacheError
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.weights import WeightsChoice

SPEC = FeatureSpec("vgg16", "none", weights_sha256="ab" * 32)


def keys(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def feats(n, start=0):
    return np.stack([np.full(4, i, np.float32) for i in range(start, start + n)])


def test_append_and_read_in_requested_order(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4, {"command": "test"})
    cache.append(keys(3), feats(3))
    cache.append(keys(2, start=3), feats(2, start=3))
    assert len(cache) == 5
    wanted = [f"{i:064x}" for i in (4, 0, 2, 0)]
    np.testing.assert_array_equal(cache.read(wanted)[:, 0], [4, 0, 2, 0])  # from pending batches
    assert cache.consolidate() == 5 and not cache.has_pending()
    np.testing.assert_array_equal(cache.read(wanted)[:, 0], [4, 0, 2, 0])  # from the file
    with h5py.File(cache.path) as fh:
        assert fh.attrs["backbone"] == "vgg16" and fh.attrs["weights_sha256"] == "ab" * 32
        assert "numpy" in fh.attrs["provenance"] and fh.attrs["keras_version"]
        assert set(fh) == {"features", "key"}  # nothing about the image but its hash
    assert FeatureCache(cache.path).spec == SPEC


def test_missing_keys_are_reported(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(1), feats(1))
    with pytest.raises(FeatureCacheError, match="1 of 2 images have no features"):
        cache.read([f"{0:064x}", "f" * 64])


def test_spec_decides_the_file(tmp_path):
    a = FeatureCache.create(tmp_path, SPEC, 4)
    other = FeatureSpec("vgg16", "none", weights_sha256="ab" * 32, input_size=(128, 128))
    b = FeatureCache.create(tmp_path, other, 4)
    assert a.path != b.path
    assert find_cache(tmp_path, FeatureSpec("vgg16", "none", weights_sha256="ab" * 32)).path == a.path
    assert find_cache(tmp_path, FeatureSpec("vgg16", "none", weights_sha256="cd" * 32)) is None
    assert [c.path for c in list_caches(tmp_path, "vgg16")] and not list_caches(tmp_path, "resnet50")


def test_rows_mix_file_and_pending_and_duplicates_are_merged_once(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(3), feats(3))
    cache.consolidate()
    cache.append(keys(3, start=2), feats(3, start=2))  # key 2 again, as a second writer could add it
    np.testing.assert_array_equal(cache.read(keys(5))[:, 0], range(5))
    assert cache.consolidate() == 2 and len(cache) == 5


def test_half_written_batch_is_ignored(tmp_path):
    """A batch killed mid-write is only a .tmp file: readers never see it."""
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(2), feats(2))
    (cache.pending_dir / "x.tmp").write_bytes(b"PK\x03\x04 half a zip")
    assert len(cache) == 2 and cache.consolidate() == 2


def test_lock_excludes_other_processes_and_waits_for_them(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    probe = ("import fcntl, sys\nfh = open(sys.argv[1], 'a+')\ntry:\n    fcntl.flock(fh, fcntl.LOCK_EX | "
             "fcntl.LOCK_NB)\n    print('free')\nexcept BlockingIOError:\n    print('held')")
    with cache.lock():  # while we hold it, another process cannot take it
        held = subprocess.run([sys.executable, "-c", probe, str(cache.lock_path)], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    assert held == "held"
    assert subprocess.run([sys.executable, "-c", probe, str(cache.lock_path)], capture_output=True,
                          text=True, timeout=60).stdout.strip() == "free"

    # ... and a second writer waits until the first lets go
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom feature_extractor.cache import FeatureCache\nwith FeatureCache(sys.argv[1]).lock():\n"
        "    print('locked', flush=True)\n    sys.stdin.readline()"), str(cache.path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    acquired = threading.Event()

    def second_writer():
        with cache.lock():
            acquired.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(0.5)
    assert not acquired.is_set()  # still waiting for the holder
    holder.communicate("release\n")
    thread.join(timeout=30)
    assert acquired.is_set()


def write_format_1_cache(path, spec_attrs, n=3):
    """A cache exactly as version 1 wrote it: other attribute spellings, more columns."""
    with h5py.File(path, "w") as fh:
        for k, v in spec_attrs.items():
            fh.attrs[k] = v
        fh.attrs["format_version"] = 1
        fh.attrs["feature_dim"] = 4
        fh.attrs["provenance"] = json.dumps({"weights_path": "/weights/v.h5"})
        fh.create_dataset("features", data=feats(n), maxshape=(None, 4))
        fh.create_dataset("key", data=np.array([k.encode() for k in keys(n)], "S64"), maxshape=(None,))
        fh.create_dataset("label", data=np.zeros(n, np.int8), maxshape=(None,))
        for name in ("path", "patient", "split"):
            fh.create_dataset(name, data=np.array(["x"] * n, dtype=object), dtype=h5py.string_dtype())


FORMAT_1 = {"backbone": "vgg16", "weights_source": "file", "weights_sha256": "ab" * 32, "input_height": 224,
            "input_width": 224, "preprocessing": "keras.applications.vgg16.preprocess_input",
            "pooling": "multiscale", "augment": "flip", "precision": "bfloat16", "crop": "lungs-v1",
            "window": "-600,1500"}


def test_a_format_1_cache_is_found_read_and_extended(tmp_path):
    old = tmp_path / "vgg16-file-0123456789ab.h5"  # named by the old identity hash
    write_format_1_cache(old, FORMAT_1)
    # as a model made then asks for them: crop version 1
    spec = FeatureSpec("vgg16", WeightsChoice("file", "/elsewhere/v.h5"), weights_sha256="ab" * 32,
                       pooling="multiscale", tta="flip", precision="bf16", crop="lungs", crop_version=1)
    found = find_cache(tmp_path, spec)
    assert found is not None and found.path == old
    assert found.spec.identity() == spec.identity() and found.spec.crop_version == 1
    assert found.spec.weights.path == "/weights/v.h5"  # where it was extracted from (provenance)
    np.testing.assert_array_equal(found.read(keys(3))[:, 0], [0, 1, 2])
    with found.lock():
        found.append(keys(2, start=3), feats(2, start=3))
        found.consolidate()
    np.testing.assert_array_equal(FeatureCache(old).read(keys(5))[:, 0], range(5))
    assert FeatureCache(old).spec.identity() == spec.identity()  # still read as the same features after the rewrite


def test_caches_of_an_unreadable_older_format_are_ignored(tmp_path):
    current = FeatureCache.create(tmp_path, SPEC, 4)
    with h5py.File(tmp_path / "vgg16-file-old.h5", "w") as fh:  # format 1 without "window"
        for k, v in FORMAT_1.items():
            if k != "window":
                fh.attrs[k] = v
        fh.attrs["format_version"] = 1
    assert [c.path for c in list_caches(tmp_path, "vgg16")] == [current.path]
