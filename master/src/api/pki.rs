//! The cluster's PKI, kept under `<data-dir>/pki/` as kube-apiserver and k3s keep theirs.
//!
//! On first start [`load_or_create`] makes a cluster CA (`ca.crt`, `ca.key`), a serving
//! certificate for the API server signed by it (`apiserver.crt`, `apiserver.key`) and the admin
//! bearer token (`admin.token`), and the service-account signing key (`sa.key`, its public half
//! in `sa.pub`, as kubeadm names them). Later starts load them. The serving certificate is re-issued
//! from the same CA when it lacks a requested subject alternative name, expires within 30 days,
//! does not match its key or was not signed by the current CA; the CA, the token and the
//! service-account key are never replaced automatically, since every kubeconfig, node and
//! issued service-account token depends on them.
//!
//! Keys and the token are written with mode 0600 in a directory of mode 0700, each file
//! atomically (temporary file, fsync, rename), so a crash never leaves a half-written key.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The cluster CA's certificate, handed to clients (`certificate-authority-data`).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The cluster CA's private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The API server's serving certificate.
pub const SERVER_CERT_FILE: &str = "apiserver.crt";
/// The API server's serving key.
pub const SERVER_KEY_FILE: &str = "apiserver.key";
/// The admin bearer token, one line.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The key that signs service-account tokens (kube-apiserver's
/// `--service-account-signing-key-file`): ECDSA P-256, PKCS#8 PEM.
pub const SERVICE_ACCOUNT_KEY_FILE: &str = "sa.key";
/// Its public key (`--service-account-key-file`), PKIX PEM, for whoever verifies the tokens.
pub const SERVICE_ACCOUNT_PUBLIC_KEY_FILE: &str = "sa.pub";
/// The client certificate the API server presents to node agents (`pods/log`, `pods/exec`).
pub const KUBELET_CLIENT_CERT_FILE: &str = "apiserver-kubelet-client.crt";
/// Its private key.
pub const KUBELET_CLIENT_KEY_FILE: &str = "apiserver-kubelet-client.key";

/// Names the serving certificate always covers, besides the hosts the caller asks for: loopback
/// and the in-cluster names of the `kubernetes` Service. The Service's IP (10.96.0.1 by default)
/// depends on the Service CIDR, so the caller passes it in `hosts`.
pub const DEFAULT_SERVER_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

const CA_COMMON_NAME: &str = "skiff-ca";
const SERVER_COMMON_NAME: &str = "skiff-apiserver";
const CA_VALIDITY: Duration = Duration::days(3650);
const SERVER_VALIDITY: Duration = Duration::days(365);
/// A serving certificate that expires within this window is re-issued at start.
const RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start to be valid this long before they are made, for clocks that lag ours.
const BACKDATE: Duration = Duration::hours(1);
const TOKEN_BYTES: usize = 32;

const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;
const PUBLIC_FILE_MODE: u32 = 0o644;

/// Errors of loading, creating or using the PKI. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot set the permissions of {path}: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is not a valid {what}: {detail}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },

    #[error("{path} is missing but {present} exists; restore it, or remove both to create a new cluster ca (every kubeconfig and node must then be given the new ca.crt)")]
    Missing { path: PathBuf, present: PathBuf },

    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("invalid host {host:?} for the serving certificate: {reason}")]
    InvalidHost { host: String, reason: String },

    #[error("failed to generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    #[error("cannot read random bytes from the operating system: {source}")]
    Random {
        #[source]
        source: getrandom::Error,
    },

    #[error("failed to build the tls server config from {cert} and {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The cluster's CA, the API server's serving certificate and the admin token, as PEM and text.
#[derive(Clone)]
pub struct Pki {
    /// The cluster CA's certificate (`ca.crt`).
    pub ca_cert_pem: String,
    /// The serving certificate (`apiserver.crt`), signed by the CA.
    pub server_cert_pem: String,
    /// The serving certificate's PKCS#8 private key (`apiserver.key`).
    pub server_key_pem: String,
    /// The admin bearer token (`admin.token`): 32 random bytes, hex.
    pub admin_token: String,
    /// The client certificate for node agents (`apiserver-kubelet-client.crt`; CN
    /// `kube-apiserver-kubelet-client`, O `system:masters`), signed by the CA.
    pub kubelet_client_cert_pem: String,
    /// Its PKCS#8 private key (`apiserver-kubelet-client.key`).
    pub kubelet_client_key_pem: String,
    /// The service-account token signing key (`sa.key`).
    pub service_account_key: Arc<ServiceAccountKey>,
    dir: PathBuf,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("server_cert_pem", &self.server_cert_pem)
            .field("server_key_pem", &"[redacted]")
            .field("admin_token", &"[redacted]")
            .field("kubelet_client_cert_pem", &self.kubelet_client_cert_pem)
            .field("kubelet_client_key_pem", &"[redacted]")
            .field("service_account_key", &self.service_account_key)
            .finish()
    }
}

/// Installs rustls's ring provider as the process default, for code that builds rustls configs
/// without naming a provider. Does nothing when a default is already installed.
/// [`Pki::rustls_server_config`] names its provider itself and does not need this.
pub fn install_crypto_provider() {
    // Err means another provider is already the default: nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the PKI under `dir`, creating what is missing; see the module documentation.
///
/// `hosts` are the names and addresses clients reach the API server by (node name, node IPs,
/// the `kubernetes` Service IP, ...); IP addresses become IP SANs, the rest DNS SANs. The
/// serving certificate always also covers [`DEFAULT_SERVER_NAMES`].
pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki, PkiError> {
    let wanted = wanted_sans(hosts)?;
    ensure_private_dir(dir)?;
    let now = OffsetDateTime::now_utc();
    let ca = load_or_create_ca(dir, now)?;
    let admin_token = load_or_create_token(dir)?;
    let (server_cert_pem, server_key_pem) = load_or_issue_server_cert(dir, &ca, &wanted, now)?;
    let (kubelet_client_cert_pem, kubelet_client_key_pem) =
        load_or_issue_kubelet_client_cert(dir, &ca, now)?;
    let service_account_key = Arc::new(load_or_create_service_account_key(dir)?);
    Ok(Pki {
        ca_cert_pem: ca.cert_pem,
        server_cert_pem,
        server_key_pem,
        admin_token,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
        service_account_key,
        dir: dir.to_path_buf(),
    })
}

/// The key that signs and verifies service-account tokens (JWS `ES256`): ECDSA P-256 in ring.
pub struct ServiceAccountKey {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The JWS `kid`: unpadded base64url of the SHA-256 of the public key's PKIX DER, as
    /// kube-apiserver computes it.
    pub key_id: String,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The PKIX (SubjectPublicKeyInfo) DER prefix of an uncompressed P-256 point: id-ecPublicKey,
/// prime256v1, then the 65-byte BIT STRING.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl ServiceAccountKey {
    /// A key from its PKCS#8 DER; the error says why ring refused it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not an ecdsa p-256 pkcs#8 key: {e}"))?;
        let key_id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, &spki_der(&key_pair)).as_ref());
        Ok(Self {
            key_pair,
            rng,
            key_id,
        })
    }

    /// A new random key (tests; [`load_or_create`] persists its own).
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            PkiError::Generate {
                what: "the service account signing key",
                source,
            }
        })?;
        Self::from_pkcs8(&key.serialize_der()).map_err(|detail| PkiError::Invalid {
            path: PathBuf::new(),
            what: "generated service account key",
            detail,
        })
    }

    /// The ES256 signature of `message` (JWS form: r and s, 32 bytes each).
    pub fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        self.key_pair
            .sign(&self.rng, message)
            .ok()
            .map(|s| s.as_ref().to_vec())
    }

    /// Whether `signature` is this key's ES256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            self.key_pair.public_key().as_ref(),
        )
        .verify(message, signature)
        .is_ok()
    }

    /// The public key as PKIX PEM (`sa.pub`).
    pub fn public_key_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki_der(&self.key_pair));
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }
}

fn spki_der(key_pair: &EcdsaKeyPair) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key_pair.public_key().as_ref());
    der
}

/// Loads `sa.key`, or creates it (and `sa.pub`) on first start. `sa.pub` is rewritten from the
/// key when missing or different.
fn load_or_create_service_account_key(dir: &Path) -> Result<ServiceAccountKey, PkiError> {
    let key_path = dir.join(SERVICE_ACCOUNT_KEY_FILE);
    let pub_path = dir.join(SERVICE_ACCOUNT_PUBLIC_KEY_FILE);
    let key = match read_optional(&key_path)? {
        Some(bytes) => {
            let pair = parse_key_pem(&key_path, &bytes)?;
            ServiceAccountKey::from_pkcs8(&pair.serialize_der()).map_err(|detail| {
                PkiError::Invalid {
                    path: key_path.clone(),
                    what: "service account signing key",
                    detail,
                }
            })?
        }
        None => {
            let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
                PkiError::Generate {
                    what: "the service account signing key",
                    source,
                }
            })?;
            let key = ServiceAccountKey::from_pkcs8(&pair.serialize_der()).map_err(|detail| {
                PkiError::Invalid {
                    path: key_path.clone(),
                    what: "generated service account key",
                    detail,
                }
            })?;
            write_atomic(
                &key_path,
                pair.serialize_pem().as_bytes(),
                PRIVATE_FILE_MODE,
            )?;
            tracing::info!(path = %key_path.display(), "created the service account signing key");
            key
        }
    };
    let public = key.public_key_pem();
    if read_optional(&pub_path)?.as_deref() != Some(public.as_bytes()) {
        write_atomic(&pub_path, public.as_bytes(), PUBLIC_FILE_MODE)?;
    }
    Ok(key)
}

impl Pki {
    /// The directory the PKI files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A rustls server config serving the certificate chain (serving certificate, then CA) with
    /// TLS 1.3 and 1.2, offering ALPN `h2` and `http/1.1`. Uses the ring provider explicitly,
    /// whatever the process default is.
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let cert_path = self.dir.join(SERVER_CERT_FILE);
        let key_path = self.dir.join(SERVER_KEY_FILE);
        let server_cert = parse_cert_pem(&cert_path, self.server_cert_pem.as_bytes())?;
        let ca_cert = parse_cert_pem(&self.dir.join(CA_CERT_FILE), self.ca_cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).map_err(|e| {
            PkiError::Invalid {
                path: key_path.clone(),
                what: "pem private key",
                detail: e.to_string(),
            }
        })?;
        let tls_error = |source| PkiError::Tls {
            cert: cert_path.clone(),
            key: key_path.clone(),
            source,
        };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(tls_error)?
            // Clients authenticate with bearer tokens for now. For x509 client certificates (as
            // kube-apiserver's --client-ca-file), replace this with
            // `.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(roots,
            // provider).allow_unauthenticated().build()?)`, roots holding the client CA, so that
            // token clients still connect; the authenticator then reads the verified chain from
            // `ServerConnection::peer_certificates`.
            .with_no_client_auth()
            .with_single_cert(vec![server_cert, ca_cert], key)
            .map_err(tls_error)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Writes a kubeconfig for `server_url` that trusts the cluster CA and authenticates as
    /// `user` with the admin token: cluster, context and current context "skiff". The file gets
    /// mode 0600 and is replaced atomically; its directory is created if missing.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server_url: &str,
        user: &str,
    ) -> Result<(), PkiError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| PkiError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let ca_data = base64::engine::general_purpose::STANDARD.encode(&self.ca_cert_pem);
        // JSON strings are YAML double-quoted scalars, escapes included.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let yaml = format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    certificate-authority-data: {ca}
    server: {server}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: {user}
current-context: skiff
preferences: {{}}
"#,
            ca = q(&ca_data),
            server = q(server_url),
            user = q(user),
            token = q(&self.admin_token),
        );
        write_atomic(path, yaml.as_bytes(), PRIVATE_FILE_MODE)
    }

    /// Whether `presented` is the admin token, compared in constant time (the token's length is
    /// not secret).
    pub fn check_token(&self, presented: &str) -> bool {
        !self.admin_token.is_empty()
            && bool::from(presented.as_bytes().ct_eq(self.admin_token.as_bytes()))
    }
}

/// A subject alternative name the serving certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum San {
    /// Lowercase.
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(name) => f.write_str(name),
            San::Ip(ip) => ip.fmt(f),
        }
    }
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(name) => {
                SanType::DnsName(name.clone().try_into().map_err(|e: rcgen::Error| {
                    PkiError::InvalidHost {
                        host: name.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
        })
    }
}

/// The requested hosts, then the defaults, parsed and without duplicates.
fn wanted_sans(hosts: &[String]) -> Result<Vec<San>, PkiError> {
    let mut sans: Vec<San> = Vec::new();
    for host in hosts
        .iter()
        .map(String::as_str)
        .chain(DEFAULT_SERVER_NAMES.iter().copied())
    {
        let san = parse_host(host)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn parse_host(host: &str) -> Result<San, PkiError> {
    let invalid = |reason: &str| PkiError::InvalidHost {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = host.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(San::Ip(ip));
    }
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    if trimmed.len() > 253 {
        return Err(invalid("a dns name has at most 253 characters"));
    }
    let name = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Err(invalid(
            "not an ip address or a dns name (dot-separated labels of letters, digits, '-' and '_', \
             not starting or ending with '-', optionally after '*.')",
        ));
    }
    Ok(San::Dns(trimmed.to_ascii_lowercase()))
}

/// The cluster CA: its certificate as PEM and DER, and its key.
struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    cert_path: PathBuf,
}

impl Ca {
    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(|e| PkiError::Invalid {
            path: self.cert_path.clone(),
            what: "ca certificate",
            detail: e.to_string(),
        })
    }
}

fn load_or_create_ca(dir: &Path, now: OffsetDateTime) -> Result<Ca, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert), Some(key)) => load_ca(cert_path, &cert, &key_path, &key, now),
        (None, None) => create_ca(cert_path, &key_path, now),
        (Some(_), None) => Err(PkiError::Missing {
            path: key_path,
            present: cert_path,
        }),
        (None, Some(_)) => Err(PkiError::Missing {
            path: cert_path,
            present: key_path,
        }),
    }
}

fn load_ca(
    cert_path: PathBuf,
    cert_bytes: &[u8],
    key_path: &Path,
    key_bytes: &[u8],
    now: OffsetDateTime,
) -> Result<Ca, PkiError> {
    let cert_der = parse_cert_pem(&cert_path, cert_bytes)?;
    let cert = parse_x509(&cert_path, &cert_der)?;
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(PkiError::Invalid {
            path: cert_path,
            what: "ca certificate",
            detail: "it is not a ca (basic constraints ca:true missing)".to_string(),
        });
    }
    let key = parse_key_pem(key_path, key_bytes)?;
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err(PkiError::KeyMismatch {
            cert: cert_path,
            key: key_path.to_path_buf(),
        });
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= (now + RENEW_BEFORE).unix_timestamp() {
        tracing::warn!(
            path = %cert_path.display(),
            not_after = %cert.validity().not_after,
            "the cluster ca expires within 30 days or has expired; clients will reject the api \
             server once it has: create a new ca and hand it to every client and node"
        );
    }
    let cert_pem = String::from_utf8(cert_bytes.to_vec()).map_err(|e| PkiError::Invalid {
        path: cert_path.clone(),
        what: "pem certificate",
        detail: e.to_string(),
    })?;
    Ok(Ca {
        cert_pem,
        cert_der,
        key,
        cert_path,
    })
}

fn create_ca(cert_path: PathBuf, key_path: &Path, now: OffsetDateTime) -> Result<Ca, PkiError> {
    let generate = |what| move |source| PkiError::Generate { what, source };
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate("the cluster ca key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params
        .self_signed(&key)
        .map_err(generate("the cluster ca certificate"))?;
    // Key first: a crash before the certificate is written leaves a lone key, which the next
    // start reports rather than silently replacing.
    write_atomic(key_path, key.serialize_pem().as_bytes(), PRIVATE_FILE_MODE)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), PUBLIC_FILE_MODE)?;
    tracing::info!(path = %cert_path.display(), "created the cluster ca");
    Ok(Ca {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key,
        cert_path,
    })
}

fn load_or_create_token(dir: &Path) -> Result<String, PkiError> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if let Some(bytes) = read_optional(&path)? {
        let invalid = |detail: &str| PkiError::Invalid {
            path: path.clone(),
            what: "bearer token",
            detail: detail.to_string(),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("it is not utf-8"))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "it must be one line of printable ascii without spaces",
            ));
        }
        return Ok(token.to_string());
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|source| PkiError::Random { source })?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(&path, format!("{token}\n").as_bytes(), PRIVATE_FILE_MODE)?;
    tracing::info!(path = %path.display(), "created the admin token");
    Ok(token)
}

fn load_or_issue_server_cert(
    dir: &Path,
    ca: &Ca,
    wanted: &[San],
    now: OffsetDateTime,
) -> Result<(String, String), PkiError> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let reason = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert_bytes), Some(key_bytes)) => {
            let cert_der = parse_cert_pem(&cert_path, &cert_bytes)?;
            let cert = parse_x509(&cert_path, &cert_der)?;
            let key = parse_key_pem(&key_path, &key_bytes)?;
            let ca_cert = parse_x509(&ca.cert_path, &ca.cert_der)?;
            match reissue_reason(&cert, &key, &ca_cert, wanted, now) {
                None => {
                    let text = |path: &Path, bytes: Vec<u8>| {
                        String::from_utf8(bytes).map_err(|e| PkiError::Invalid {
                            path: path.to_path_buf(),
                            what: "pem file",
                            detail: e.to_string(),
                        })
                    };
                    return Ok((text(&cert_path, cert_bytes)?, text(&key_path, key_bytes)?));
                }
                Some(reason) => reason,
            }
        }
        _ => "it does not exist".to_string(),
    };
    tracing::info!(path = %cert_path.display(), %reason, "issuing the api server's serving certificate");
    let (cert_pem, key_pem) = issue_server_cert(ca, wanted, now, SERVER_VALIDITY)?;
    // Key then certificate: after a crash in between they do not match, and the next start
    // issues both again.
    write_atomic(&key_path, key_pem.as_bytes(), PRIVATE_FILE_MODE)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC_FILE_MODE)?;
    Ok((cert_pem, key_pem))
}

/// Loads the kubelet client certificate, or issues it when it is missing, expires within 30
/// days or was not signed by the current CA.
fn load_or_issue_kubelet_client_cert(
    dir: &Path,
    ca: &Ca,
    now: OffsetDateTime,
) -> Result<(String, String), PkiError> {
    let cert_path = dir.join(KUBELET_CLIENT_CERT_FILE);
    let key_path = dir.join(KUBELET_CLIENT_KEY_FILE);
    if let (Some(cert_bytes), Some(key_bytes)) =
        (read_optional(&cert_path)?, read_optional(&key_path)?)
    {
        let cert_der = parse_cert_pem(&cert_path, &cert_bytes)?;
        let cert = parse_x509(&cert_path, &cert_der)?;
        let ca_cert = parse_x509(&ca.cert_path, &ca.cert_der)?;
        let fresh = cert.validity().not_after.timestamp() > (now + RENEW_BEFORE).unix_timestamp();
        let ours = cert.verify_signature(Some(ca_cert.public_key())).is_ok();
        if let (true, true, Ok(cert_pem), Ok(key_pem)) = (
            fresh,
            ours,
            String::from_utf8(cert_bytes),
            String::from_utf8(key_bytes),
        ) {
            return Ok((cert_pem, key_pem));
        }
    }
    tracing::info!(path = %cert_path.display(), "issuing the api server's kubelet client certificate");
    let generate = |what| move |source| PkiError::Generate { what, source };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(generate("the kubelet client key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name("kube-apiserver-kubelet-client");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVER_VALIDITY;
    let cert = params
        .signed_by(&key, &ca.issuer()?)
        .map_err(generate("the kubelet client certificate"))?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    write_atomic(&key_path, key_pem.as_bytes(), PRIVATE_FILE_MODE)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC_FILE_MODE)?;
    Ok((cert_pem, key_pem))
}

/// Why the serving certificate must be issued again, or `None` when it is fine.
fn reissue_reason(
    cert: &X509Certificate<'_>,
    key: &KeyPair,
    ca: &X509Certificate<'_>,
    wanted: &[San],
    now: OffsetDateTime,
) -> Option<String> {
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(key) {
        return Some(format!("it does not match {SERVER_KEY_FILE}"));
    }
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Some("it was not signed by the current cluster ca".to_string());
    }
    let validity = cert.validity();
    if validity.not_before.timestamp() > now.unix_timestamp() {
        return Some(format!("it is not valid before {}", validity.not_before));
    }
    if validity.not_after.timestamp() <= (now + RENEW_BEFORE).unix_timestamp() {
        return Some(format!(
            "it expires at {}, within 30 days",
            validity.not_after
        ));
    }
    let present = cert_sans(cert);
    let missing: Vec<String> = wanted
        .iter()
        .filter(|san| !present.contains(san))
        .map(San::to_string)
        .collect();
    if !missing.is_empty() {
        return Some(format!("it lacks {}", missing.join(", ")));
    }
    None
}

/// The DNS and IP subject alternative names of `cert`; empty if it has none or they are invalid.
fn cert_sans(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(San::Dns(dns.to_ascii_lowercase())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            }
            .map(San::Ip),
            _ => None,
        })
        .collect()
}

/// A new serving key and certificate signed by the CA, valid from `now` (backdated) for
/// `validity`, as PEM.
fn issue_server_cert(
    ca: &Ca,
    sans: &[San],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(String, String), PkiError> {
    let generate = |what| move |source| PkiError::Generate { what, source };
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate("the serving key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(SERVER_COMMON_NAME);
    params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let cert = params
        .signed_by(&key, &ca.issuer()?)
        .map_err(generate("the serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn parse_cert_pem(path: &Path, bytes: &[u8]) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(bytes).map_err(|e| PkiError::Invalid {
        path: path.to_path_buf(),
        what: "pem certificate",
        detail: e.to_string(),
    })
}

fn parse_x509<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Invalid {
            path: path.to_path_buf(),
            what: "x509 certificate",
            detail: e.to_string(),
        })
}

fn parse_key_pem(path: &Path, bytes: &[u8]) -> Result<KeyPair, PkiError> {
    let invalid = |detail: String| PkiError::Invalid {
        path: path.to_path_buf(),
        what: "pem pkcs#8 private key",
        detail,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(e.to_string()))?;
    KeyPair::from_pem(text).map_err(|e| invalid(e.to_string()))
}

/// The file's contents, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `dir` if needed and makes it mode 0700.
fn ensure_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(|source| {
        PkiError::Permissions {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory with
/// `mode` from the start, fsynced, renamed over `path`, then the directory fsynced.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".skiff-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(parent)
        .map_err(write_error)?;
    // The umask may have narrowed the mode at creation; set it exactly.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_error)?;
    tmp.write_all(contents).map_err(write_error)?;
    tmp.as_file().sync_all().map_err(write_error)?;
    tmp.persist(path).map_err(|e| write_error(e.error))?;
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|source| PkiError::Write {
            path: parent.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, SocketAddr};
    use std::process::Command;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn sans_of(cert_pem: &str) -> Vec<San> {
        let der = parse_cert_pem(Path::new("test"), cert_pem.as_bytes()).unwrap();
        cert_sans(&parse_x509(Path::new("test"), &der).unwrap())
    }

    fn not_after_of(cert_pem: &str) -> i64 {
        let der = parse_cert_pem(Path::new("test"), cert_pem.as_bytes()).unwrap();
        parse_x509(Path::new("test"), &der)
            .unwrap()
            .validity()
            .not_after
            .timestamp()
    }

    #[test]
    fn creates_files_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = load_or_create(&dir, &hosts(&["10.96.0.1", "Master.Example"])).unwrap();

        assert_eq!(mode(&dir), 0o700);
        for file in [
            CA_KEY_FILE,
            SERVER_KEY_FILE,
            ADMIN_TOKEN_FILE,
            SERVICE_ACCOUNT_KEY_FILE,
        ] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        for file in [
            CA_CERT_FILE,
            SERVER_CERT_FILE,
            SERVICE_ACCOUNT_PUBLIC_KEY_FILE,
        ] {
            assert_eq!(mode(&dir.join(file)), 0o644, "{file}");
        }
        assert_eq!(
            fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(),
            pki.ca_cert_pem
        );
        assert_eq!(
            fs::read_to_string(dir.join(SERVER_KEY_FILE)).unwrap(),
            pki.server_key_pem
        );
        assert_eq!(pki.admin_token.len(), 2 * TOKEN_BYTES);
        assert!(pki.admin_token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!format!("{pki:?}").contains(&pki.admin_token));

        let sans = sans_of(&pki.server_cert_pem);
        for want in ["10.96.0.1", "master.example"]
            .into_iter()
            .chain(DEFAULT_SERVER_NAMES.iter().copied())
        {
            assert!(
                sans.contains(&parse_host(want).unwrap()),
                "{want} in {sans:?}"
            );
        }
        let days = (not_after_of(&pki.server_cert_pem)
            - OffsetDateTime::now_utc().unix_timestamp())
            / 86_400;
        assert!((364..=365).contains(&days), "{days}");
        let ca_days =
            (not_after_of(&pki.ca_cert_pem) - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((3649..=3650).contains(&ca_days), "{ca_days}");
    }

    #[test]
    fn check_token_accepts_only_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = load_or_create(tmp.path(), &[]).unwrap();
        let token = pki.admin_token.clone();
        assert!(pki.check_token(&token));
        assert!(!pki.check_token(""));
        assert!(!pki.check_token(&token[..token.len() - 1]));
        assert!(!pki.check_token(&format!("{token}x")));
        assert!(!pki.check_token(
            &token
                .to_uppercase()
                .replace(|c: char| c.is_ascii_digit(), "g")
        ));
    }

    #[test]
    fn second_load_keeps_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hosts(&["10.96.0.1", "node-1"]);
        let first = load_or_create(tmp.path(), &h).unwrap();
        let second = load_or_create(tmp.path(), &h).unwrap();
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.server_cert_pem, second.server_cert_pem);
        assert_eq!(first.server_key_pem, second.server_key_pem);
        assert_eq!(
            first.service_account_key.key_id,
            second.service_account_key.key_id
        );
        let signature = first.service_account_key.sign(b"claims").unwrap();
        assert!(second.service_account_key.verify(b"claims", &signature));
        assert!(!second.service_account_key.verify(b"claimz", &signature));
        // Fewer hosts than the certificate covers: still fine as it is.
        let third = load_or_create(tmp.path(), &hosts(&["node-1"])).unwrap();
        assert_eq!(first.server_cert_pem, third.server_cert_pem);
    }

    #[test]
    fn new_host_reissues_the_serving_cert_only() {
        let tmp = tempfile::tempdir().unwrap();
        let first = load_or_create(tmp.path(), &hosts(&["10.96.0.1"])).unwrap();
        let second = load_or_create(
            tmp.path(),
            &hosts(&["10.96.0.1", "192.0.2.7", "node-2.example"]),
        )
        .unwrap();
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.admin_token, second.admin_token);
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
        assert_ne!(first.server_key_pem, second.server_key_pem);
        let sans = sans_of(&second.server_cert_pem);
        assert!(sans.contains(&San::Ip("192.0.2.7".parse().unwrap())));
        assert!(sans.contains(&San::Dns("node-2.example".to_string())));
        assert!(sans.contains(&San::Ip("10.96.0.1".parse().unwrap())));
        // On disk too.
        let on_disk = fs::read_to_string(tmp.path().join(SERVER_CERT_FILE)).unwrap();
        assert_eq!(on_disk, second.server_cert_pem);
    }

    #[test]
    fn expiring_serving_cert_is_reissued() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let first = load_or_create(dir, &[]).unwrap();
        let now = OffsetDateTime::now_utc();
        let ca = load_or_create_ca(dir, now).unwrap();
        let wanted = wanted_sans(&[]).unwrap();
        let (cert, key) = issue_server_cert(&ca, &wanted, now, Duration::days(10)).unwrap();
        fs::write(dir.join(SERVER_CERT_FILE), &cert).unwrap();
        fs::write(dir.join(SERVER_KEY_FILE), &key).unwrap();

        let second = load_or_create(dir, &[]).unwrap();
        assert_ne!(second.server_cert_pem, cert);
        assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
        let days = (not_after_of(&second.server_cert_pem) - now.unix_timestamp()) / 86_400;
        assert!(days >= 364, "{days}");
    }

    #[test]
    fn serving_cert_of_another_ca_or_key_is_reissued() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let pki_a = load_or_create(&a, &[]).unwrap();
        load_or_create(&b, &[]).unwrap();

        // b's serving cert and key under a's CA.
        for file in [SERVER_CERT_FILE, SERVER_KEY_FILE] {
            fs::copy(b.join(file), a.join(file)).unwrap();
        }
        let reissued = load_or_create(&a, &[]).unwrap();
        let b_cert = fs::read_to_string(b.join(SERVER_CERT_FILE)).unwrap();
        assert_ne!(reissued.server_cert_pem, b_cert);
        assert_eq!(reissued.ca_cert_pem, pki_a.ca_cert_pem);

        // A key that does not match the certificate (as after a crash between the two writes).
        fs::copy(b.join(SERVER_KEY_FILE), a.join(SERVER_KEY_FILE)).unwrap();
        let again = load_or_create(&a, &[]).unwrap();
        assert_ne!(again.server_cert_pem, reissued.server_cert_pem);
        assert_eq!(
            fs::read_to_string(a.join(SERVER_KEY_FILE)).unwrap(),
            again.server_key_pem
        );
    }

    #[test]
    fn broken_files_are_errors_naming_the_file() {
        // Each case: set up a good PKI, break it, and expect an error naming the file.
        type Break = fn(&Path);
        let cases: &[(&str, Break, &str)] = &[
            (
                "corrupt ca.key",
                |d| fs::write(d.join(CA_KEY_FILE), "not a key").unwrap(),
                CA_KEY_FILE,
            ),
            (
                "corrupt ca.crt",
                |d| fs::write(d.join(CA_CERT_FILE), "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap(),
                CA_CERT_FILE,
            ),
            (
                "unreadable ca.key",
                |d| {
                    fs::remove_file(d.join(CA_KEY_FILE)).unwrap();
                    fs::create_dir(d.join(CA_KEY_FILE)).unwrap();
                },
                CA_KEY_FILE,
            ),
            (
                "missing ca.key",
                |d| fs::remove_file(d.join(CA_KEY_FILE)).unwrap(),
                CA_KEY_FILE,
            ),
            (
                "missing ca.crt",
                |d| fs::remove_file(d.join(CA_CERT_FILE)).unwrap(),
                CA_CERT_FILE,
            ),
            (
                "ca key of another ca",
                |d| {
                    fs::copy(d.join(SERVER_KEY_FILE), d.join(CA_KEY_FILE))
                        .map(drop)
                        .unwrap()
                },
                CA_KEY_FILE,
            ),
            (
                "empty token",
                |d| fs::write(d.join(ADMIN_TOKEN_FILE), "\n").unwrap(),
                ADMIN_TOKEN_FILE,
            ),
            (
                "corrupt serving cert",
                |d| fs::write(d.join(SERVER_CERT_FILE), "garbage").unwrap(),
                SERVER_CERT_FILE,
            ),
            (
                "corrupt serving key",
                |d| fs::write(d.join(SERVER_KEY_FILE), [0xff, 0xfe]).unwrap(),
                SERVER_KEY_FILE,
            ),
        ];
        for (name, break_it, file) in cases {
            let tmp = tempfile::tempdir().unwrap();
            load_or_create(tmp.path(), &[]).unwrap();
            break_it(tmp.path());
            let err = load_or_create(tmp.path(), &[]).expect_err(name);
            let message = err.to_string();
            let path = tmp.path().join(file);
            assert!(
                message.contains(&path.display().to_string()),
                "{name}: {message}"
            );
            assert!(
                message.starts_with(|c: char| !c.is_ascii_uppercase()),
                "{message}"
            );
        }
    }

    #[test]
    fn invalid_hosts_are_rejected() {
        for host in ["", "bad host", "a..b", "ünïcode.example", "-\n"] {
            let tmp = tempfile::tempdir().unwrap();
            let err = load_or_create(tmp.path(), &hosts(&[host])).expect_err(host);
            assert!(matches!(err, PkiError::InvalidHost { .. }), "{host}: {err}");
        }
        for host in ["[fd00::1]", "*.apps.example", "node_1", "10.0.0.1"] {
            parse_host(host).unwrap();
        }
    }

    /// Serves TLS with `config` on a loopback port: every accepted handshake gets "ok" and the
    /// negotiated ALPN protocol, then the connection closes.
    async fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let alpn = tls.get_ref().1.alpn_protocol().unwrap_or(b"none").to_vec();
                        let _ = tls.write_all(&[b"ok ".as_slice(), &alpn].concat()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// Connects to `addr` as `server_name`, trusting only the CA in `ca_pem`; returns what the
    /// server said.
    async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        server_name: ServerName<'static>,
        tls12_only: bool,
    ) -> Result<String, io::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(server_name, tcp).await?;
        let mut reply = String::new();
        tls.read_to_string(&mut reply).await?;
        Ok(reply)
    }

    #[tokio::test]
    async fn tls_handshake_trusts_only_the_cluster_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = load_or_create(&tmp.path().join("pki"), &hosts(&["skiff.example"])).unwrap();
        let other = load_or_create(&tmp.path().join("other"), &[]).unwrap();
        let addr = serve(pki.rustls_server_config().unwrap()).await;
        // Clients trust the CA as read from disk, as a kubeconfig would carry it.
        let ca_pem = fs::read_to_string(tmp.path().join("pki").join(CA_CERT_FILE)).unwrap();

        let names = [
            ServerName::try_from("localhost").unwrap(),
            ServerName::try_from("kubernetes.default.svc").unwrap(),
            ServerName::try_from("skiff.example").unwrap(),
            ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into()),
        ];
        for name in names {
            let reply = connect(addr, &ca_pem, name.clone(), false).await;
            assert_eq!(reply.unwrap(), "ok h2", "{name:?}");
        }
        let reply = connect(
            addr,
            &ca_pem,
            ServerName::try_from("localhost").unwrap(),
            true,
        )
        .await;
        assert_eq!(reply.unwrap(), "ok h2", "tls 1.2");

        let err = connect(
            addr,
            &other.ca_cert_pem,
            ServerName::try_from("localhost").unwrap(),
            false,
        )
        .await
        .expect_err("a client trusting another ca must fail");
        // Both CAs are named "skiff-ca", so the client finds the other one and its signature
        // check fails (BadSignature rather than UnknownIssuer).
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        let err = connect(
            addr,
            &ca_pem,
            ServerName::try_from("elsewhere.example").unwrap(),
            false,
        )
        .await
        .expect_err("a name the certificate lacks must fail");
        assert!(err.to_string().contains("not valid for name"), "{err}");
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn kubeconfig_is_private_and_kubectl_reads_it() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = load_or_create(&tmp.path().join("pki"), &[]).unwrap();
        let path = tmp.path().join("home").join(".kube").join("config");
        let url = "https://127.0.0.1:6443";
        // Written twice: the second write replaces the first.
        pki.write_kubeconfig(&path, "https://old.example:1", "old")
            .unwrap();
        pki.write_kubeconfig(&path, url, "admin").unwrap();

        assert_eq!(mode(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(url), "{text}");
        assert!(text.contains(&pki.admin_token), "{text}");
        assert!(!text.contains("old"), "{text}");
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("config")]);

        let view = |jsonpath: &str| -> Option<String> {
            let out = Command::new("kubectl")
                .args(["config", "view", "--raw", "--kubeconfig"])
                .arg(&path)
                .args(["-o", &format!("jsonpath={jsonpath}")])
                .env_remove("KUBECONFIG")
                .output();
            match out {
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => panic!("cannot run kubectl: {e}"),
                Ok(out) => {
                    assert!(
                        out.status.success(),
                        "kubectl: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    Some(String::from_utf8(out.stdout).unwrap())
                }
            }
        };
        let Some(server) = view("{.clusters[0].cluster.server}") else {
            eprintln!("note: kubectl is not on PATH; skipped reading the kubeconfig with it");
            return;
        };
        assert_eq!(server, url);
        assert_eq!(view("{.users[0].user.token}").unwrap(), pki.admin_token);
        assert_eq!(view("{.current-context}").unwrap(), "skiff");
        assert_eq!(view("{.contexts[0].context.user}").unwrap(), "admin");
        let ca_data = view("{.clusters[0].cluster.certificate-authority-data}").unwrap();
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca_data)
            .unwrap();
        assert_eq!(String::from_utf8(ca).unwrap(), pki.ca_cert_pem);
    }
}
