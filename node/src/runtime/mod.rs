//! The container runtime: containerd over its gRPC socket (`containerd-client`), never `ctr`.
//!
//! Everything Skiff makes lives in one containerd namespace, [`NAMESPACE`], so `ctr -n skiff
//! containers ls` shows exactly the agent's containers and nothing of other tenants is touched.

pub mod containers;
pub mod images;
pub mod spec;

use std::path::Path;

use anyhow::Context as _;
use containerd_client::Client;

/// The containerd namespace of everything the agent creates (images, containers, snapshots).
pub const NAMESPACE: &str = "skiff";

/// The default containerd socket (`--containerd-address`).
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

/// A connection to containerd. Cheap to clone: the service clients share one HTTP/2 channel.
#[derive(Clone)]
pub struct Containerd {
    client: std::sync::Arc<Client>,
    namespace: String,
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
        })
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
