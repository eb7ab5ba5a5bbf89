//! Skiff's node agent. The node-agent step (issue "Step 4 of 7") fills this crate: `runtime/`
//! (containerd), `network/` (CNI, pod netns), `lb/` (eBPF Service load balancing), `telemetry/`
//! and `server/` (the node's HTTPS API).
//!
//! Until then it has [`hollow`]: `skiff-node hollow` fakes many nodes over the Kubernetes API
//! (no containers), for testing the scheduler and controllers at cluster scale.

pub mod agent;
pub mod hollow;
pub mod logs;
pub mod network;
pub mod runtime;
pub mod server;
pub mod testing;

/// The directory under which the agent pins its eBPF objects.
pub fn pin_dir() -> &'static str {
    skiff_common::PIN_DIR
}
