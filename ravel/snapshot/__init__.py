"""Snapshots, the feature end to end on this machine: taking one (take.py), the store layout of
layers and manifests (layers.py), bringing layers from remote hosts (fetch.py), restoring one
for `ravel publish --from` (restore.py), which VMs resume from a saved memory state
(memory.py) and what a VM must keep to resume (machine.py). The host-side half (pausing,
freezing overlays, loading a memory state) is ravel/host/snapshot.py and ravel/host/resume.py.
"""
