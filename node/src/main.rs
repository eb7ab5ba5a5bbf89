use clap::Parser;

/// Skiff's node agent (runs pods on containerd; eBPF Service load balancing and telemetry).
#[derive(Parser)]
#[command(name = "skiff-node", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "skiff-node is not built yet: the node agent arrives with the node-agent step; \
         run `skiff-master` for the control plane"
    )
}
