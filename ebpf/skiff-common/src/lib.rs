//! Types shared by Skiff's eBPF programs (`ebpf/skiff-ebpf`, `no_std`) and the node agent.
//!
//! Every map key and value is defined here once, `#[repr(C)]`, `Copy`, with explicit padding and
//! no `bool`, so that the kernel side and the user side agree byte for byte and `bpftool map dump`
//! prints field names from BTF. Map names are constants here too. The service load balancer and
//! telemetry steps fill this crate; for now it holds the pin path that both sides use.
#![no_std]

/// Where the agent pins Skiff's maps and programs (bpffs, mode 0700).
pub const PIN_DIR: &str = "/sys/fs/bpf/skiff";
