"""The adversarial campaign against the tracker core and its checkpoints, kept as tests.

Every case feeds something a careless or hostile caller could feed (a broken state dict, a
corrupt or crafted checkpoint file, a rejected argument, an interrupted save, two threads) and
asserts three things: the promised exception type, a one-line message naming the argument, entry
or file, and the tracker's state (and the files on disk) bit-identical afterwards. The CLI's
cases (dump folders, output directories) live with the CLI's tests.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.distributed as dist

import tdds_kernels as tk
from tdds_kernels.core import atomic_files, checkpoint
from tdds_kernels.core.config import TrackerConfig
from tdds_kernels.core.state import TrackerState, initial_values
from tdds_kernels.distributed import ShardedTDDSTracker

from tests.support.helpers import FAST_CPU_BACKENDS, backend_cases, feed, random_epochs

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
N, C, W, T = 11, 4, 3, 6


def fed_tracker(backend, seed=0, epochs=4, half=True, **kw):
    """A tracker with baselines, `epochs` closed epochs and (half) part of an open one."""
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, backend=backend, on_nonfinite="skip", **kw)
    rng = np.random.default_rng(seed)
    for batches in random_epochs(rng, N, C, epochs + 1, p_missing=0.2, p_dup=0.2):
        for logits, index in batches[: len(batches) // 2] if half and tr.epoch == epochs else batches:
            tr.update(torch.as_tensor(logits), torch.as_tensor(index), torch.as_tensor(index % C))
        if tr.epoch == epochs:
            break
        tr.end_epoch()
    return tr


def snapshot(tracker):
    """Every piece of state, nested baselines included, plus the options, as flat copies."""

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}/")
            else:
                yield prefix + k, v.clone() if isinstance(v, torch.Tensor) else v

    local = getattr(tracker, "local", tracker)
    return dict(flat(local.state_dict()), run=getattr(tracker, "_run_id", None), saves=getattr(tracker, "_saves", None))


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k
        else:
            assert a[k] == b[k], k


def one_line(exc_info, *names):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for name in names:
        assert name in text, f"{name!r} not in {text!r}"
    return text


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


def broken_state_dicts(sd):
    """(id, broken dict, a name the error must mention) for every entry of a state dict."""
    cases = []
    for key, value in sd.items():
        if key == "on_out_of_range":  # optional: absent from checkpoints older than the option
            continue
        cases.append((f"missing-{key}", _drop(sd, key), key))
        cases.append((f"junk-{key}", {**sd, key: "junk"}, key))
        if isinstance(value, torch.Tensor):
            cases.append((f"dtype-{key}", {**sd, key: value.to(torch.float64)}, key))
            cases.append((f"shape-{key}", {**sd, key: value[:-1]}, key))
    bad_values = {
        "epoch": [-1, True, 3.0, sd["epoch"] + 1],  # the last disagrees with the counters' epoch slot
        "complete": [1, True, "False", None],  # True: not complete at this epoch
        "rows_in_epoch": [-1, "5", 2.5, True],
        "on_nonfinite": ["Skip", "errors", 1, None],
        "on_out_of_range": ["Skip", None, 0],
        "version": [3, "1", None, True, 1.0],
        "format": ["tdds_kernels.Other", None],
    }
    for key, values in bad_values.items():
        for i, value in enumerate(values):
            cases.append((f"value-{key}-{i}", {**sd, key: value}, key if key != "format" else "checkpoint"))
    counters = sd["counters"].clone()
    counters[-1] += 1
    cases.append(("counters-epoch-slot", {**sd, "counters": counters}, "counters"))
    counters = sd["counters"].clone()
    counters[0] = -1
    cases.append(("counters-negative", {**sd, "counters": counters}, "counters"))
    start = sd["epoch_start_counters"].clone()
    start[1] = sd["counters"][1] + 1
    cases.append(("start-above-counters", {**sd, "epoch_start_counters": start}, "epoch_start_counters"))
    for i, v in enumerate((sd["epoch"] + 1, -2)):
        seen = sd["seen"].clone()
        seen[3] = v
        cases.append((f"seen-range-{i}", {**sd, "seen": seen}, "seen"))
    for key in ("num_classes", "window", "storage_dtype"):
        cases.append((f"config-{key}", {**sd, "config": _drop(sd["config"], key)}, key))
    b = sd["baselines"]
    for key in ("count", "prob_ring", "config", "format"):
        cases.append((f"baselines-missing-{key}", {**sd, "baselines": _drop(b, key)}, "baselines"))
    cases.append(("baselines-shape", {**sd, "baselines": {**b, "el2n": b["el2n"][:-1]}}, "el2n"))
    cases.append(("baselines-window", {**sd, "baselines": {**b, "config": {**b["config"], "window": 1}}}, "window"))
    cases.append(("baselines-junk", {**sd, "baselines": ["junk"]}, "baselines"))
    counts = b["out_of_range_targets"]
    for i, bad in enumerate((counts[:1], counts.int(), torch.tensor([1, 2]), torch.tensor([-1, -1]))):
        cases.append((f"baselines-targets-{i}", {**sd, "baselines": {**b, "out_of_range_targets": bad}}, "targets"))
    # Tensors that pass every shape and dtype check but hold no data to copy (the meta device):
    # refused before the first copy, whichever entry it is.
    for key in ("prev", "seen", "ring", "score", "epoch_start_counters"):
        cases.append((f"meta-{key}", {**sd, key: sd[key].to("meta")}, key))
    cases.append(("meta-baselines", {**sd, "baselines": {**b, "el2n": b["el2n"].to("meta")}}, "el2n"))
    return cases


SOURCE = fed_tracker("reference", seed=1).state_dict()
CASES = broken_state_dicts(SOURCE)


# ---------------------------------------------------------------- state dicts: all or nothing
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_every_broken_state_dict_is_refused_and_changes_nothing(backend):
    dst = fed_tracker(backend, seed=2, epochs=2)  # a different state, so "unchanged" means something
    before = snapshot(dst)
    assert len(CASES) > 90
    for _, bad, name in CASES:
        with pytest.raises(ValueError) as info:
            dst.load_state_dict(bad)
        one_line(info, name)
        assert_same_state(before, snapshot(dst))
    dst.load_state_dict(SOURCE)  # and the intact one still loads
    assert torch.equal(dst.scores(), SOURCE["score"]) and dst.epoch == SOURCE["epoch"]


def test_a_source_that_requires_grad_leaves_no_autograd_in_the_state():
    dst = fed_tracker("reference", seed=2, epochs=2)
    score = SOURCE["score"].clone().requires_grad_()
    dst.load_state_dict({**SOURCE, "score": score})
    assert not dst._state.score.requires_grad and torch.equal(dst._state.score, SOURCE["score"])


@pytest.fixture(scope="module")
def world_of_one(tmp_path_factory):
    """A one-rank gloo group in this process: the sharded tracker's load paths without spawning."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_sharded_loads_are_all_or_nothing(world_of_one, backend):
    kw = dict(num_samples=N, num_classes=C, window=W, trajectory_len=T, backend=backend, on_nonfinite="skip")
    dst = ShardedTDDSTracker(**kw, process_group=world_of_one)
    feed(dst, random_epochs(np.random.default_rng(5), N, C, 2))
    before = snapshot(dst)
    for _, bad, name in CASES:
        with pytest.raises(ValueError) as info:
            dst.load_full_state_dict(bad)
        one_line(info, name)
        assert_same_state(before, snapshot(dst))
    # load_state_dict takes one rank's shard: the same cases, with a "shard" entry, and broken shard info
    info_ok = dst.state_dict()["shard"]
    shard_cases = [(i, {**bad, "shard": info_ok}, name) for i, bad, name in CASES if i != "junk-shard"]
    shard_cases += [(f"shard-{k}", {**SOURCE, "shard": {**info_ok, k: "x"}}, k) for k in ("run_id", "saves", "rank")]
    for _, bad, name in shard_cases:
        with pytest.raises(ValueError) as info:
            dst.load_state_dict(bad)
        one_line(info, name)
        assert_same_state(before, snapshot(dst))
    dst.load_full_state_dict(SOURCE)
    assert torch.equal(dst.local.scores(), torch.as_tensor(SOURCE["score"]))


def test_a_crafted_shard_file_cannot_make_load_allocate(world_of_one, tmp_path, monkeypatch):
    tr = ShardedTDDSTracker(N, C, window=W, backend="reference", process_group=world_of_one)
    tr.save(tmp_path / "s.pt")
    (file,) = tmp_path.glob("s.pt.rank0-of-1")
    sd = _drop(torch.load(file, weights_only=True), "checksums")  # a crafter would drop them
    allocations = []
    monkeypatch.setattr(TrackerState, "__init__", lambda *a: allocations.append(a) or 1 / 0)
    huge = 10**9
    for crafted in ({"shard": {**sd["shard"], "num_samples": huge}}, {"config": {**sd["config"], "num_samples": huge}}):
        torch.save({**sd, **crafted}, file)
        with pytest.raises(ValueError) as info:
            ShardedTDDSTracker.load(tmp_path / "s.pt", process_group=world_of_one)
        one_line(info, str(file))
    assert allocations == []


# ---------------------------------------------------------------- rejected arguments
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize(
    "targets,kind",
    [(torch.zeros(5), TypeError), (torch.full((5,), C), ValueError), (torch.zeros(4, dtype=torch.long), ValueError)],
    ids=["float", "out-of-range", "short"],
)
def test_rejected_targets_create_no_baselines(backend, targets, kind):
    tr = tk.TDDSTracker(N, C, window=W, backend=backend)
    before = snapshot(tr)
    with pytest.raises(kind) as info:
        tr.update(torch.randn(5, C), torch.arange(5), targets)
    one_line(info, "targets")
    assert_same_state(before, snapshot(tr))
    assert tr.baseline_state_dict() is None
    with pytest.raises(RuntimeError, match="no row was recorded with targets"):
        tr.baseline_scores()


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"window": 2}, "window"),
        ({"window": 1}, "window"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 5.0}, "num_samples"),
        ({"decay": 0.0}, "decay"),
        ({"decay": float("nan")}, "decay"),
        ({"trajectory_len": 2}, "trajectory_len"),
        ({"storage_dtype": torch.float64}, "storage_dtype"),
        ({"device": "cuda:99"}, "device"),
        ({"device": "nonsense"}, "device"),
        ({"backend": "nonsense"}, "backend"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_constructor_arguments_name_themselves(kw, name):
    with pytest.raises((TypeError, ValueError)) as info:
        tk.TDDSTracker(**({"num_samples": N, "num_classes": C, "window": W} | kw))
    one_line(info, name)


def test_numpy_scalars_are_accepted():
    tr = tk.TDDSTracker(np.int64(N), np.int32(C), window=np.int64(W), decay=np.float32(0.5), backend="reference")
    assert (tr.num_samples, tr.num_classes, tr.window) == (N, C, W) and type(tr.num_samples) is int
    assert tr.decay == float(np.float32(0.5))


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_bad_batches_change_nothing(backend):
    tr = fed_tracker(backend, epochs=1)
    before = snapshot(tr)
    x, i = torch.randn(3, C), torch.tensor([0, 1, 2])
    for logits, index, name in [
        (x.to_sparse(), i, "logits"),
        (x.double(), i, "logits"),
        (x[:, :-1], i, "logits"),
        (x, i.float(), "index"),
        (x, i[:2], "index"),
        (x, torch.tensor([0, 1, N]), "index"),
        (x, torch.tensor([0, -1, 2]), "index"),
        (x.numpy(), i, "logits"),
    ]:
        with pytest.raises((TypeError, ValueError)) as info:
            tr.update(logits, index)
        one_line(info, name)
        assert_same_state(before, snapshot(tr))


@pytest.mark.parametrize("value", ["errors", "Skip", None, 1])
@pytest.mark.parametrize("option", ["on_nonfinite", "on_out_of_range"])
def test_options_are_validated_on_assignment(option, value):
    tr = tk.TDDSTracker(N, C, window=W, backend="reference")
    with pytest.raises(ValueError) as info:
        setattr(tr, option, value)
    one_line(info, option)
    assert getattr(tr, option) == "error"
    with pytest.raises(ValueError):
        tk.TDDSTracker(N, C, window=W, backend="reference", **{option: value})


# ---------------------------------------------------------------- the deferred range check
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_out_of_range_skipped_when_compiling_has_a_way_out(backend, monkeypatch, tmp_path):
    # Under torch.compile (and on CUDA) update() cannot raise on a bad index without a host sync:
    # the kernels skip and count the rows, and end_epoch() decides. is_compiling() is what the
    # tracker asks, so faking it exercises the same path as a compiled step (the compiled test
    # below runs it for real).
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, backend=backend)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    tr.update(torch.randn(4, C), torch.tensor([0, 1, N, -1]))
    monkeypatch.undo()
    assert tr.epoch_counts()["out_of_range"] == 2
    before = snapshot(tr)
    for _ in range(2):  # the epoch stays open, and says how to close it
        with pytest.raises(ValueError) as info:
            tr.end_epoch()
        one_line(info, "index", "on_out_of_range = 'skip'")
        assert_same_state(before, snapshot(tr))
    tr.on_out_of_range = "skip"
    tr.save(tmp_path / "t.pt")
    assert tk.TDDSTracker.load(tmp_path / "t.pt", backend=backend).on_out_of_range == "skip"
    tr.end_epoch()
    assert tr.epoch == 1 and tr.stats["out_of_range"] == 2


@pytest.mark.parametrize("case", backend_cases(exclude=("cpu-reference", "cpu-cpu", "cpu-triton")))
def test_out_of_range_on_cuda_has_the_same_way_out(case):
    device, backend = case
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, device=device, backend=backend)
    tr.update(torch.randn(4, C, device=device), torch.tensor([0, 1, N, -1], device=device))  # no sync, no raise
    before = snapshot(tr)
    with pytest.raises(ValueError) as info:
        tr.end_epoch()
    one_line(info, "index", "on_out_of_range = 'skip'")
    assert_same_state(before, snapshot(tr))
    tr.on_out_of_range = "skip"
    tr.end_epoch()
    assert tr.epoch == 1 and tr.stats["out_of_range"] == 2 and int((tr._state.seen == 0).sum()) == 2


def test_out_of_range_in_a_really_compiled_update():
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, backend="reference")

    @torch.compile(backend="eager", fullgraph=True)
    def step(logits, index):
        tr.update(logits, index)

    step(torch.randn(3, C), torch.tensor([0, N + 5, 2]))
    assert tr.epoch_counts() == {"duplicates": 0, "missing": 0, "nonfinite": 0, "out_of_range": 1}
    with pytest.raises(ValueError, match="on_out_of_range"):
        tr.end_epoch()
    tr.on_out_of_range = "skip"
    tr.end_epoch()
    assert tr.epoch == 1


# ---------------------------------------------------------------- silent garbage now speaks
def test_scores_before_any_window_warn_and_select_on_ties_warns():
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, backend="reference")
    feed(tr, random_epochs(np.random.default_rng(0), N, C, W - 1))
    with pytest.warns(RuntimeWarning, match=r"no window has been folded yet .*1 more end_epoch"):
        scores = tr.scores()
    with pytest.warns(RuntimeWarning, match="all 11 scores are equal"):
        tk.select(scores, prune_fraction=0.5)
    feed(tr, random_epochs(np.random.default_rng(1), N, C, 1))
    with pytest.warns(RuntimeWarning, match="the trajectory is not complete"):  # W of the T epochs
        scores = tr.scores()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tk.select(scores, prune_fraction=0.5)  # a folded window, distinct scores: silent


@pytest.mark.parametrize("rows_per_epoch", [600, 300], ids=["full-epoch", "short-epoch"])
def test_labels_passed_as_index_are_named(rows_per_epoch):
    # 600 rows reach the forgotten-end_epoch check (once per N rows); 300 do not, and end_epoch hints.
    tr = tk.TDDSTracker(500, 5, window=W, backend="reference")
    labels = torch.randint(0, 5, (rows_per_epoch,))
    with pytest.warns(RuntimeWarning, match="the index looks like class labels") as record:
        for chunk in labels.split(50):
            tr.update(torch.randn(len(chunk), 5), chunk)
        tr.end_epoch()
    assert sum("class labels" in str(w.message) for w in record) == 1, "hinted once per epoch"


def test_end_epoch_twice_warns():
    tr = tk.TDDSTracker(N, C, window=W, backend="reference")
    feed(tr, random_epochs(np.random.default_rng(0), N, C, 1))
    with pytest.warns(RuntimeWarning, match="nothing was recorded in epoch 1"):
        tr.end_epoch()


# ---------------------------------------------------------------- checkpoint files are input
def saved(tmp_path, backend="reference"):
    path = tmp_path / "t.pt"
    fed_tracker(backend).save(path)
    return path


@pytest.mark.parametrize("name", ["prev", "score", "baselines/el2n", "ring"])
def test_a_flipped_tensor_byte_is_caught_naming_file_and_tensor(tmp_path, name):
    path = saved(tmp_path)
    sd = torch.load(path, weights_only=True)
    tensor = sd["baselines"]["el2n"] if name == "baselines/el2n" else sd[name]
    raw = bytearray(path.read_bytes())
    data = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0, "the tensor's bytes are stored once, uncompressed"
    raw[at + len(data) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(path)
    one_line(info, str(path), repr(name), "checksum")
    assert path.read_bytes() == bytes(raw)


def test_edited_entries_fail_the_checksum(tmp_path):
    path = saved(tmp_path)
    sd = torch.load(path, weights_only=True)
    edits = [({"config": {**sd["config"], "decay": 0.5}}, "non-tensor"), ({"score": sd["score"] + 1}, "score")]
    for edit, name in edits:
        torch.save({**sd, **edit}, path)
        with pytest.raises(ValueError) as info:
            tk.TDDSTracker.load(path)
        one_line(info, str(path), name)


def test_a_crafted_small_file_cannot_make_load_allocate(tmp_path, monkeypatch):
    sd = tk.TDDSTracker(N, C, window=W, backend="reference").state_dict()
    sd["config"]["num_samples"] = 10**9  # prev alone would be 16 GB; the tensors stay tiny
    path = tmp_path / "crafted.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 20_000
    allocations = []
    monkeypatch.setattr(TrackerState, "__init__", lambda *a: allocations.append(a) or 1 / 0)
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(path)
    one_line(info, str(path), "prev", "1000000000")
    assert allocations == [], "the state was allocated before the tensors were checked"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "zip-garbage", "evil-pickle", "evil-torch-save"])
def test_unreadable_files_give_one_line(tmp_path, kind):
    path = saved(tmp_path)
    good = path.read_bytes()
    _Evil.marker = tmp_path / "pwned"
    content = {
        "random": np.random.default_rng(0).bytes(9000),
        "truncated": good[: len(good) * 2 // 3],
        "empty": b"",
        "zip-garbage": b"PK\x03\x04" + np.random.default_rng(1).bytes(2000),
        "evil-pickle": pickle.dumps({"format": checkpoint.FORMAT, "x": _Evil()}, protocol=2),
    }.get(kind)
    if content is None:
        torch.save({"format": checkpoint.FORMAT, "x": _Evil()}, path)
    else:
        path.write_bytes(content)
    written = path.read_bytes()
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(path)
    one_line(info, str(path), "not a readable tdds_kernels.TDDSTracker checkpoint")
    assert not _Evil.marker.exists(), "a pickle ran code"
    assert path.read_bytes() == written
    if kind == "evil-torch-save":
        assert "weights_only refused it" in str(info.value)
    if kind == "evil-pickle":  # a bare pickle is torch's older format: refused before any unpickling
        assert "not a zip archive" in str(info.value)
    with pytest.raises(FileNotFoundError):
        tk.TDDSTracker.load(tmp_path / "absent.pt")


# ---------------------------------------------------------------- interrupted saves
def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_the_same_path_are_removed_on_the_next_save(tmp_path):
    path = saved(tmp_path)
    dead, old = _dead_pid(), time.time() - 2 * atomic_files.STALE_TEMP_AGE_S
    names = {
        f".t.pt.{dead}.abcd_123.tmp": (old, False),  # a killed writer's: removed
        ".t.pt.zyxw9876.tmp": (old, False),  # the pid-less pattern of earlier versions: removed
        f".t.pt.{dead}.fresh123.tmp": (time.time(), True),  # fresh: maybe another host's writer
        f".t.pt.{os.getpid()}.live1234.tmp": (old, True),  # its writer is alive
        f".u.pt.{dead}.other123.tmp": (old, True),  # another checkpoint's
        f".t.pt.{dead}.toolong123.tmp": (old, True),  # not our pattern
        "t.pt.tmp": (old, True),
    }
    for name, (mtime, _) in names.items():
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (mtime, mtime))
    fed_tracker("reference", seed=3).save(path)
    left = set(os.listdir(tmp_path))
    assert left == {"t.pt"} | {n for n, (_, keep) in names.items() if keep}
    tk.TDDSTracker.load(path)


KILLED_SAVER = textwrap.dedent("""
    import sys, torch, tdds_kernels as tk
    tr = tk.TDDSTracker(400_000, 50, window=3, backend="reference")  # prev: 80 MB
    print("ready", flush=True)
    while True:
        tr.save(sys.argv[1])
""")


def _kill_mid_save(path):
    """Start a process saving `path` in a loop, kill -9 it while a temporary file is being
    written; returns its pid and the temporary files left (none if the kill landed between two
    writes, which the caller retries)."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.time() + 60
        while not (path.exists() and any(n.endswith(".tmp") for n in os.listdir(path.parent))):
            assert time.time() < deadline, "the saver never started a second write"
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    return proc.pid, [path.parent / n for n in os.listdir(path.parent) if n.endswith(".tmp")]


def test_kill_9_mid_save_leaves_a_temp_that_the_next_save_removes(tmp_path):
    path = tmp_path / "big.pt"
    for _ in range(4):
        pid, temps = _kill_mid_save(path)
        if temps:
            break
    assert temps and all(t.name.startswith(f".big.pt.{pid}.") for t in temps)
    tk.TDDSTracker.load(path)  # the previous complete file survived the kill
    old = time.time() - 2 * atomic_files.STALE_TEMP_AGE_S  # as if the next save came a while later
    for t in temps:
        os.utime(t, (old, old))
    checkpoint.save_atomic({"x": 1}, path)
    assert os.listdir(tmp_path) == ["big.pt"]


# ---------------------------------------------------------------- threads
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_a_second_thread_inside_update_raises_and_changes_nothing(backend, monkeypatch):
    tr = tk.TDDSTracker(N, C, window=W, backend=backend)
    inside, release = threading.Event(), threading.Event()
    real = tr._backend.update

    def slow(*args):  # holds the first thread inside update() until the second has tried
        inside.set()
        assert release.wait(10)
        real(*args)

    monkeypatch.setattr(tr, "_backend", dataclasses.replace(tr._backend, update=slow))
    first = threading.Thread(target=tr.update, args=(torch.randn(3, C), torch.tensor([0, 1, 2])))
    first.start()
    assert inside.wait(10)
    before = tr._state.to_dict()  # state_dict() itself refuses while update() runs (below)
    for call in (lambda: tr.update(torch.randn(2, C), torch.tensor([3, 4])), tr.end_epoch):
        with pytest.raises(RuntimeError) as info:
            call()
        one_line(info, "not thread-safe", "TDDSTracker")
        assert_same_state(before, tr._state.to_dict())
    release.set()
    first.join()
    assert int((tr._state.seen == 0).sum()) == 3 and tr.rows_in_epoch == 3
    tr.update(torch.randn(2, C), torch.tensor([3, 4]))  # free again once the first returned
    assert tr.rows_in_epoch == 5


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_state_dict_from_another_thread_during_update_raises(backend, monkeypatch, tmp_path):
    # A state_dict() taken while update() is half-way would hold a half-recorded batch (prev and
    # seen written, counters not yet) that load_state_dict accepts: it raises as update() does.
    tr = fed_tracker(backend, epochs=1)
    good = tr.state_dict()
    inside, release = threading.Event(), threading.Event()
    real = tr._backend.update

    def slow(*args):
        real(*args)  # the batch is recorded ...
        inside.set()
        assert release.wait(10)  # ... and the thread is still inside update()

    monkeypatch.setattr(tr, "_backend", dataclasses.replace(tr._backend, update=slow))
    first = threading.Thread(target=tr.update, args=(torch.randn(3, C), torch.tensor([0, 1, 2])))
    first.start()
    try:
        assert inside.wait(10)
        for name, call in [
            ("state_dict", tr.state_dict),
            ("save", lambda: tr.save(tmp_path / "t.pt")),
            ("load_state_dict", lambda: tr.load_state_dict(good)),
        ]:
            with pytest.raises(RuntimeError) as info:
                call()
            one_line(info, "not thread-safe", "state_dict" if name == "save" else name)
        assert not (tmp_path / "t.pt").exists()
    finally:
        release.set()
        first.join()
    assert tr.state_dict()["rows_in_epoch"] == good["rows_in_epoch"] + 3  # free again, whole batch in


# ---------------------------------------------------------------- labels the kernels left out
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_out_of_range_labels_skipped_when_compiling_are_reported(backend, monkeypatch, tmp_path):
    # As indices: inside a compiled step (and on CUDA) a label outside [0, C) cannot raise at the
    # update; the op leaves the row out of the baselines, the tracker counts it and end_epoch
    # decides, with the same option. Faking is_compiling takes the compiled path (below for real).
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, backend=backend)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    tr.update(torch.randn(4, C), torch.tensor([0, 1, 2, 3]), torch.tensor([0, C, -1, 1]))
    monkeypatch.undo()
    assert tr.epoch_counts()["out_of_range"] == 0  # the TDDS rows were all applied
    tr.save(tmp_path / "t.pt")  # the count travels with the open epoch
    for t in (tr, tk.TDDSTracker.load(tmp_path / "t.pt", backend=backend)):
        before = snapshot(t)
        with pytest.raises(ValueError) as info:
            t.end_epoch()
        one_line(info, "targets", "2 rows of epoch 0", f"[0, {C})", "on_out_of_range = 'skip'")
        assert_same_state(before, snapshot(t))
        t.on_out_of_range = "skip"
        t.end_epoch()
        assert t.epoch == 1 and t.baseline_state_dict()["out_of_range_targets"].tolist() == [2, 2]
        assert int(t.baseline_scores()["aum"].isfinite().sum()) == 2  # rows 0 and 3 only
    tr.update(torch.randn(2, C), torch.tensor([4, 5]), torch.tensor([0, 1]))
    tr.end_epoch()  # a clean epoch closes whatever the option
    assert tr.epoch == 2


@pytest.mark.parametrize("case", backend_cases(exclude=("cpu-reference", "cpu-cpu", "cpu-triton")))
def test_out_of_range_labels_on_cuda_have_the_same_way_out(case, tmp_path):
    device, backend = case
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, device=device, backend=backend)
    x, index = torch.randn(4, C, device=device), torch.arange(4, device=device)
    tr.update(x, index, torch.tensor([0, C, -1, 1], device=device))  # no sync, no raise
    before = snapshot(tr)
    with pytest.raises(ValueError) as info:
        tr.end_epoch()
    one_line(info, "targets", "2 rows of epoch 0", "on_out_of_range = 'skip'")
    assert_same_state(before, snapshot(tr))
    tr.save(tmp_path / "t.pt")
    back = tk.TDDSTracker.load(tmp_path / "t.pt", device=device, backend=backend)
    for t in (tr, back):
        t.on_out_of_range = "skip"
        t.end_epoch()
        assert t.epoch == 1 and t.baseline_state_dict()["out_of_range_targets"].tolist() == [2, 2]


def test_out_of_range_labels_in_a_really_compiled_update():
    tr = tk.TDDSTracker(N, C, window=W, trajectory_len=T, backend="reference")

    @torch.compile(fullgraph=True)  # inductor, the default: what a training script gets
    def step(logits, index, targets):
        tr.update(logits, index, targets)

    step(torch.randn(3, C), torch.tensor([0, 1, 2]), torch.tensor([C + 5, 1, 2]))
    step(torch.randn(3, C), torch.tensor([3, 4, 5]), torch.tensor([0, -3, 2]))
    assert tr.epoch_counts()["out_of_range"] == 0
    with pytest.raises(ValueError) as info:
        tr.end_epoch()
    one_line(info, "targets", "2 rows of epoch 0", "on_out_of_range")
    tr.on_out_of_range = "skip"
    tr.end_epoch()
    assert tr.epoch == 1 and tr.baseline_state_dict()["out_of_range_targets"].tolist() == [2, 2]


# ---------------------------------------------------------------- files that describe more than they hold
CRAFTED_LOAD = textwrap.dedent("""
    import re, sys
    import tdds_kernels as tk

    def status_kb(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    # A valid small checkpoint first: `import tdds_kernels` is lazy, so the first load imports
    # torch's and the library's modules; their memory is not what this test measures.
    tk.TDDSTracker.load(sys.argv[2])
    # Reset the peak to the current RSS (the imports peaked higher than where they left it), so
    # the peak read after the load is what the load itself reached.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    try:
        tk.TDDSTracker.load(sys.argv[1])
        print("LOADED")
    except ValueError as exc:
        print("ValueError:", exc)
    print("GROWTH_KB", status_kb("VmHWM") - before)
""")


def crafted_file(path, num_samples, num_classes, checksums=False):
    """A fresh tracker's state dict whose tensors are stride-0 views shaped for `num_samples`:
    a few KB on disk, a whole state once materialised."""
    sd = tk.TDDSTracker(N, num_classes, window=W, backend="reference").state_dict()
    sd["config"]["num_samples"] = num_samples
    sd.update(initial_values(TrackerConfig.from_dict(sd["config"])))
    if checksums:
        sd["checksums"] = checkpoint.checksums(sd)
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("num_samples", [2 * 10**6, 10**8], ids=["2e6", "1e8"])
def test_a_crafted_stride_0_file_allocates_nothing(tmp_path, num_samples):
    # prev alone: 0.8 GB at N = 2e6, 40 GB at N = 1e8 (C = 100), from a 3 KB file.
    path = crafted_file(tmp_path / "crafted.pt", num_samples, 100)
    assert path.stat().st_size < 10_000
    small = tmp_path / "small.pt"
    tk.TDDSTracker(N, 100, window=W, backend="reference").save(small)
    out = subprocess.run(
        [sys.executable, "-c", CRAFTED_LOAD, str(path), str(small)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    error = next(line for line in out.splitlines() if line.startswith(("ValueError", "LOADED")))
    assert error.startswith("ValueError") and all(s in error for s in (str(path), "'prev'", "(an expanded")), error
    growth_mb = int(out.split("GROWTH_KB")[1]) / 1024
    assert growth_mb < 100, f"load grew the peak RSS by {growth_mb:.0f} MB"


def test_valid_checksums_do_not_make_a_stride_0_file_loadable(tmp_path):
    path = crafted_file(tmp_path / "crafted.pt", 5000, C, checksums=True)
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(path)
    one_line(info, str(path), "'prev'", "the file stores")


def test_stride_0_baselines_and_shared_storages_are_refused(tmp_path):
    sd = fed_tracker("reference").state_dict()
    path = tmp_path / "t.pt"
    torch.save({**sd, "baselines": {**sd["baselines"], "el2n": torch.zeros(()).expand(N)}}, path)
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(path)
    one_line(info, str(path), "'baselines/el2n'")
    # Views of one storage: each alone fits in it, together they describe more than the file holds.
    big = torch.zeros(4 * 10**5)
    torch.save({**sd, "junk": [big[:300000], big[:300000], big[:300000], big[:300000], big[:300000]]}, path)
    assert path.stat().st_size < 2 * 10**6  # one 1.6 MB storage, five views of 1.2 MB each
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(path)
    one_line(info, str(path), "more than the file's")


def _rewrite_zip(src, dst, compress=zipfile.ZIP_STORED, edit=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compress) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, edit(info.filename, data) if edit else data)


def test_archive_records_are_checked_against_the_file(tmp_path):
    good = saved(tmp_path)
    deflated = tmp_path / "deflated.pt"
    _rewrite_zip(good, deflated, zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(deflated)
    one_line(info, str(deflated), "is compressed")
    # A central directory that claims a record far larger than the file.
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        name = next(i.filename for i in zf.infolist() if i.filename.endswith("data/0")).encode()
    entries = [i for i in range(len(raw)) if raw[i : i + 4] == b"PK\x01\x02"]  # central directory
    at = next(i for i in entries if raw[i + 46 : i + 46 + len(name)] == name)
    raw[at + 20 : at + 28] = (2**31).to_bytes(4, "little") * 2  # compressed and uncompressed size
    claimed = tmp_path / "claimed.pt"
    claimed.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        tk.TDDSTracker.load(claimed)
    one_line(info, str(claimed), "not a readable")


def test_another_ranks_shard_names_tracker_state(world_of_one):
    # What rank 1 of 2 meets when Accelerate saved rank 0's shard alone (the tracker registered
    # instead of TrackerState): the message says what to register.
    tr = ShardedTDDSTracker(N, C, window=W, backend="reference", process_group=world_of_one)
    sd = tr.state_dict()
    with pytest.raises(ValueError) as info:
        tr.load_state_dict({**sd, "shard": {**sd["shard"], "rank": 1}})
    one_line(info, "shard rank", "TrackerState(tracker)")
