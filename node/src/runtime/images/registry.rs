//! Pulling from a registry, client-side: containerd 1.6 has no Transfer service, so the agent
//! fetches manifests and blobs itself (`oci-client`) and writes them into containerd's content
//! store. Credentials come from `imagePullSecrets` ([`RegistryAuth`]).

use std::fmt;

use base64::Engine as _;
use futures::TryStreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;

use super::oci::{self, Descriptor, Index, Manifest};
use super::reference::{Reference, DOCKER_HUB};
use super::store::{self, Lease};
use super::ImageError;
use crate::runtime::Containerd;

/// Credentials for one registry, from a `kubernetes.io/dockerconfigjson` secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry they are for, as in a reference (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryAuth {
    /// The credentials for `registry` in a secret's `.dockerconfigjson` (`{"auths": {SERVER:
    /// {"username", "password"} or {"auth": base64("user:password")}}}`) or legacy `.dockercfg`
    /// (the same map without `auths`). Servers match by host and port, so
    /// `https://index.docker.io/v1/` is `docker.io`. `None` when the secret has nothing for it
    /// or cannot be read.
    pub fn from_dockerconfigjson(bytes: &[u8], registry: &str) -> Option<RegistryAuth> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let auths = value.get("auths").unwrap_or(&value).as_object()?;
        let wanted = server_host(registry);
        auths.iter().find_map(|(server, entry)| {
            if server_host(server) != wanted {
                return None;
            }
            let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
            let (username, password) = if !field("username").is_empty() {
                (field("username").to_string(), field("password").to_string())
            } else {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(field("auth"))
                    .ok()?;
                let decoded = String::from_utf8(decoded).ok()?;
                let (user, pass) = decoded.split_once(':')?;
                (user.to_string(), pass.to_string())
            };
            Some(RegistryAuth {
                registry: wanted.clone(),
                username,
                password,
            })
        })
    }
}

impl RegistryAuth {
    /// Whether these credentials are for `registry` (`host[:port]`; Docker Hub by any name).
    pub fn matches(&self, registry: &str) -> bool {
        server_host(&self.registry) == server_host(registry)
    }

    /// The credentials for `image`'s registry in a pod's `imagePullSecrets`, as kubelet reads
    /// them: `kubernetes.io/dockerconfigjson` secrets (key `.dockerconfigjson`) and legacy
    /// `kubernetes.io/dockercfg` ones (key `.dockercfg`), in the pod's order. Other secrets and
    /// ones without an entry for the registry are skipped.
    pub fn from_secrets(
        secrets: &[k8s_openapi::api::core::v1::Secret],
        image: &str,
    ) -> Vec<RegistryAuth> {
        let Ok(reference) = super::Reference::parse(image) else {
            return Vec::new();
        };
        secrets
            .iter()
            .filter_map(|secret| {
                let key = match secret.type_.as_deref() {
                    Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
                    Some("kubernetes.io/dockercfg") => ".dockercfg",
                    _ => return None,
                };
                let data = secret.data.as_ref()?.get(key)?;
                RegistryAuth::from_dockerconfigjson(&data.0, &reference.registry)
            })
            .collect()
    }
}

/// A docker config server key or registry name reduced to `host[:port]`, Docker Hub's many
/// names to `docker.io`.
fn server_host(server: &str) -> String {
    let server = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = server
        .split('/')
        .next()
        .unwrap_or(server)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

/// Fetches `reference` from its registry into containerd's content store (what is there
/// already is not fetched again), with `auth` or anonymously, and returns the image's target:
/// its index or manifest.
pub async fn pull(
    containerd: &Containerd,
    lease: &Lease,
    reference: &Reference,
    auth: Option<&RegistryAuth>,
) -> Result<Descriptor, ImageError> {
    let image = reference.to_string();
    let registry = reference.registry.clone();
    let fail = |source: OciDistributionError| classify(&image, &registry, source);

    // rustls needs a process-wide crypto provider; Skiff uses ring everywhere. Installing it
    // twice is harmless (the second call reports the first and changes nothing).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if reference.is_loopback_registry() {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let remote = match &reference.digest {
        Some(digest) => oci_client::Reference::with_digest(
            registry.clone(),
            reference.repository.clone(),
            digest.clone(),
        ),
        None => oci_client::Reference::with_tag(
            registry.clone(),
            reference.repository.clone(),
            reference.tag.clone().unwrap_or_else(|| "latest".into()),
        ),
    };
    let auth = match auth {
        Some(a) => oci_client::secrets::RegistryAuth::Basic(a.username.clone(), a.password.clone()),
        None => oci_client::secrets::RegistryAuth::Anonymous,
    };

    let (bytes, _) = client
        .pull_manifest_raw(&remote, &auth, oci::MANIFEST_TYPES)
        .await
        .map_err(fail)?;
    let target = manifest_descriptor(&image, &bytes)?;
    if let Some(pinned) = &reference.digest {
        if &target.digest != pinned {
            return Err(ImageError::Invalid {
                image,
                reason: format!("the registry served {} for it", target.digest),
            });
        }
    }
    let manifest_bytes = if oci::is_index(&target.media_type) {
        let index: Index = parse(&image, &bytes)?;
        let chosen = oci::choose_platform(&index)
            .cloned()
            .ok_or_else(|| no_platform(&image))?;
        let (child, _) = client
            .pull_manifest_raw(
                &remote.clone_with_digest(chosen.digest.clone()),
                &auth,
                oci::MANIFEST_TYPES,
            )
            .await
            .map_err(fail)?;
        let descriptor = manifest_descriptor(&image, &child)?;
        if descriptor.digest != chosen.digest {
            return Err(ImageError::Invalid {
                image,
                reason: format!(
                    "manifest {} arrived with digest {}",
                    chosen.digest, descriptor.digest
                ),
            });
        }
        store::write_bytes(containerd, lease, &descriptor, child.to_vec()).await?;
        child
    } else {
        bytes.clone()
    };
    let manifest: Manifest = parse(&image, &manifest_bytes)?;
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if store::content_info(containerd, &blob.digest)
            .await?
            .is_some()
        {
            continue;
        }
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            ..Default::default()
        };
        let stream = client
            .pull_blob_stream(&remote, &descriptor)
            .await
            .map_err(fail)?;
        let chunks = stream.stream.map_err(std::io::Error::other);
        store::write_stream(containerd, lease, blob, chunks).await?;
    }
    // The root goes in last: a root in the store means what it names is there too.
    store::write_bytes(containerd, lease, &target, bytes.to_vec()).await?;
    Ok(target)
}

/// The descriptor of a manifest or index served as `bytes`.
fn manifest_descriptor(image: &str, bytes: &[u8]) -> Result<Descriptor, ImageError> {
    let media_type = oci::sniff_media_type(bytes).ok_or_else(|| ImageError::Invalid {
        image: image.to_string(),
        reason: "the registry served a manifest that is neither an image manifest nor an index"
            .into(),
    })?;
    if !oci::MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(ImageError::Invalid {
            image: image.to_string(),
            reason: format!("unsupported manifest type {media_type}"),
        });
    }
    Ok(Descriptor {
        media_type,
        digest: oci::sha256(bytes),
        size: bytes.len() as i64,
        ..Default::default()
    })
}

fn parse<T: serde::de::DeserializeOwned>(image: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Invalid {
        image: image.to_string(),
        reason: format!("unreadable manifest: {e}"),
    })
}

fn no_platform(image: &str) -> ImageError {
    ImageError::Invalid {
        image: image.to_string(),
        reason: format!("it has no manifest for linux/{}", oci::host_arch()),
    }
}

/// Sorts a registry failure into not found, unauthorized, or anything else.
fn classify(image: &str, registry: &str, source: OciDistributionError) -> ImageError {
    let (image, registry) = (image.to_string(), registry.to_string());
    let not_found = |detail: String| ImageError::NotFound {
        image: image.clone(),
        registry: registry.clone(),
        detail,
    };
    let unauthorized = |detail: String| ImageError::Unauthorized {
        image: image.clone(),
        registry: registry.clone(),
        detail,
    };
    match &source {
        OciDistributionError::ImageManifestNotFoundError(detail) => not_found(detail.clone()),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found(source.to_string())
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(source.to_string())
            } else {
                ImageError::Pull {
                    image,
                    registry,
                    source,
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(source.to_string()),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(source.to_string()),
        _ => ImageError::Pull {
            image,
            registry,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secrets_give_the_image_registry_its_credentials() {
        use k8s_openapi::api::core::v1::Secret;
        use k8s_openapi::ByteString;
        let secret = |type_: &str, key: &str, config: serde_json::Value| Secret {
            type_: Some(type_.to_string()),
            data: Some(
                [(key.to_string(), ByteString(config.to_string().into_bytes()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        };
        let secrets = [
            secret(
                "Opaque",
                ".dockerconfigjson",
                serde_json::json!({"auths": {"127.0.0.1:5000": {"username": "no", "password": "no"}}}),
            ),
            secret(
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                serde_json::json!({"auths": {"127.0.0.1:5000": {"username": "a", "password": "1"}}}),
            ),
            secret(
                "kubernetes.io/dockercfg",
                ".dockercfg",
                serde_json::json!({"https://index.docker.io/v1/": {"username": "b", "password": "2"}}),
            ),
        ];
        let users = |image: &str| -> Vec<String> {
            RegistryAuth::from_secrets(&secrets, image)
                .into_iter()
                .map(|a| a.username)
                .collect()
        };
        assert_eq!(users("127.0.0.1:5000/app:1"), vec!["a"]);
        assert_eq!(users("busybox"), vec!["b"]);
        assert!(users("quay.io/x/y").is_empty());
        assert!(users("Not Valid").is_empty());
    }

    #[test]
    fn dockerconfigjson_gives_the_registry_its_credentials() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"username": "hub", "password": "hubpass"},
            "127.0.0.1:5000": {"auth": auth},
        }})
        .to_string();
        let check = |registry: &str, expected: Option<(&str, &str)>| {
            let got = RegistryAuth::from_dockerconfigjson(config.as_bytes(), registry);
            assert_eq!(
                got.as_ref()
                    .map(|a| (a.username.as_str(), a.password.as_str())),
                expected,
                "{registry}"
            );
        };
        check("docker.io", Some(("hub", "hubpass")));
        check("127.0.0.1:5000", Some(("bob", "s3cret")));
        check("127.0.0.1:5001", None);
        check("quay.io", None);
        // Legacy .dockercfg: the map without "auths".
        let legacy = serde_json::json!({"quay.io": {"auth": auth}}).to_string();
        assert!(RegistryAuth::from_dockerconfigjson(legacy.as_bytes(), "quay.io").is_some());
        assert!(RegistryAuth::from_dockerconfigjson(b"not json", "quay.io").is_none());
        assert!(!format!(
            "{:?}",
            RegistryAuth::from_dockerconfigjson(config.as_bytes(), "docker.io")
        )
        .contains("hubpass"));
    }
}
