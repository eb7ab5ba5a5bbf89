//! The node API's TLS: a self-signed serving certificate made at start (as kubelet does
//! without `serverTLSBootstrap`), and client certificates required, signed by the cluster CA.
//! A peer without one never gets past the handshake, so nothing is served unauthenticated.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The serving certificate's file under the agent's certificate directory.
pub const CERT_FILE: &str = "kubelet.crt";
/// The serving key's file under the agent's certificate directory.
pub const KEY_FILE: &str = "kubelet.key";

/// Why the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the node's serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("cannot build the node API's tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot use the cluster ca for client certificates: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

/// Loads `<dir>/kubelet.crt` and `kubelet.key`, or makes a self-signed pair for `hostname` and
/// `ips` (valid one year) and stores it there (key mode 0600).
pub fn load_or_create_serving_cert(
    dir: &Path,
    hostname: &str,
    ips: &[IpAddr],
) -> Result<ServingCert, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        return Ok(ServingCert { cert_pem, key_pem });
    }
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{hostname}@skiff-node"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(hostname.try_into().map_err(|e| {
        TlsError::Invalid {
            what: "node hostname",
            detail: format!("{hostname:?}: {e}"),
        }
    })?)];
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key)?;
    let serving = ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    write_file(&key_path, &serving.key_pem, 0o600).map_err(io("write", &key_path))?;
    write_file(&cert_path, &serving.cert_pem, 0o644).map_err(io("write", &cert_path))?;
    Ok(serving)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The rustls configuration of the node API: `serving` as its certificate, HTTP/1.1 only (exec
/// upgrades the connection), and client certificates required, issued by a CA in
/// `client_ca_pem` (the cluster CA, from the kubeconfig's `certificate-authority-data`).
pub fn server_config(
    serving: &ServingCert,
    client_ca_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem) {
        let cert = cert.map_err(|e| TlsError::Invalid {
            what: "cluster ca pem",
            detail: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            what: "cluster ca pem",
            detail: "no certificate in it".into(),
        });
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what: "serving certificate pem",
            detail: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| {
        TlsError::Invalid {
            what: "serving key pem",
            detail: e.to_string(),
        }
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The cluster CA from a kubeconfig: its current context's cluster `certificate-authority-data`
/// (or the file `certificate-authority` names).
pub fn cluster_ca_from_kubeconfig(path: &Path) -> Result<Vec<u8>, TlsError> {
    let invalid = |detail: String| TlsError::Invalid {
        what: "kubeconfig",
        detail: format!("{}: {detail}", path.display()),
    };
    let config = kube::config::Kubeconfig::read_from(path).map_err(|e| invalid(e.to_string()))?;
    let context = config
        .current_context
        .as_deref()
        .and_then(|name| config.contexts.iter().find(|c| c.name == name))
        .and_then(|c| c.context.as_ref());
    let cluster_name = context.map(|c| c.cluster.as_str());
    let cluster = config
        .clusters
        .iter()
        .find(|c| cluster_name.is_none_or(|n| c.name == n))
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| invalid("no cluster in it".into()))?;
    if let Some(data) = &cluster.certificate_authority_data {
        return base64_decode(data)
            .ok_or_else(|| invalid("certificate-authority-data is not base64".into()));
    }
    if let Some(file) = &cluster.certificate_authority {
        return std::fs::read(file).map_err(|source| TlsError::Io {
            action: "read the cluster ca",
            path: PathBuf::from(file),
            source,
        });
    }
    Err(invalid(
        "its cluster has no certificate-authority-data; the node needs the cluster ca to check the master's client certificate".into(),
    ))
}

/// Standard base64 (with or without padding, whitespace ignored).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=\n").unwrap(), b"hi");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn serving_cert_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ips = ["127.0.0.1".parse().unwrap()];
        let a = load_or_create_serving_cert(dir.path(), "node-1", &ips).unwrap();
        let b = load_or_create_serving_cert(dir.path(), "node-1", &ips).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(server_config(&a, b"not pem").is_err());
        assert!(server_config(&a, a.cert_pem.as_bytes()).is_ok());
    }
}
