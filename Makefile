# ravel: set-up, demo and tests on a fresh Debian machine (as root). Every step is idempotent:
# a second `make test` or `make demo` skips what is already in place.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
CACHE    := .cache
GUEST    := $(CACHE)/guest
REALGUEST := $(CACHE)/realguest
# Debian packages the project needs: QEMU (the nested hypervisor), qemu-img, busybox and a C
# compiler for the demo guest image, OVMF for UEFI guests, iproute2 for bridges/VXLAN/namespaces,
# iperf3 for the overlay benchmark; dnsmasq and nftables for the lab's network services;
# openssh-server for the local provider's SSH mode; cloud-init to validate generated user-data;
# mmdebstrap, fdisk (sfdisk), e2fsprogs, dosfstools and mtools build the real Debian test images;
# tcpdump for `ravel capture` (on every host: here the namespaces share this machine's).
# graphviz draws `ravel graph`'s SVG; novnc (noVNC) is the browser side of `ravel ui`'s VNC
# panel (copied with xterm.js by the ui-assets target, no CDN); chromium and chromium-driver
# are the real browser of its end-to-end test.
APT_PKGS := qemu-system-x86 qemu-utils ovmf busybox-static iproute2 iperf3 gcc libc6-dev kmod \
            dnsmasq-base nftables openssh-server cloud-init grub-pc-bin grub-common xorriso mtools \
            mmdebstrap fdisk e2fsprogs dosfstools tcpdump graphviz novnc chromium chromium-driver

.PHONY: setup system venv guest realguest ui-assets demo test test-scale test-unit bench cloud-smoke clean distclean

setup: system venv guest realguest ui-assets

system: $(CACHE)/system.stamp
$(CACHE)/system.stamp: Makefile
	@mkdir -p $(CACHE)
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

# `ravel ui`'s browser libraries (xterm.js from npm, noVNC from Debian's novnc) into
# ravel/ui/static/vendor, with their licences; tools/ui_assets.sh skips them when current.
ui-assets: system
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	bash tools/ui_assets.sh

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

guest: $(GUEST)/.stamp
$(GUEST)/.stamp: guest/build.sh guest/init guest/udhcpc.script guest/kvmtest.c guest/udpsend.c $(CACHE)/system.stamp
	bash guest/build.sh $(GUEST)
	@touch $@

# Stock Debian 12 cloud-style images (BIOS and UEFI, cloud-init, no ravel files), built from
# Debian packages; see guest/debian/README.md.
realguest: $(REALGUEST)/.stamp
$(REALGUEST)/.stamp: guest/debian/build.sh $(CACHE)/system.stamp
	bash guest/debian/build.sh $(REALGUEST)
	@touch $@

demo: setup
	$(BIN)/ravel plan blueprints/demo.yaml
	$(BIN)/ravel publish blueprints/demo.yaml --wait
	@echo "try: $(BIN)/ravel status demo; $(BIN)/ravel console demo web-1; $(BIN)/ravel destroy demo"

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not scale" tests

# the 50-guest lab of tests/e2e/test_scale.py (~2.5 min on 2 cores): CI runs it beside make test
test-scale: setup
	$(BIN)/python -m pytest -m scale tests/e2e/test_scale.py

test-unit: venv
	$(BIN)/python -m pytest -n 2 tests/unit

bench: setup
	$(BIN)/python bench/plan_bench.py
	$(BIN)/python bench/publish_bench.py
	$(BIN)/python bench/snapshot_bench.py
	$(BIN)/python bench/transport_bench.py
	$(BIN)/python bench/provision_bench.py
	$(BIN)/python bench/snapshot_ssh_bench.py
	$(BIN)/python bench/move_bench.py
	$(BIN)/python bench/seed_bench.py
	$(BIN)/python bench/scale_bench.py
	$(BIN)/python bench/tcg_cpu_bench.py
	$(BIN)/python bench/memory_bench.py
	$(BIN)/python bench/real_guest_bench.py
	$(BIN)/python bench/access_bench.py

# Opt-in, against a REAL account with your usual credentials (AWS profile/environment, GCP
# application default credentials). It makes one small, billed instance for a few minutes and
# removes it; never part of `make test` or CI. make cloud-smoke PROVIDER=aws|gcp
cloud-smoke: venv
	@case "$(PROVIDER)" in aws|gcp) ;; *) echo "usage: make cloud-smoke PROVIDER=aws|gcp"; exit 2;; esac
	RAVEL_CLOUD_SMOKE=1 $(BIN)/python tests/smoke/cloud_smoke.py --provider $(PROVIDER)

clean:
	rm -rf .pytest_cache .hypothesis build *.egg-info

distclean: clean
	rm -rf $(VENV) $(CACHE)
