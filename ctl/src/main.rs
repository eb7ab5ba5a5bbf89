use clap::Parser;

/// The Skiff command line: kubectl-like verbs plus `bpf`, `top` and `bench`.
#[derive(Parser)]
#[command(name = "skiff", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "the skiff command line has no verbs yet; use kubectl with /etc/skiff/admin.kubeconfig"
    )
}
