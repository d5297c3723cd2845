"""OVF descriptors written from the DMTF OVF specification (DSP0243) and small disks made with
qemu-img, for the import tests."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

OVF_NS = ('xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
          'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
          'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
          'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
          'xmlns:vmw="http://www.vmware.com/schema/ovf"')


def item(rtype: int, iid: int, name: str, **fields: str) -> str:
    inner = "".join(f"<rasd:{k}>{v}</rasd:{k}>" for k, v in fields.items())
    return (f"<Item><rasd:ElementName>{name}</rasd:ElementName><rasd:InstanceID>{iid}</rasd:InstanceID>"
            f"<rasd:ResourceType>{rtype}</rasd:ResourceType>{inner}</Item>")


def ovf(disk_file: str = "disk1.vmdk", nic: str = "VmxNet3", scsi: str = "VirtualSCSI", cpus: int = 2,
        memory: str = "<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:VirtualQuantity>256</rasd:VirtualQuantity>",
        firmware: str = "efi", extra_items: str = "", name: str = "Web Server 01", nested: bool = True) -> str:
    cfg = f'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>'
    if nested:
        cfg += '<vmw:Config ovf:required="false" vmw:key="nestedHVEnabled" vmw:value="true"/>'
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope {OVF_NS}>
  <References>
    <File ovf:id="file1" ovf:href="{disk_file}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101"><Info>The kind of installed guest operating system</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
      {item(3, 1, "2 virtual CPU(s)", AllocationUnits="hertz * 10^6", VirtualQuantity=str(cpus))}
      <Item><rasd:ElementName>memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>{memory}</Item>
      {item(6, 3, "SCSI controller 0", ResourceSubType=scsi, Address="0")}
      {item(5, 4, "IDE 0", Address="0")}
      {item(17, 5, "Hard disk 1", AddressOnParent="0", HostResource="ovf:/disk/vmdisk1", Parent="3")}
      {item(10, 6, "Network adapter 1", AddressOnParent="7", AutomaticAllocation="true", Connection="VM Network", ResourceSubType=nic)}
      {item(15, 7, "CD/DVD drive 1", AddressOnParent="0", Parent="4", AutomaticAllocation="false")}
      {extra_items}
      {cfg}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def make_raw(path: Path, size_mib: int = 8, marker: bytes = b"RAVEL-IMPORTED-DISK") -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
        f.seek(0)
        f.write(marker)
    return path


def make_vmdk(path: Path, size_mib: int = 8, subformat: str = "streamOptimized", marker: bytes | None = None) -> Path:
    """A VMDK made by qemu-img: converted from a raw disk (with a marker) or created empty."""
    if marker is not None:
        raw = make_raw(path.with_suffix(".raw"), size_mib, marker)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
                        str(raw), str(path)], check=True, capture_output=True)
        raw.unlink()
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(path),
                        f"{size_mib}M"], check=True, capture_output=True)
    return path


def manifest(files: dict[str, bytes], algo: str = "SHA256") -> bytes:
    return "".join(f"{algo}({name})= {hashlib.new(algo.lower(), data).hexdigest()}\n"
                   for name, data in files.items()).encode()


def make_ova(path: Path, members: dict[str, bytes]) -> Path:
    """A tar in the given member order (the .ovf first, as the spec asks)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
