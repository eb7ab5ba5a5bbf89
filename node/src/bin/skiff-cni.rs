//! Skiff's CNI plugin. The node-agent step implements ADD/DEL/CHECK/VERSION.

fn main() {
    // CNI reports errors as JSON on stdout; code 4 is "invalid network config" in CNI's table.
    println!(
        r#"{{"cniVersion":"1.0.0","code":4,"msg":"skiff-cni is not built yet (node-agent step)"}}"#
    );
    std::process::exit(1);
}
