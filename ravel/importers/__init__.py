"""`ravel import`: VMware VMs (.ova, .ovf + disks, .vmx + .vmdk, bare disk images) into
blueprint VM entries that keep their CPUs, memory, firmware, disk controllers and NIC models.
Parsing is pure (ovf, vmx, vmdk); files.py does the reading, unpacking and checksums."""

from .files import import_path, write_blueprint
from .vm import ImportResult

__all__ = ["import_path", "write_blueprint", "ImportResult"]
