"""Does KVM really work here? Create a VM through /dev/kvm and run one ``hlt`` instruction.

The existence of /dev/kvm proves nothing (on machines without VT-x/AMD-V the file is there but
creating or running a VM fails), so the probe goes all the way: KVM_GET_API_VERSION,
KVM_CREATE_VM, one page of guest memory holding ``hlt`` (KVM_SET_USER_MEMORY_REGION),
KVM_CREATE_VCPU, real-mode registers with CS base 0 and RIP at that page, KVM_RUN, and expects
the exit reason KVM_EXIT_HLT.

Reaching HLT is not enough: some kernels ship a KVM that *emulates* guest instructions when the
CPU has no VT-x/AMD-V (e.g. the ``kvm-pvm`` module). It passes the HLT test, yet runs guest code
about a thousand times slower than hardware (measured: ~1 M loop iterations/s), and QEMU with
``-accel kvm`` did not boot a Linux kernel in 25 s where TCG boots it in about 2 s. The probe
therefore resumes the vCPU on a 2,000,000-iteration busy loop followed by a second ``hlt`` and
requires it to finish within ``NATIVE_LOOP_BUDGET`` seconds (hardware does it in a few ms,
an instruction emulator needs about two seconds).

It runs in a forked child so a wedged ioctl cannot hang the caller.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import select
import signal
import struct
import time
from typing import Tuple

KVM_DEVICE = "/dev/kvm"
KVMIO = 0xAE
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _ioc(0, 0x00, 0)
KVM_CREATE_VM = _ioc(0, 0x01, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, 0)
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)
KVM_SET_TSS_ADDR = _ioc(0, 0x47, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, 32)
KVM_RUN = _ioc(0, 0x80, 0)
KVM_REGS_SIZE = 18 * 8  # struct kvm_regs: rax..r15, rip, rflags
# struct kvm_sregs: 8 segments, gdt+idt, cr0 cr2 cr3 cr4 cr8, efer, apic_base, interrupt bitmap
KVM_SREGS_SIZE = 8 * 24 + 2 * 16 + 5 * 8 + 8 + 8 + 4 * 8
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, KVM_REGS_SIZE)
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, KVM_REGS_SIZE)
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, KVM_SREGS_SIZE)
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, KVM_SREGS_SIZE)
KVM_API_VERSION = 12
KVM_EXIT_HLT = 5
KVM_EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN",
                  9: "FAIL_ENTRY", 17: "INTERNAL_ERROR"}

GUEST_ADDR = 0x1000
HLT = b"\xf4"
LOOP_ITERATIONS = 2_000_000
NATIVE_LOOP_BUDGET = 0.25  # seconds
# Real mode, right after the first hlt: mov ecx, N; dec ecx; jnz -4; hlt
LOOP_CODE = b"\x66\xb9" + struct.pack("<I", LOOP_ITERATIONS) + b"\x66\x49\x75\xfc" + HLT
KVM_EXIT_INTR = 10


class _ProbeFailed(Exception):
    pass


class _OverBudget(Exception):
    pass


def _over_budget(signum, frame):  # SIGALRM handler, installed only in the probe child
    raise _OverBudget()


def _ioctl(fd: int, request: int, arg=0, step: str = ""):
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        raise _ProbeFailed(f"{step or hex(request)} failed: {name} ({exc.strerror})") from None


def probe_in_process(device: str = KVM_DEVICE, use_alarm: bool = False) -> Tuple[bool, str]:
    """Run the probe in this process (may block if the kernel misbehaves; prefer ``probe``).

    With ``use_alarm`` (the forked child does this) a SIGALRM cuts the timed loop off at its
    budget instead of waiting for an instruction emulator to finish it.
    """
    if not os.path.exists(device):
        return False, f"{device} does not exist"
    try:
        import ctypes  # for the guest memory's address; missing from some minimal Pythons
    except ImportError:
        return False, "cannot probe KVM: this Python has no ctypes"
    fds = []
    maps = []
    try:
        try:
            kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return False, f"cannot open {device}: {exc.strerror}"
        fds.append(kvm)
        api = _ioctl(kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if api != KVM_API_VERSION:
            return False, f"KVM API version {api}, expected {KVM_API_VERSION}"
        vm = _ioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        fds.append(vm)
        # Intel needs a TSS address below 4 GiB before the first KVM_RUN; harmless elsewhere.
        # (the address does not fit fcntl.ioctl's C int argument, hence ctypes)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ioctl(ctypes.c_int(vm), ctypes.c_ulong(KVM_SET_TSS_ADDR),
                       ctypes.c_ulong(0xFFFBD000))
        except (OSError, AttributeError):
            pass

        mem = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
        maps.append(mem)
        code = HLT + LOOP_CODE
        mem[0:len(code)] = code
        host_addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        region = struct.pack("=IIQQQ", 0, 0, GUEST_ADDR, mmap.PAGESIZE, host_addr)
        _ioctl(vm, KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

        vcpu = _ioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
        fds.append(vcpu)
        run_size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        try:
            run = mmap.mmap(vcpu, run_size, flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise _ProbeFailed(f"mmap of the vcpu run area failed: {exc.strerror}") from None
        maps.append(run)

        sregs = bytearray(_ioctl(vcpu, KVM_GET_SREGS, bytes(KVM_SREGS_SIZE), "KVM_GET_SREGS"))
        # struct kvm_segment cs is first: __u64 base; __u32 limit; __u16 selector; ...
        struct.pack_into("=Q", sregs, 0, 0)
        struct.pack_into("=H", sregs, 12, 0)
        _ioctl(vcpu, KVM_SET_SREGS, bytes(sregs), "KVM_SET_SREGS")

        regs = [0] * 18
        regs[16] = GUEST_ADDR  # rip
        regs[17] = 0x2  # rflags: bit 1 is reserved and must be set
        _ioctl(vcpu, KVM_SET_REGS, struct.pack("=18Q", *regs), "KVM_SET_REGS")

        _run_to_hlt(vcpu, run, "KVM_RUN")
        started = time.monotonic()
        try:
            if use_alarm:
                signal.signal(signal.SIGALRM, _over_budget)
                signal.setitimer(signal.ITIMER_REAL, NATIVE_LOOP_BUDGET * 1.2)
            _run_to_hlt(vcpu, run, "KVM_RUN (busy loop)")
        except _OverBudget:
            pass
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.monotonic() - started
        if took > NATIVE_LOOP_BUDGET:
            return False, (f"KVM runs guests by emulation, not hardware virtualization: a "
                           f"{LOOP_ITERATIONS:,}-iteration loop did not finish in {took:.2f} s "
                           f"(hardware needs a few ms){_cpu_flags_note()}")
        return True, (f"KVM API {api}: ran a vCPU to HLT and a {LOOP_ITERATIONS:,}-iteration "
                      f"loop in {took * 1000:.1f} ms")
    except _ProbeFailed as exc:
        return False, str(exc)
    finally:
        for m in reversed(maps):
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        for fd in reversed(fds):
            os.close(fd)


def _run_to_hlt(vcpu: int, run: mmap.mmap, step: str) -> None:
    for _ in range(100):  # a signal may interrupt KVM_RUN; retry, bounded
        try:
            fcntl.ioctl(vcpu, KVM_RUN, 0)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            name = errno.errorcode.get(exc.errno, str(exc.errno))
            raise _ProbeFailed(f"{step} failed: {name} ({exc.strerror})") from None
        reason = struct.unpack_from("=I", run, 8)[0]
        if reason == KVM_EXIT_INTR:
            continue
        if reason != KVM_EXIT_HLT:
            name = KVM_EXIT_NAMES.get(reason, str(reason))
            raise _ProbeFailed(f"{step} exited with {name}, expected HLT")
        return
    raise _ProbeFailed(f"{step} kept being interrupted")


def _cpu_flags_note() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return ""
    if "vmx" in flags or "svm" in flags:
        return ""
    return "; the CPU has no vmx/svm flag"


def probe(timeout: float = 5.0, device: str = KVM_DEVICE) -> Tuple[bool, str]:
    """Probe KVM in a forked child; (works, detail). Never blocks longer than ``timeout``."""
    if not os.path.exists(device):
        return False, f"{device} does not exist"
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            works, detail = probe_in_process(device, use_alarm=True)
            os.write(wfd, json.dumps({"works": works, "detail": detail}).encode())
        except BaseException as exc:  # noqa: BLE001 - the child must never escape
            try:
                os.write(wfd, json.dumps({"works": False, "detail": f"probe crashed: {exc!r}"})
                         .encode())
            except OSError:
                code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                break
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
    status = _reap(pid, 1.0)
    if status is None:
        os.kill(pid, signal.SIGKILL)  # our own child
        _reap(pid, 2.0)
        return False, f"KVM probe did not finish within {timeout:g} s"
    try:
        result = json.loads(data.decode() or "null")
        return bool(result["works"]), str(result["detail"])
    except (ValueError, TypeError, KeyError):
        return False, f"KVM probe died (wait status {status})"


def _reap(pid: int, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
