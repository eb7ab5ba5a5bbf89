//! The test image: an OCI image-layout archive built from the machine's static busybox.
//!
//! No registry is reachable from the machines Skiff is tested on, so tests and `cargo xtask
//! image` make their image here, from Debian's `busybox-static` (`/bin/busybox`): one gzip
//! layer holding `/bin/busybox`, a symlink per applet the tests use, `/etc/passwd`,
//! `/etc/group` and `/tmp`; a config with `Cmd ["sh"]` and a `PATH`. Every timestamp, owner
//! and the order of entries are fixed, so the same busybox binary always gives the same digests.
//!
//! This file depends only on `std`, `tar`, `flate2`, `sha2` and `serde_json`: xtask includes it
//! with `#[path]` so that `cargo xtask image` needs none of skiff-node's heavier dependencies.

use std::io::{self, Write as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// The reference tests give the image.
pub const TEST_IMAGE: &str = "skiff.test/busybox:1";

/// The applets linked in `/bin` (each a symlink to `busybox`).
pub const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "chmod", "cp", "cut", "date", "df", "dirname", "du", "echo", "env",
    "false", "find", "grep", "head", "hostname", "httpd", "id", "ip", "kill", "ln", "ls", "mkdir",
    "mount", "mv", "nc", "nslookup", "ping", "printf", "ps", "pwd", "readlink", "rm", "sed", "seq",
    "sleep", "sort", "stat", "tail", "tee", "test", "timeout", "top", "touch", "tr", "true",
    "uname", "wc", "wget", "whoami", "xargs",
];

/// The `PATH` in the image's config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every entry's modification time (2024-01-01T00:00:00Z), so digests do not change.
const MTIME: u64 = 1_704_067_200;

/// OCI media types written here.
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What [`build_busybox_archive`] wrote: the digests a test can check against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The reference in the archive's `org.opencontainers.image.ref.name` annotation.
    pub reference: String,
    /// The manifest's digest (`sha256:…`), the image's target in containerd.
    pub manifest_digest: String,
    /// The config's digest (the image ID).
    pub config_digest: String,
    /// The digest of the uncompressed layer (its `diff_id`, and the one layer's chain ID).
    pub diff_id: String,
}

/// Writes an OCI image-layout tar to `out` holding the busybox image named `reference`,
/// from the machine's [`BUSYBOX_BINARY`].
pub fn build_busybox_archive(out: &Path, reference: &str) -> io::Result<BuiltImage> {
    build_busybox_archive_from(Path::new(BUSYBOX_BINARY), out, reference)
}

/// [`build_busybox_archive`] from the busybox binary at `busybox`.
pub fn build_busybox_archive_from(
    busybox: &Path,
    out: &Path,
    reference: &str,
) -> io::Result<BuiltImage> {
    let binary = std::fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot read the busybox binary {} ({e}); install Debian's busybox-static \
                 (cluster/install-deps.sh does)",
                busybox.display()
            ),
        )
    })?;
    let layer_tar = layer(&binary)?;
    let diff_id = sha256(&layer_tar);
    let layer_gz = gzip(&layer_tar)?;
    let layer_digest = sha256(&layer_gz);

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "2024-01-01T00:00:00Z", "created_by": "skiff busybox image builder" }],
    }))?;
    let config_digest = sha256(&config);

    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer_gz.len() }],
    }))?;
    let manifest_digest = sha256(&manifest);

    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": go_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    }))?;

    let mut archive = tar::Builder::new(Vec::new());
    archive.mode(tar::HeaderMode::Deterministic);
    append_dir(&mut archive, "blobs/", 0o755)?;
    append_dir(&mut archive, "blobs/sha256/", 0o755)?;
    // Blobs sorted by digest: a fixed order however the digests come out.
    let mut blobs = [
        (layer_digest.as_str(), &layer_gz),
        (config_digest.as_str(), &config),
        (manifest_digest.as_str(), &manifest),
    ];
    blobs.sort_by_key(|(digest, _)| *digest);
    for (digest, data) in blobs {
        let hex = digest.trim_start_matches("sha256:");
        append_file(&mut archive, &format!("blobs/sha256/{hex}"), 0o644, data)?;
    }
    append_file(&mut archive, "index.json", 0o644, &index)?;
    append_file(
        &mut archive,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let bytes = archive.into_inner()?;

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside the target and renamed, so a reader never sees half an archive.
    let partial = out.with_extension("tar.partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, out)?;
    Ok(BuiltImage {
        reference: reference.to_string(),
        manifest_digest,
        config_digest,
        diff_id,
    })
}

/// The uncompressed layer: the root filesystem as a tar.
fn layer(busybox: &[u8]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for dir in [
        "bin/", "etc/", "root/", "usr/", "usr/bin/", "var/", "var/www/",
    ] {
        append_dir(&mut tar, dir, if dir == "root/" { 0o700 } else { 0o755 })?;
    }
    append_dir(&mut tar, "tmp/", 0o1777)?;
    append_file(&mut tar, "bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        append_symlink(&mut tar, &format!("bin/{applet}"), "busybox")?;
    }
    append_symlink(&mut tar, "usr/bin/env", "/bin/busybox")?;
    append_file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    append_file(
        &mut tar,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    )?;
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> io::Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, 0);
    tar.append_data(&mut header, path, io::empty())
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

fn append_symlink(tar: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> io::Result<()> {
    let mut header = header(tar::EntryType::Symlink, 0o777, 0);
    tar.append_link(&mut header, path, target)
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    // GzBuilder leaves the header's mtime at 0 and names no file: the output depends on the
    // input alone.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// This machine's architecture in Go's (and OCI's) spelling.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_deterministic_and_names_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let fake_busybox = dir.path().join("busybox");
        std::fs::write(&fake_busybox, b"\x7fELF not really").unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let first = build_busybox_archive_from(&fake_busybox, &a, TEST_IMAGE).unwrap();
        let second = build_busybox_archive_from(&fake_busybox, &b, TEST_IMAGE).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        let mut names = Vec::new();
        let mut index = String::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&a).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path == "index.json" {
                io::Read::read_to_string(&mut entry, &mut index).unwrap();
            }
            names.push(path);
        }
        assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
        let manifest_blob = format!(
            "blobs/sha256/{}",
            first.manifest_digest.trim_start_matches("sha256:")
        );
        assert!(names.contains(&manifest_blob), "{names:?}");
        assert!(index.contains(TEST_IMAGE), "{index}");

        // Another binary gives other digests.
        std::fs::write(&fake_busybox, b"\x7fELF another").unwrap();
        let third = build_busybox_archive_from(&fake_busybox, &b, TEST_IMAGE).unwrap();
        assert_ne!(first.diff_id, third.diff_id);
    }

    #[test]
    fn a_missing_binary_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_busybox_archive_from(
            &dir.path().join("nope"),
            &dir.path().join("out.tar"),
            TEST_IMAGE,
        )
        .unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
