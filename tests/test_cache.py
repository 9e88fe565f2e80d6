import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from covidct_core.errors import FeatureCacheError
from feature_extractor.cache.feature_cache import Compaction, FeatureCache, find_cache, list_caches, plan_merges
from feature_extractor.cache.segments import new_segment_name, write_h5
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
    assert len(cache) == 5 and len(list(cache.segments_dir.glob("*.h5"))) == 2
    wanted = [f"{i:064x}" for i in (4, 0, 2, 0)]
    np.testing.assert_array_equal(cache.read(wanted)[:, 0], [4, 0, 2, 0])  # from two segments
    with cache.lock():
        done = cache.compact()
    assert (done.segments_merged, done.segments_written, done.rows_copied) == (2, 1, 5)
    assert len(list(cache.segments_dir.glob("*.h5"))) == 1
    np.testing.assert_array_equal(cache.read(wanted)[:, 0], [4, 0, 2, 0])  # from the merged one
    with h5py.File(cache.path) as fh:
        assert fh.attrs["backbone"] == "vgg16" and fh.attrs["weights_sha256"] == "ab" * 32
        assert "numpy" in fh.attrs["provenance"] and fh.attrs["keras_version"]
        assert set(fh) == {"features", "key"}  # nothing about the image but its hash
    (segment,) = cache.segments_dir.glob("*.h5")
    with h5py.File(segment) as fh:
        assert set(fh) == {"features", "key"} and not fh.attrs.keys()
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


def test_a_key_appended_twice_is_served_once_and_its_copy_dropped_by_compaction(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(3), feats(3))
    cache.append(keys(3, start=2), feats(3, start=2) + 100)  # key 2 again, as a second writer could add it
    np.testing.assert_array_equal(cache.read(keys(5))[:, 0], [0, 1, 2, 103, 104])  # the first row of a key wins
    assert len(cache) == 5 and sorted(cache.segments().values()) == [0, 2, 3]  # head, then 3 + 2 served
    with cache.lock():
        assert cache.compact().rows_copied == 5
    np.testing.assert_array_equal(cache.read(keys(5))[:, 0], [0, 1, 2, 103, 104])
    with h5py.File(next(cache.segments_dir.glob("*.h5"))) as fh:
        assert len(fh["key"]) == 5


def test_half_written_segment_is_ignored_and_cleared_later(tmp_path):
    """A segment killed mid-write is only a .tmp file: readers never see it."""
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(2), feats(2))
    half = cache.segments_dir / ".00000000000000000001-1-deadbeef.h5.1.tmp"
    half.write_bytes(b"\x89HDF\r\n half a file")
    assert len(cache) == 2
    os.utime(half, (time.time() - 7200,) * 2)  # a killed writer's, hours ago
    with cache.lock():
        cache.compact()
    assert not half.exists() and len(cache) == 2


def test_a_segment_written_but_not_indexed_is_found(tmp_path):
    """kill -9 between the segment's rename and its index insert: the next reader indexes it."""
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(2), feats(2))
    write_h5(cache.segments_dir / new_segment_name(), feats(2, start=2), np.array(
        [k.encode() for k in keys(2, start=2)], "S64"))
    np.testing.assert_array_equal(FeatureCache(cache.path).read(keys(4))[:, 0], range(4))


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_lost_or_damaged_index_is_rebuilt_from_the_segments(tmp_path, damage, caplog):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    for start in range(0, 9, 3):
        cache.append(keys(3, start=start), feats(3, start=start))
    cache.index.delete()
    if damage == "garbage":
        cache.index.path.write_bytes(b"not sqlite " * 1000)
    np.testing.assert_array_equal(FeatureCache(cache.path).read(keys(9))[::-1, 0], range(8, -1, -1))
    assert damage == "deleted" or "key index" in caplog.text


def test_compaction_stops_half_way_and_the_cache_stays_whole(tmp_path):
    """The two states a killed compaction can leave: a merged copy nobody points at (killed
    before the index switched), or old segments nobody points at (killed after)."""
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    for start in range(0, 12, 3):
        cache.append(keys(3, start=start), feats(3, start=start))
    # before the switch: a full copy of all rows as a new segment
    write_h5(cache.segments_dir / new_segment_name(), feats(12), np.array([k.encode() for k in keys(12)], "S64"))
    # after the switch: an old segment whose rows the index now serves from elsewhere
    stale = cache.segments_dir / new_segment_name()
    write_h5(stale, feats(3) - 50, np.array([k.encode() for k in keys(3)], "S64"))
    np.testing.assert_array_equal(cache.read(keys(12))[:, 0], range(12))
    assert sorted(cache.segments().values()) == [0, 0, 0, 3, 3, 3, 3]  # head and the two dead ones serve nothing
    with cache.lock():
        done = cache.compact()
    assert done.dead_segments_removed == 2 and len(list(cache.segments_dir.glob("*.h5"))) == 1
    np.testing.assert_array_equal(cache.read(keys(12))[:, 0], range(12))


def test_compaction_leaves_big_segments_alone_and_copies_in_chunks(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    cache.append(keys(5000), feats(5000))  # "big" at segment_bytes 16 KiB: 1024-row target
    big = next(cache.segments_dir.glob("*.h5"))
    for start in range(5000, 5100, 10):
        cache.append(keys(10, start=start), feats(10, start=start))
    with cache.lock():
        done = cache.compact(segment_bytes=16 * 1024)
    assert (done.segments_merged, done.rows_copied) == (10, 100)
    assert big.exists() and len(cache.segments()) == 3  # head, the big one untouched, one merged
    np.testing.assert_array_equal(cache.read(keys(50, start=4975))[:, 0], range(4975, 5025))


def test_a_cache_written_before_segments_is_read_and_migrated_in_place(tmp_path):
    """Format 2 of the pre-segment writer: rows in the head file plus pending .npz batches."""
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    attrs = cache.attrs
    write_h5(cache.path, feats(3), np.array([k.encode() for k in keys(3)], "S64"), attrs)
    cache.pending_dir.mkdir()
    for start in (3, 5):
        with open(cache.pending_dir / f"{start:020d}-1-abcd.npz", "wb") as fh:
            np.savez(fh, features=feats(2, start=start), key=np.array([k.encode() for k in keys(2, start=start)], "S64"))
    head_bytes = cache.path.read_bytes()
    old = FeatureCache(cache.path)
    np.testing.assert_array_equal(old.read(keys(7))[:, 0], range(7))
    assert old.has_pending() and old.needs_compaction()
    with old.lock():
        assert old.compact().segments_merged == 2
    assert not old.has_pending() and not old.pending_dir.exists() and not old.needs_compaction()
    assert cache.path.read_bytes() == head_bytes  # the head is never rewritten
    np.testing.assert_array_equal(FeatureCache(cache.path).read(keys(7))[:, 0], range(7))


def _append_many(path, first, n_batches):
    cache = FeatureCache(path)
    for b in range(n_batches):
        start = first + 5 * b
        cache.append(keys(5, start=start), feats(5, start=start))


def test_concurrent_appends_and_a_compaction_keep_every_row(tmp_path):
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(cache.path, 1000 * w, 20)) for w in range(3)]
    for proc in writers:
        proc.start()
    while any(p.is_alive() for p in writers):
        with cache.lock():
            cache.compact()
        cache.read(cache.keys())  # readers meanwhile see whole segments only
    assert [p.exitcode for p in writers] == [0, 0, 0]
    with cache.lock():
        cache.compact()
    expected = [k for w in range(3) for k in keys(100, start=1000 * w)]
    assert sorted(cache.keys()) == sorted(expected)
    np.testing.assert_array_equal(cache.read(expected)[:, 0], [int(k, 16) for k in expected])


COMPACT_FOREVER = """
import sys
from feature_extractor.cache.feature_cache import FeatureCache
cache = FeatureCache(sys.argv[1])
print("go", flush=True)
with cache.lock():
    cache.compact(segment_bytes=int(sys.argv[2]))
print("done", flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_compaction_leaves_a_readable_cache_and_a_rerun_finishes(tmp_path):
    dim = 256
    cache = FeatureCache.create(tmp_path, SPEC, dim)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6000, dim)).astype(np.float32)
    all_keys = keys(6000)
    for start in range(0, 6000, 50):
        cache.append(all_keys[start:start + 50], rows[start:start + 50])
    killed_mid_run = 0
    for delay in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0):
        proc = subprocess.Popen([sys.executable, "-c", COMPACT_FOREVER, str(cache.path), str(2**20)],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout.readline().strip() == "go"
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.kill()
        proc.wait()
        killed_mid_run += not finished
        reopened = FeatureCache(cache.path)
        np.testing.assert_array_equal(reopened.read(all_keys), rows)  # every row, each exactly right
        if finished:
            break
    assert killed_mid_run >= 1
    with cache.lock():
        cache.compact(segment_bytes=2**20)
        assert cache.compact(segment_bytes=2**20) == Compaction()  # nothing left to merge
    sizes = sorted(n for name, n in cache.segments().items() if name != "@head")
    assert sum(sizes) == 6000 and len(sizes) <= 7 and min(sizes[1:]) >= 1024  # ~1 MiB segments, one partial
    np.testing.assert_array_equal(FeatureCache(cache.path).read(all_keys), rows)


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
        found.compact()
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


def test_merge_plan_is_size_tiered():
    target = 1 << 20
    plan = lambda sizes: plan_merges([(f"segments/{i}", n) for i, n in enumerate(sizes)], target)
    assert plan([100, 200]) == [["segments/0", "segments/1"]]  # one run's tiny batches
    assert plan([100_000, 300]) == []  # a new run's rows never drag a big segment along
    assert plan([100_000, 300, 500]) == [["segments/1", "segments/2"]]
    assert plan([5000, 6000, 7000]) == []  # three of a tier wait for the fourth
    assert plan([5000, 6000, 7000, 8000]) == [["segments/0", "segments/1", "segments/2", "segments/3"]]
    assert plan([target // 8] * 10) == []  # final size
    assert plan([1]) == []  # a lone tiny segment stays
    assert plan_merges([("pending/a.npz", 5)], target) == [["pending/a.npz"]]  # migrated alone


def test_a_compaction_landing_while_a_reader_syncs_loses_no_rows(tmp_path, monkeypatch):
    """The interleaving that once lost rows (CI, 2026-11-29): another process compacts while
    this one lists the folder; the index must still serve every key right after this sync."""
    cache = FeatureCache.create(tmp_path, SPEC, 4)
    for start in (0, 2):
        cache.append(keys(2, start=start), feats(2, start=start))
    listed_before = cache.folder.names

    def list_then_someone_compacts():
        names = listed_before()
        other = FeatureCache(cache.path)
        with other.lock():
            assert other.compact().segments_merged == 2  # after the listing
        return names

    monkeypatch.setattr(cache.folder, "names", list_then_someone_compacts)
    cache.index.sync()
    monkeypatch.undo()
    assert len(cache.index) == 4  # no sync in between: what a read would have found
    np.testing.assert_array_equal(cache.read(keys(4))[:, 0], range(4))
