"""Boot data for cloud hosts: cloud-init user-data (AWS) and the equivalent GCE startup-script
(Debian's GCE images run startup-scripts and ignore user-data). Pure: strings in, text out.

Both do the same four things, so a host is the same whichever cloud made it (and the AWS one a
fifth: with an app lifetime, a timer that powers the host off at the expiry, see `expiry_files`):
install QEMU, iproute2 and python3; install ravel's SSH host key (so ravel's first connection is
already verified: the key is pinned, never learned) and ravel's user key for root; raise the
underlay MTU (VXLAN costs 50 bytes; AWS and GCP VPCs both carry jumbo frames); and say ready by
writing READY_FILE, a JSON report of what the host is, which ravel reads over SSH.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

# dnsmasq-base and nftables: the app's DHCP/DNS, routing, NAT and firewall (docs/networking.md)
PACKAGES = ("qemu-system-x86", "qemu-utils", "ovmf", "iproute2", "python3", "dnsmasq-base", "nftables",
            "tcpdump")  # tcpdump: `ravel capture`
READY_FILE = "/var/lib/ravel/host.json"
READY_SCRIPT = "/usr/local/sbin/ravel-host-ready"
READY_LINE = "RAVEL-HOST-READY"
# A key path of ravel's own on GCE: the guest agent there may regenerate /etc/ssh/ssh_host_*
# on first boot, so sshd is pointed at ravel's key alone through a drop-in.
GCE_HOST_KEY = "/etc/ssh/ravel_host_ed25519_key"
APT_ATTEMPTS = 5  # apt mirrors can be briefly unreachable while a fresh instance boots
# the app's expiry, epoch seconds, read by the host's own timer (ravel extend writes it again)
EXPIRY_FILE = "/var/lib/ravel/expires"
EXPIRY_SCRIPT = "/usr/local/sbin/ravel-expiry"
EXPIRY_UNIT = "ravel-expiry"
EXPIRY_CHECK_S = 30  # how often the timer looks: a host outlives its expiry by at most this


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (keys, scripts) as literal blocks, so the user-data reads as written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


@dataclass(frozen=True)
class BootData:
    app: str
    host: str
    host_key_private: str  # OpenSSH PEM of the host's ed25519 key
    host_key_public: str  # "ssh-ed25519 AAAA... comment"
    user_key_public: str  # ravel's login key, authorised for root
    mtu: int  # underlay MTU to set on the primary interface (jumbo frames)
    packages: tuple[str, ...] = PACKAGES
    expires: int | None = None  # the app's expiry (epoch seconds): the host powers off then


def ready_script(boot: BootData) -> str:
    """Shell run last on first boot: raise the MTU, check the tools, write READY_FILE.

    The report says what the host really is: Xen (/sys/hypervisor/type) or Nitro/KVM (DMI), and
    whether /dev/kvm and VT-x/AMD-V are visible (ravel-host facts later probes KVM for real)."""
    return f"""#!/bin/sh
# ravel host bootstrap ({boot.app}/{boot.host}): raise the underlay MTU, report what this host is
set -u
clean() {{ tr -cd '[:alnum:] ._:/-' | cut -c1-80; }}
dev=$(ip -o route show default 2>/dev/null | awk '{{print $5; exit}}')
addr=""
if [ -n "$dev" ]; then
  ip link set dev "$dev" mtu {int(boot.mtu)} || true
  addr=$(ip -o -4 addr show dev "$dev" | awk '{{split($4, a, "/"); print a[1]; exit}}')
fi
mtu=$(cat "/sys/class/net/$dev/mtu" 2>/dev/null || echo 0)
hv=$(cat /sys/hypervisor/type 2>/dev/null | clean)
vendor=$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null | clean)
product=$(cat /sys/class/dmi/id/product_name 2>/dev/null | clean)
kvm=false; [ -e /dev/kvm ] && kvm=true
vmx=false; grep -qE '\\b(vmx|svm)\\b' /proc/cpuinfo && vmx=true
missing=""
for tool in qemu-system-x86_64 qemu-img ip python3 dnsmasq nft; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
status=ready; [ -n "$missing" ] && status="error: missing$missing"
mkdir -p "$(dirname {READY_FILE})"
printf '{{"status": "%s", "app": "%s", "host": "%s", "underlay_device": "%s", "underlay_address": "%s", "mtu": %s, "hypervisor": "%s", "sys_vendor": "%s", "product_name": "%s", "dev_kvm": %s, "cpu_virt": %s}}\\n' \\
  "$status" {shlex.quote(boot.app)} {shlex.quote(boot.host)} "$dev" "$addr" "$mtu" "$hv" "$vendor" "$product" "$kvm" "$vmx" \\
  > {READY_FILE}.tmp && mv {READY_FILE}.tmp {READY_FILE}
echo "{READY_LINE} {boot.host} $status" > /dev/console 2>/dev/null || true
"""


def expiry_files(boot: BootData) -> list[dict[str, str]]:
    """The expiry (epoch seconds) and the check the host's timer runs (`expiry_timer`): power
    off once the clock has passed it. With EC2's InstanceInitiatedShutdownBehavior=terminate that
    ends the instance with no ravel process anywhere; an unreadable file powers nothing off."""
    script = f"""#!/bin/sh
# ravel: power this host ({boot.app}/{boot.host}) off once its app's expiry has passed
exp=$(cat {EXPIRY_FILE} 2>/dev/null) || exit 0
case "$exp" in ''|*[!0-9]*) exit 0;; esac
[ "$(date +%s)" -ge "$exp" ] || exit 0
echo "ravel: app {boot.app} expired at $exp: powering off" > /dev/console 2>/dev/null || true
exec systemctl poweroff
"""
    return [
        {"path": EXPIRY_FILE, "owner": "root:root", "permissions": "0644", "content": f"{int(boot.expires or 0)}\n"},
        {"path": EXPIRY_SCRIPT, "owner": "root:root", "permissions": "0755", "content": script},
    ]


def expiry_timer() -> list[str]:
    """A transient systemd timer running EXPIRY_SCRIPT every EXPIRY_CHECK_S, made by `bootcmd`:
    on every boot, before packages are installed (a host stuck in its bootstrap still ends), and
    again after a stop and start. Its first run comes after write_files has written the script."""
    return ["systemd-run", f"--unit={EXPIRY_UNIT}", f"--on-boot={EXPIRY_CHECK_S}s",
            f"--on-unit-active={EXPIRY_CHECK_S}s", "--timer-property=AccuracySec=5s", EXPIRY_SCRIPT]


def user_data(boot: BootData) -> str:
    """cloud-init #cloud-config for the host (AWS user-data)."""
    config = {
        # root logs in with ravel's key only: the host runtime needs root (taps, bridges, QEMU)
        "disable_root": False,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,  # with ssh_keys given, cloud-init generates no other host key
        "ssh_keys": {"ed25519_private": boot.host_key_private.strip() + "\n",
                     "ed25519_public": boot.host_key_public.strip()},
        "ssh_authorized_keys": [boot.user_key_public.strip()],
        "package_update": True,
        "packages": list(boot.packages),
        "write_files": [{"path": READY_SCRIPT, "owner": "root:root", "permissions": "0755",
                         "content": ready_script(boot)}],
        "runcmd": [[READY_SCRIPT]],
        "final_message": f"{READY_LINE} {boot.host} cloud-init finished after $UPTIME s",
    }
    if boot.expires is not None:
        config["bootcmd"] = [expiry_timer()]
        config["write_files"] = expiry_files(boot) + config["write_files"]
    return "#cloud-config\n" + yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                                         width=4096)


def startup_script(boot: BootData) -> str:
    """The same bootstrap as a GCE startup-script (bash, run as root on every boot; idempotent)."""
    q = shlex.quote
    private = boot.host_key_private.strip() + "\n"
    packages = " ".join(q(p) for p in boot.packages)
    return f"""#!/bin/bash
# ravel host bootstrap ({boot.app}/{boot.host}) as a GCE startup-script
set -u
umask 077
install -d -m 0700 /root/.ssh
touch /root/.ssh/authorized_keys
grep -qxF {q(boot.user_key_public.strip())} /root/.ssh/authorized_keys || \\
  printf '%s\\n' {q(boot.user_key_public.strip())} >> /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
printf '%s' {q(private)} > {GCE_HOST_KEY}.tmp && mv {GCE_HOST_KEY}.tmp {GCE_HOST_KEY}
printf '%s\\n' {q(boot.host_key_public.strip())} > {GCE_HOST_KEY}.pub
chmod 0600 {GCE_HOST_KEY}; chmod 0644 {GCE_HOST_KEY}.pub
install -d -m 0755 /etc/ssh/sshd_config.d
printf 'HostKey {GCE_HOST_KEY}\\nPasswordAuthentication no\\nPermitRootLogin prohibit-password\\n' \\
  > /etc/ssh/sshd_config.d/ravel.conf
chmod 0644 /etc/ssh/sshd_config.d/ravel.conf
systemctl reload ssh 2>/dev/null || systemctl restart ssh
umask 022
need=""
for tool in qemu-system-x86_64 qemu-img ip python3 dnsmasq nft; do command -v "$tool" >/dev/null 2>&1 || need=1; done
if [ -n "$need" ]; then
  for attempt in $(seq 1 {APT_ATTEMPTS}); do
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      {packages} && break
    sleep $((attempt * 5))
  done
fi
install -d -m 0755 "$(dirname {READY_SCRIPT})"
cat > {READY_SCRIPT} <<'RAVEL_READY_EOF'
{ready_script(boot)}RAVEL_READY_EOF
chmod 0755 {READY_SCRIPT}
{READY_SCRIPT}
"""
