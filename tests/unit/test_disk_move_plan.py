"""plan_move: a disk's qcow2 chain -> the files to carry to another host, and their rebases."""

from __future__ import annotations

import posixpath

from hypothesis import given
from hypothesis import strategies as st

from ravel.run.diskmove import Moved, Step, plan_move

SRC = "/srv/data/app/host-1/vm-disk0.qcow2"
DST = "/srv/data/app/host-2/vm-disk0.qcow2"
BASE = "/srv/run/images/0123456789abcdef-debian.qcow2"


def img(path: str, backing: str | None = None, fmt: str = "qcow2") -> dict:
    d = {"filename": path, "format": fmt}
    if backing is not None:
        d["backing-filename"] = backing
    return d


def test_a_blank_disk_is_one_file():
    assert plan_move([img(SRC)], SRC, DST) == [Step(SRC, DST, True)]


def test_an_overlay_keeps_its_base_where_it_is():
    steps = plan_move([img(SRC, BASE), img(BASE, fmt="vmdk")], SRC, DST)
    assert steps == [Step(BASE, BASE, False), Step(SRC, DST, True)]


def test_layers_move_with_the_disk_and_the_disk_is_rebased_onto_them():
    l1 = "/srv/data/app/host-1/layers/vm-disk0.s1.qcow2"
    l2 = "/srv/data/app/host-1/layers/vm-disk0.s2.qcow2"
    chain = [img(SRC, l2), img(l2, l1), img(l1, BASE), img(BASE)]
    assert plan_move(chain, SRC, DST) == [
        Step(BASE, BASE, False),
        Step(l1, "/srv/data/app/host-2/layers/vm-disk0.s1.qcow2", True),  # its base stays put
        Step(l2, "/srv/data/app/host-2/layers/vm-disk0.s2.qcow2", True,
             "/srv/data/app/host-2/layers/vm-disk0.s1.qcow2", "qcow2"),
        Step(SRC, DST, True, "/srv/data/app/host-2/layers/vm-disk0.s2.qcow2", "qcow2"),
    ]


def test_only_the_disk_and_its_own_layers_are_the_vms():
    # another VM's file next to it, or another disk's layer, is never taken (nor removed)
    other = "/srv/data/app/host-1/vm-disk1.qcow2"
    theirs = "/srv/data/app/host-1/layers/vm-disk1.s1.qcow2"
    steps = plan_move([img(SRC, theirs), img(theirs, other), img(other)], SRC, DST)
    assert [(s.src, s.dst, s.own) for s in steps] == [(other, other, False), (theirs, theirs, False), (SRC, DST, True)]
    assert steps[-1].backing is None  # still opens the same file, which stays where it is


def test_a_relative_backing_name_that_moves_along_needs_no_rebase():
    layer = "/srv/data/app/host-1/layers/vm-disk0.s1.qcow2"
    steps = plan_move([img(SRC, "layers/vm-disk0.s1.qcow2"), img(layer)], SRC, DST)
    assert [s.backing for s in steps] == [None, None] and steps[0].dst.startswith("/srv/data/app/host-2/")


def test_a_relative_name_to_a_base_outside_the_disk_directory_is_made_absolute():
    steps = plan_move([img(SRC, "../../../run/images/b.qcow2"), img("/srv/run/images/b.qcow2")],
                      "/srv/data/app/host-1/d.qcow2", "/srv/data/other/place/host-2/d.qcow2")
    assert steps[-1].backing == "/srv/run/images/b.qcow2"


def test_the_same_directory_on_both_hosts_changes_nothing_but_the_host():
    layer = "/srv/data/app/h/layers/vm-disk0.s1.qcow2"
    src = "/srv/data/app/h/vm-disk0.qcow2"
    steps = plan_move([img(src, layer), img(layer, BASE), img(BASE)], src, src)
    assert [(s.src == s.dst, s.backing) for s in steps] == [(True, None)] * 3


@given(st.integers(0, 6), st.booleans(), st.sampled_from(["/a/h1", "/a/b/h1"]), st.sampled_from(["/a/h2", "/z/h2/x"]))
def test_every_moved_file_is_backed_by_the_moved_file_below_it(depth, based, src_dir, dst_dir):
    src, dst = f"{src_dir}/vm-disk0.qcow2", f"{dst_dir}/vm-disk0.qcow2"
    files = [src] + [f"{src_dir}/layers/vm-disk0.s{i}.qcow2" for i in range(depth, 0, -1)] + ([BASE] if based else [])
    chain = [img(f, files[i + 1] if i + 1 < len(files) else None) for i, f in enumerate(files)]
    steps = plan_move(chain, src, dst)
    assert steps[-1] == Step(src, dst, True, steps[-1].backing, steps[-1].backing_format)
    assert [s.src for s in steps] == files[::-1]
    for below, above in zip(steps, steps[1:]):
        stored = chain[files.index(above.src)].get("backing-filename")
        assert (above.backing or stored) == below.dst  # what the target's copy will open
    for s in steps:
        assert s.own == (s.src != BASE)
        assert (posixpath.dirname(s.dst) + "/").startswith(dst_dir + "/") if s.own else s.dst == s.src


def test_what_a_move_says():
    assert "2 files, 1.5 MiB sent" in Moved(files=2, bytes=3 << 19).describe()
    assert "sha256 verified" in Moved(files=1, bytes=1).describe()
    assert "rename" in Moved(renamed=True).describe()
    both = Moved.total([Moved(files=1, bytes=1 << 20), Moved(files=2, bytes=1 << 20)])
    assert both.describe().startswith("3 files, 2.0 MiB sent")
    assert Moved.total([]).describe() == "nothing to carry"
    assert "already on the target" in Moved.total([Moved(finished=True), Moved()]).describe()
