//! The container runtime: containerd over its gRPC socket (`containerd-client`), never `ctr`.
//!
//! Everything Skiff makes lives in one containerd namespace, [`NAMESPACE`], so `ctr -n skiff
//! containers ls` shows exactly the agent's containers and nothing of other tenants is touched.

pub mod cgroups;
pub mod containers;
pub mod images;
pub mod oci;
pub mod spec;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use containerd_client::Client;

/// The containerd namespace of everything the agent creates (images, containers, snapshots).
pub const NAMESPACE: &str = "skiff";

/// The OCI annotation that groups containers into one `containerd-shim-runc-v2` (the shim reads
/// it when it starts, as it reads CRI's `io.kubernetes.cri.sandbox-id`). The agent sets it to
/// the pod's UID, so a pod's containers share one shim, as they do under containerd's CRI.
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// The default containerd socket (`--containerd-address`).
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

/// A connection to containerd. Cheap to clone: the service clients share one HTTP/2 channel.
#[derive(Clone)]
pub struct Containerd {
    client: std::sync::Arc<Client>,
    namespace: String,
    /// Images already resolved to what runs them (config, chain ID), by name; an entry holds
    /// while containerd's image keeps the same target digest (see `images::ensure_image`).
    resolved: std::sync::Arc<std::sync::Mutex<HashMap<String, images::ImageInfo>>>,
    /// The OCI runtime new containers run with (runc unless [`with_oci_runtime`](Self::with_oci_runtime)).
    oci: oci::OciRuntime,
}

impl Containerd {
    /// Connects to the socket at `address` and checks that containerd answers.
    pub async fn connect(address: &Path) -> anyhow::Result<Containerd> {
        Self::connect_in(address, NAMESPACE).await
    }

    /// [`connect`](Self::connect), with another containerd namespace (tests use their own).
    pub async fn connect_in(address: &Path, namespace: &str) -> anyhow::Result<Containerd> {
        let client = Client::from_path(address).await.with_context(|| {
            format!(
                "cannot reach containerd at {} (is it running? --containerd-address sets the socket)",
                address.display()
            )
        })?;
        client
            .version()
            .version(())
            .await
            .with_context(|| format!("containerd at {} does not answer", address.display()))?;
        Ok(Containerd {
            client: std::sync::Arc::new(client),
            namespace: namespace.to_string(),
            resolved: Default::default(),
            oci: oci::OciRuntime::Runc,
        })
    }

    /// New containers run with `oci` (containers that exist keep theirs).
    pub fn with_oci_runtime(mut self, oci: oci::OciRuntime) -> Containerd {
        self.oci = oci;
        self
    }

    /// The resolved image `name` if it still has the target `digest`.
    pub(crate) fn resolved_image(&self, name: &str, digest: &str) -> Option<images::ImageInfo> {
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.get(name).filter(|i| i.digest == digest).cloned()
    }

    /// Remembers a resolved image (`None`: forgets `name`, e.g. when its snapshot is gone).
    pub(crate) fn remember_image(&self, name: &str, info: Option<&images::ImageInfo>) {
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        match info {
            Some(info) => resolved.insert(name.to_string(), info.clone()),
            None => resolved.remove(name),
        };
    }

    /// The underlying client, for the service stubs (`.containers()`, `.tasks()`, …).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The containerd namespace requests go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Wraps `message` in a request that carries this connection's namespace.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        request
    }
}
