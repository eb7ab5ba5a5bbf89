#!/usr/bin/env bash
# Installs everything Skiff's builds, tests and clusters need on Debian 12, as root.
# Idempotent and quick when everything is already there: each step checks before it acts.
#
#   cluster/install-deps.sh            # everything
#   SKIFF_SKIP_BPF_LINKER=1 cluster/install-deps.sh   # skip the eBPF toolchain (a minute to build)
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run me as root (I install Debian packages): sudo $0"
    exit 1
fi

# --- Debian packages -------------------------------------------------------------------------
# containerd with crun (or runc) runs pods; etcd is the HA store and the store conformance suite's second backend;
# protobuf-compiler builds the etcd and containerd gRPC clients; the rest serve the node agent,
# the eBPF load balancer, its comparisons (iptables, ipvs) and the test images.
PACKAGES=(
    ca-certificates curl git build-essential pkg-config protobuf-compiler libprotobuf-dev
    containerd runc crun containernetworking-plugins
    etcd-server etcd-client
    iproute2 iptables ipvsadm nftables bpftool
    busybox-static
    docker-registry skopeo apache2-utils
    python3 python3-pip python3-venv
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
# kubectl: the machine image carries kubectl 1.32; Debian's kubernetes-client (1.20) is the fallback.
if ! command -v kubectl >/dev/null 2>&1; then
    missing+=(kubernetes-client)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian starts etcd and containerd as system services on install; Skiff starts its own
    # instances (own ports, own state directories), so keep the packaged services from starting.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
else
    log "Debian packages: all present"
fi

# --- The eBPF toolchain (../shared/TOOLCHAIN.md) -----------------------------------------------
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding the rust-src component (for -Z build-std=core)"
    rustup component add rust-src
fi
if [ -z "${SKIFF_SKIP_BPF_LINKER:-}" ] && ! bpf-linker --version >/dev/null 2>&1; then
    # bpf-linker must use the LLVM that rustc uses, found in the toolchain's sysroot.
    SYS=$(rustc --print sysroot)
    LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    LIBLLVM=$(ls "$SYS"/lib/libLLVM.so.* | head -1)
    mkdir -p /opt/skiff-llvm
    ln -sf "$LIBLLVM" /opt/skiff-llvm/libLLVM.so
    log "building bpf-linker against LLVM $LLVM_MAJOR (about a minute)"
    RUSTFLAGS="-L /opt/skiff-llvm -C link-arg=-Wl,-rpath,$SYS/lib" \
        cargo install --locked bpf-linker --no-default-features --features "llvm-$LLVM_MAJOR"
fi

# --- The official Kubernetes Python client, for master/tests/python_client.rs ------------------
# A venv of Debian's python3 (not whichever python3 comes first on the PATH), pinned client.
PYENV=/opt/skiff/pyenv
KUBERNETES_PY=37.0.2
if [ ! -x "$PYENV/bin/python3" ]; then
    log "creating the Python venv $PYENV"
    mkdir -p "$(dirname "$PYENV")"
    /usr/bin/python3 -m venv "$PYENV"
fi
if ! "$PYENV/bin/python3" -c 'import kubernetes' >/dev/null 2>&1; then
    log "installing kubernetes==$KUBERNETES_PY (Python client) into $PYENV"
    "$PYENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes==$KUBERNETES_PY"
fi

# --- The kernel's filesystems the node agent uses ---------------------------------------------
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || log "could not mount bpffs at /sys/fs/bpf"

# crun, the node agent's OCI runtime when it is installed, refuses a hybrid cgroup layout (v1
# controllers plus a cgroup2 hierarchy) that leaves some controller on the cgroup2 side. systemd
# mounts every controller as v1 in hybrid mode; do the same for hosts whose init did not (this
# VM kind leaves hugetlb on cgroup2). Where it cannot, the agent falls back to runc and says so.
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ -r /sys/fs/cgroup/unified/cgroup.controllers ]; then
    for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        if mkdir -p "/sys/fs/cgroup/$c" && mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"; then
            log "mounted the $c cgroup controller as v1 at /sys/fs/cgroup/$c (for crun)"
        else
            log "could not mount the $c cgroup controller as v1; the node agent will use runc"
        fi
    done
fi

log "done"
