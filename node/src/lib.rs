//! Skiff's node agent. The node-agent step (issue "Step 4 of 7") fills this crate: `runtime/`
//! (containerd), `network/` (CNI, pod netns), `lb/` (eBPF Service load balancing), `telemetry/`
//! and `server/` (the node's HTTPS API).

/// The directory under which the agent pins its eBPF objects.
pub fn pin_dir() -> &'static str {
    skiff_common::PIN_DIR
}
