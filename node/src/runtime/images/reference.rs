//! Image references, normalised the way Kubernetes (and Docker) do: `busybox` is
//! `docker.io/library/busybox:latest`, `me/app` is `docker.io/me/app:latest`,
//! `127.0.0.1:5000/app` is `127.0.0.1:5000/app:latest`, and a digest keeps no default tag.

use std::fmt;

/// Docker Hub's canonical name in references.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (and port): `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// The repository path inside the registry: `library/busybox`.
    pub repository: String,
    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// The digest (`sha256:…`), if the reference pins one.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `reference`; the error says what is wrong with it.
    pub fn parse(reference: &str) -> Result<Reference, String> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err("the image reference is empty".into());
        }
        if reference.len() > 4096 || reference.chars().any(|c| c.is_whitespace()) {
            return Err("an image reference has no whitespace and is at most 4096 bytes".into());
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest)?;
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                check_tag(tag)?;
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_repository(&repository)?;
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The reference without tag or digest: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the registry is on this machine's loopback, which is reached over plain HTTP
    /// (as containerd and Docker treat `localhost`).
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether `registry` (`host` or `host:port`) names a loopback address.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not of the form sha256:<hex>"));
    };
    let ok = match algorithm {
        "sha256" => hex.len() == 64,
        "sha512" => hex.len() == 128,
        _ => false,
    } && hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "digest {digest:?} is not of the form sha256:<64 lowercase hex digits>"
        ))
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid (letters, digits, '_', '.', '-'; at most 128)"
        ))
    }
}

fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository {repository:?} is invalid (lowercase letters, digits and '._-' \
             between slashes)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        match (Reference::parse(input), expected) {
            (Ok(r), Ok(want)) => assert_eq!(r.to_string(), want, "{input}"),
            (Err(e), Err(part)) => assert!(e.contains(part), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn references_normalise_like_kubernetes() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        check("busybox", Ok("docker.io/library/busybox:latest"));
        check("busybox:1.36", Ok("docker.io/library/busybox:1.36"));
        check("me/app", Ok("docker.io/me/app:latest"));
        check("docker.io/busybox", Ok("docker.io/library/busybox:latest"));
        check("index.docker.io/me/app:v1", Ok("docker.io/me/app:v1"));
        check("skiff.test/busybox:1", Ok("skiff.test/busybox:1"));
        check("localhost/app", Ok("localhost/app:latest"));
        check(
            "127.0.0.1:5000/busybox",
            Ok("127.0.0.1:5000/busybox:latest"),
        );
        check("127.0.0.1:5000/a/b:2", Ok("127.0.0.1:5000/a/b:2"));
        check(
            &format!("busybox@{digest}"),
            Ok(&format!("docker.io/library/busybox@{digest}")),
        );
        check(
            &format!("busybox:1@{digest}"),
            Ok(&format!("docker.io/library/busybox:1@{digest}")),
        );
        check("", Err("empty"));
        check("Busybox", Err("repository"));
        check("busybox:", Err("tag"));
        check("busybox@sha256:abc", Err("digest"));
        check("a b", Err("whitespace"));
        check("registry.io//x", Err("repository"));
    }

    #[test]
    fn loopback_registries_are_recognised() {
        assert!(is_loopback_host("127.0.0.1:5000"));
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("docker.io"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }
}
