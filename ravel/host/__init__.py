"""ravel host runtime: reconciles one host to its desired state.

Runs ON a host (a network namespace locally, a cloud instance otherwise), so it uses the
Python standard library only and imports nothing from the rest of ravel: it is shipped as a
zipapp (see ``bundle.build_zipapp``) and run with ``python3 host.pyz <command>``.

Layers, one way:

- ``desired``   parse and validate the desired-state document (version 1)
- ``facts``     observe the host: links, FDB, VM processes, disks, owned-state file
- ``reconcile`` PURE: desired + facts -> the minimal list of ``Action`` with reasons
- ``apply``     run actions, destroy an app, build reports
- ``proc``      bounded commands, pid identity (/proc cmdline), QMP, QEMU start/stop
- ``resume``    start a VM from a saved memory state instead of booting it (at most once)
- ``kvm``       probe whether KVM really works (runs a tiny VM to HLT, then a timed loop)
- ``commands``  ``facts`` / ``apply`` / ``observe`` / ``destroy``; JSON in, JSON out
- ``bundle``    ``build_zipapp(dest)``: the runtime as one file for bare hosts
"""

RUNTIME_VERSION = "1"
DESIRED_VERSION = 1
