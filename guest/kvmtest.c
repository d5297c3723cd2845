/*
 * kvmtest: prove that hardware-assisted virtualization works in this machine
 * by actually running code in a KVM virtual machine, not by looking at /dev/kvm.
 *
 * For each of real mode, 32-bit protected mode and 64-bit long mode (identity
 * paging, one 2 MiB page) it creates a VM with one vCPU whose memory holds
 *
 *     mov  $0x42, %al      b0 42
 *     out  %al, $0x10      e6 10
 *     hlt                  f4
 *
 * and checks that the vCPU exits first with KVM_EXIT_IO (port 0x10, one byte
 * out, value 0x42) and then with KVM_EXIT_HLT.
 *
 * Prints "KVMTEST OK" and exits 0 on success; prints "KVMTEST FAIL: <why>"
 * and exits non-zero otherwise. Every step is bounded (at most a few KVM_RUN
 * calls per mode, and a 10 s alarm as a last resort).
 *
 * Passing this is necessary, not sufficient, for QEMU -accel kvm to work: on
 * some sandboxed hosts it passes while QEMU's own vCPU set-up fails.
 *
 * Build: gcc -static -O2 -o kvmtest kvmtest.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUEST_ADDR 0x3000
#define IO_PORT 0x10
#define IO_VALUE 0x42
#define MAX_RUNS 16

static void fail(const char *what)
{
	printf("KVMTEST FAIL: %s: %s\n", what, errno ? strerror(errno) : "unexpected result");
	fflush(stdout);
	exit(1);
}

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "KVMTEST FAIL: timeout: the vCPU did not stop within 10 s\n";
	if (write(1, msg, sizeof msg - 1) < 0) {
		/* nothing more we can do */
	}
	_exit(3);
}

static const char *exit_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN";
	case KVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION";
	case KVM_EXIT_IO: return "KVM_EXIT_IO";
	case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
	case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
	case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN";
	case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
	default: return "other";
	}
}

/* Guest physical layout (one 16 KiB slot at 0): page tables, then the code. */
#define MEM_SIZE 0x4000
#define PML4_ADDR 0x0000
#define PDPT_ADDR 0x1000
#define PD_ADDR 0x2000

enum mode { REAL, PROTECTED, LONG };
static const char *const mode_name[] = { "real mode", "32-bit protected mode", "64-bit long mode" };

static void set_seg(struct kvm_segment *seg, uint16_t sel, int code, int db, int l)
{
	memset(seg, 0, sizeof *seg);
	seg->base = 0;
	seg->limit = 0xffffffff;
	seg->selector = sel;
	seg->type = code ? 0xb : 0x3;	/* execute/read accessed, or read/write accessed */
	seg->present = 1;
	seg->dpl = 0;
	seg->db = db;
	seg->s = 1;
	seg->l = l;
	seg->g = 1;
}

/* One VM, one vCPU, run the code in the given mode; 0 on success. */
static int run_mode(int kvm, enum mode mode)
{
	/* mov $0x42,%al; out %al,$0x10; hlt -- the same bytes in all three modes. */
	static const uint8_t code[] = { 0xb0, IO_VALUE, 0xe6, IO_PORT, 0xf4 };
	const char *name = mode_name[mode];

	errno = 0;
	int vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
	if (vm < 0)
		fail("KVM_CREATE_VM");

	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		fail("mmap guest memory");
	memcpy(mem + GUEST_ADDR, code, sizeof code);

	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = MEM_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		fail("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
	if (vcpu < 0)
		fail("KVM_CREATE_VCPU");

	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, NULL);
	if (run_size < (int)sizeof(struct kvm_run))
		fail("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE,
				   MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		fail("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		fail("KVM_GET_SREGS");
	const uint64_t rip = GUEST_ADDR;	/* above the page tables */
	switch (mode) {
	case REAL:
		sregs.cs.base = 0;
		sregs.cs.selector = 0;
		break;
	case PROTECTED:
		/* Flat 32-bit segments straight into the segment caches: no GDT needed. */
		set_seg(&sregs.cs, 0x8, 1, 1, 0);
		set_seg(&sregs.ds, 0x10, 0, 1, 0);
		sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
		sregs.cr0 |= 0x1;			/* PE */
		break;
	case LONG: {
		/* Identity map the first 2 MiB with one large page. */
		uint64_t *pml4 = (uint64_t *)(mem + PML4_ADDR);
		uint64_t *pdpt = (uint64_t *)(mem + PDPT_ADDR);
		uint64_t *pd = (uint64_t *)(mem + PD_ADDR);
		pml4[0] = 0x3 | PDPT_ADDR;		/* present, writable */
		pdpt[0] = 0x3 | PD_ADDR;
		pd[0] = 0x83;				/* present, writable, 2 MiB page */
		sregs.cr3 = PML4_ADDR;
		sregs.cr4 |= 0x20;			/* PAE */
		sregs.cr0 |= 0x80000001;		/* PG | PE */
		sregs.efer |= 0x500;			/* LME | LMA */
		set_seg(&sregs.cs, 0x8, 1, 0, 1);
		set_seg(&sregs.ds, 0x10, 0, 0, 0);
		sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
		break;
	}
	}
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		fail("KVM_SET_SREGS");

	struct kvm_regs regs;
	memset(&regs, 0, sizeof regs);
	regs.rip = rip;
	regs.rflags = 0x2;
	regs.rsp = 0x3ff0;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		fail("KVM_SET_REGS");

	int saw_io = 0, rc = 1;
	for (int i = 0; i < MAX_RUNS; i++) {
		errno = 0;
		if (ioctl(vcpu, KVM_RUN, NULL) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			fail("KVM_RUN");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != IO_PORT ||
			    run->io.size != 1 || run->io.count != 1 || data[0] != IO_VALUE) {
				printf("KVMTEST FAIL: %s: unexpected I/O exit: dir=%u port=0x%x "
				       "size=%u count=%u value=0x%x\n", name, run->io.direction,
				       run->io.port, run->io.size, run->io.count, data[0]);
				goto out;
			}
			if (saw_io) {
				printf("KVMTEST FAIL: %s: I/O exit seen twice\n", name);
				goto out;
			}
			saw_io = 1;
			continue;
		}
		case KVM_EXIT_HLT:
			if (!saw_io) {
				printf("KVMTEST FAIL: %s: HLT before the expected I/O exit\n", name);
				goto out;
			}
			printf("kvmtest: %s: guest wrote 0x%x to port 0x%x, then halted\n",
			       name, IO_VALUE, IO_PORT);
			rc = 0;
			goto out;
		case KVM_EXIT_FAIL_ENTRY:
			printf("KVMTEST FAIL: %s: KVM_EXIT_FAIL_ENTRY, reason=0x%llx\n", name,
			       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			goto out;
		case KVM_EXIT_INTERNAL_ERROR:
			printf("KVMTEST FAIL: %s: KVM_EXIT_INTERNAL_ERROR, suberror=%u\n", name,
			       run->internal.suberror);
			goto out;
		default:
			printf("KVMTEST FAIL: %s: unexpected exit %u (%s)\n", name,
			       run->exit_reason, exit_name(run->exit_reason));
			goto out;
		}
	}
	printf("KVMTEST FAIL: %s: no HLT exit after %d KVM_RUN calls\n", name, MAX_RUNS);
out:
	munmap(run, (size_t)run_size);
	munmap(mem, MEM_SIZE);
	close(vcpu);
	close(vm);
	return rc;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);
	alarm(10);

	errno = 0;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		fail("open /dev/kvm");

	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		printf("KVMTEST FAIL: KVM API version %d, expected %d\n", api, KVM_API_VERSION);
		return 1;
	}

	for (enum mode m = REAL; m <= LONG; m++)
		if (run_mode(kvm, m) != 0)
			return 1;
	printf("KVMTEST OK\n");
	return 0;
}
