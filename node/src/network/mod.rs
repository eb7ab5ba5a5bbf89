//! Pod networking: each pod's network namespace, the CNI plugin chain that wires it, and the
//! host routes around them.
//!
//! - [`netns`] creates and removes persistent namespaces (`/run/netns/<name>`), in-process.
//! - [`cni`] loads a network from a CNI conf dir and runs its plugins ([`Cni::add`],
//!   [`Cni::del`], [`Cni::check`]); any standard plugin works, Skiff's own is the default.
//! - [`plugin`] is what the `skiff-cni` binary does (bridge, veth, address, routes), with
//!   [`ipam`] handing out addresses from the node's podCIDR, kept on disk.
//! - [`routes`] installs the blackhole routes for the cluster and Service CIDRs (so
//!   untranslated traffic never leaves the machine) and keeps the routes to other nodes'
//!   podCIDRs in sync.
//!
//! - [`pod`] is the seam for the pod worker: [`PodNetworking`] (set a sandbox's network up and
//!   down), its real implementation [`CniNetworking`], a recording fake, and [`prepare_node`]
//!   (run once at agent start: the default conflist via [`write_skiff_conflist`] when the conf
//!   dir has none, the blackhole routes, the loaded network).

pub mod cni;
pub mod ipam;
mod netlink;
pub mod netns;
pub mod plugin;
pub mod pod;
pub mod routes;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

pub use cni::{Cni, CniArgs, CniError, PodNetwork};
pub use ipam::{Ipam, IpamError};
pub use netns::{create_netns, remove_netns, run_in_netns};
pub use plugin::PluginConf;
pub use pod::{
    prepare_node, CniNetworking, NodeNetworkConfig, PodNetworkError, PodNetworking,
    RecordingNetworking, Sandbox, SandboxNetwork,
};
pub use routes::{
    enable_ip_forwarding, install_blackhole_routes, list_owned_routes, remove_blackhole_routes,
    sync_node_routes, ROUTE_PROTOCOL,
};

/// The file name [`write_skiff_conflist`] writes.
pub const SKIFF_CONFLIST: &str = "10-skiff.conflist";

/// Errors of the netlink, namespace and plugin code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed.
    #[error("failed to {what}: {source}")]
    Netlink {
        /// What was being done, with the objects involved.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A file, socket or namespace operation failed.
    #[error("failed to {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Address allocation failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The configuration is invalid.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// The pod's network is not what it should be (CHECK), or vanished while being made.
    #[error("{0}")]
    Check(String),
}

/// The first host address of a subnet (`10.244.0.1` for `10.244.0.0/24`): the bridge's
/// gateway address.
pub fn first_host(subnet: &IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4(u32::from(n.network()).wrapping_add(1).into()),
        IpNet::V6(n) => IpAddr::V6(u128::from(n.network()).wrapping_add(1).into()),
    }
}

/// Writes Skiff's default network configuration, a conflist with one `skiff-cni` plugin, to
/// `<conf_dir>/10-skiff.conflist` (atomically, creating the directory) and returns its path.
pub fn write_skiff_conflist(conf_dir: &Path, conf: &PluginConf) -> Result<PathBuf, Error> {
    conf.validate()?;
    let io = |what: String| move |source| Error::Io { what, source };
    std::fs::create_dir_all(conf_dir)
        .map_err(io(format!("create CNI conf dir {}", conf_dir.display())))?;
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "skiff",
        "plugins": [{
            "type": "skiff-cni",
            "bridge": conf.bridge,
            "podCIDR": conf.pod_cidr.to_string(),
            "dataDir": conf.data_dir,
            "mtu": conf.mtu,
            "hairpinMode": conf.hairpin_mode,
        }],
    });
    let path = conf_dir.join(SKIFF_CONFLIST);
    let tmp = conf_dir.join(format!(".{SKIFF_CONFLIST}.tmp"));
    let text = serde_json::to_string_pretty(&list).expect("JSON values serialise");
    std::fs::write(&tmp, text + "\n").map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_round_trips_through_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let conf = PluginConf {
            bridge: "skiff0".into(),
            pod_cidr: "10.244.3.0/24".parse().unwrap(),
            data_dir: "/var/lib/skiff/cni".into(),
            mtu: 1450,
            hairpin_mode: true,
        };
        let path = write_skiff_conflist(dir.path(), &conf).unwrap();
        assert_eq!(path, dir.path().join(SKIFF_CONFLIST));
        let cni = Cni::load(dir.path(), &[]).unwrap();
        assert_eq!(cni.name(), "skiff");
        assert_eq!(cni.plugin_types(), vec!["skiff-cni"]);
        // The plugin reads back exactly what was written.
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let fields: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_value(v["plugins"][0].clone()).unwrap();
        let mut fields = fields;
        fields.remove("type");
        assert_eq!(PluginConf::from_fields(&fields).unwrap(), conf);
        assert_eq!(conf.gateway().to_string(), "10.244.3.1/24");
    }

    #[test]
    fn plugin_conf_is_validated() {
        let check = |json: serde_json::Value, want: &str| {
            let fields: std::collections::HashMap<String, serde_json::Value> =
                serde_json::from_value(json).unwrap();
            let err = PluginConf::from_fields(&fields).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        };
        check(json!({"podCIDR": "10.244.0.5/24"}), "host bits");
        check(json!({"podCIDR": "10.244.0.0/24", "mtu": 10}), "mtu");
        check(
            json!({"podCIDR": "10.244.0.0/24", "bridge": "a-very-long-bridge-name"}),
            "bridge",
        );
        check(json!({"bridge": "b"}), "podCIDR");
        check(json!({"podCIDR": "10.244.0.0/24", "bogus": 1}), "bogus");
    }
}
