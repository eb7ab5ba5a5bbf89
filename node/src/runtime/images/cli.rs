//! `skiff-node image …`: import archives and pull images into a node's containerd by hand, and
//! build the test image — what an operator preloading a node, or a test, needs without the
//! node API.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{PullPolicy, RegistryAuth};
use crate::runtime::{Containerd, DEFAULT_ADDRESS};

/// `skiff-node image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// containerd's socket.
    #[arg(long, env = "SKIFF_CONTAINERD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub containerd_address: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `skiff-node image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import OCI image-layout tars (each FILE, or every *.tar in a directory) into containerd
    /// and unpack them; prints each image's name.
    Import {
        /// Archives or directories of archives.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Pull an image from its registry (always asking the registry) and unpack it; prints its
    /// name, digest and snapshot chain ID.
    Pull {
        /// The image (`busybox`, `127.0.0.1:5000/app:1`, …).
        reference: String,
        /// A Docker config.json (or a secret's .dockerconfigjson) with credentials.
        #[arg(long)]
        docker_config: Option<PathBuf>,
    },
    /// Write the busybox test image (from Debian's busybox-static) as an OCI archive.
    BuildTestImage {
        /// The archive to write.
        out: PathBuf,
        /// The image's name.
        #[arg(long, default_value = super::TEST_IMAGE)]
        reference: String,
    },
}

/// Runs `skiff-node image`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let connect = || Containerd::connect(&args.containerd_address);
    match &args.command {
        Command::BuildTestImage { out, reference } => {
            let built = super::build_busybox_archive(out, reference)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{} {}", built.reference, built.manifest_digest);
        }
        Command::Import { paths } => {
            let containerd = connect().await?;
            for path in paths {
                let names = if path.is_dir() {
                    super::import_dir(&containerd, path).await?
                } else {
                    super::import_archive(&containerd, path).await?
                };
                for name in names {
                    println!("{name}");
                }
            }
        }
        Command::Pull {
            reference,
            docker_config,
        } => {
            let auths: Vec<RegistryAuth> = match docker_config {
                Some(file) => {
                    let bytes = std::fs::read(file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let registry = super::Reference::parse(reference)
                        .map_err(|reason| anyhow::anyhow!("invalid image {reference:?}: {reason}"))?
                        .registry;
                    RegistryAuth::from_dockerconfigjson(&bytes, &registry)
                        .into_iter()
                        .collect()
                }
                None => Vec::new(),
            };
            let containerd = connect().await?;
            let info =
                super::ensure_image(&containerd, reference, PullPolicy::Always, &auths).await?;
            println!("{} {} {}", info.name, info.digest, info.chain_id);
        }
    }
    Ok(())
}
