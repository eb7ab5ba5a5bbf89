//! `skiff-cni`: Skiff's CNI plugin (ADD, DEL, CHECK, VERSION).
//!
//! A container runtime runs it once per call with the CNI environment variables and the
//! network configuration on stdin; see `skiff_node::network::plugin` for what each command
//! does. Results and errors go to stdout as CNI JSON; the exit code is 0 on success.
//!
//! Configuration (one entry of a conflist):
//! `{"type":"skiff-cni","bridge":"skiff0","podCIDR":"10.244.0.0/24","dataDir":"/var/lib/skiff/cni","mtu":1500,"hairpinMode":true}`

use cni_plugin::config::NetworkConfig;
use cni_plugin::reply::{reply, ErrorReply};
use cni_plugin::Cni;
use serde_json::{json, Value};
use skiff_node::network::plugin::{self, Added, PluginConf};
use skiff_node::network::{Error, IpamError};

fn main() {
    // VERSION, and malformed input, are answered inside load(), which exits.
    let cni = Cni::load();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail_raw(&format!("cannot start a runtime: {e}"), 5),
    };
    match cni {
        Cni::Add {
            container_id,
            ifname,
            netns,
            config,
            ..
        } => {
            let conf = conf_or_fail(&config);
            match rt.block_on(plugin::add(
                &config.name,
                &conf,
                &container_id,
                &ifname,
                &netns,
            )) {
                Ok(added) => print_and_exit(&result_json(&config, &added)),
                Err(e) => fail(&config, &e),
            }
        }
        Cni::Del {
            container_id,
            ifname,
            config,
            ..
        } => {
            let conf = conf_or_fail(&config);
            match rt.block_on(plugin::del(&config.name, &conf, &container_id, &ifname)) {
                Ok(()) => std::process::exit(0),
                Err(e) => fail(&config, &e),
            }
        }
        Cni::Check {
            container_id,
            ifname,
            netns,
            config,
            ..
        } => {
            let conf = conf_or_fail(&config);
            match rt.block_on(plugin::check(
                &config.name,
                &conf,
                &container_id,
                &ifname,
                &netns,
            )) {
                Ok(()) => std::process::exit(0),
                Err(e) => fail(&config, &e),
            }
        }
        Cni::Version(_) => std::process::exit(0),
    }
}

fn conf_or_fail(config: &NetworkConfig) -> PluginConf {
    match PluginConf::from_fields(&config.specific) {
        Ok(c) => c,
        Err(e) => fail(config, &e),
    }
}

/// The CNI result for ADD, in the shape of the configuration's version.
fn result_json(config: &NetworkConfig, added: &Added) -> Value {
    let version = config.cni_version.to_string();
    let legacy = config.cni_version.major == 0;
    let interfaces: Vec<Value> = added
        .interfaces
        .iter()
        .map(|i| {
            let mut o = json!({ "name": i.name });
            if let Some(mac) = &i.mac {
                o["mac"] = json!(mac);
            }
            if let Some(sb) = &i.sandbox {
                o["sandbox"] = json!(sb);
            }
            o
        })
        .collect();
    let pod_if = added
        .interfaces
        .iter()
        .position(|i| i.sandbox.is_some())
        .unwrap_or(0);
    let mut ip = json!({
        "address": added.address.to_string(),
        "gateway": added.gateway.to_string(),
        "interface": pod_if,
    });
    if legacy {
        ip["version"] = json!(if added.address.addr().is_ipv4() {
            "4"
        } else {
            "6"
        });
    }
    let default = if added.gateway.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": [ip],
        "routes": [{ "dst": default, "gw": added.gateway.to_string() }],
        "dns": {},
    })
}

fn print_and_exit(v: &Value) -> ! {
    println!("{v}");
    std::process::exit(0);
}

fn fail(config: &NetworkConfig, e: &Error) -> ! {
    // CNI's well-known codes: 7 invalid network config, 11 try again later; 100+ our own.
    let (code, msg) = match e {
        Error::Config(_) => (7, "invalid network config"),
        Error::Ipam(IpamError::Exhausted { .. }) => (11, "no free address"),
        Error::Ipam(_) => (100, "address allocation failed"),
        Error::Check(_) => (101, "the pod's network is not as it was set up"),
        Error::Netlink { .. } | Error::Io { .. } => (102, "failed to set up the pod's network"),
    };
    let details = e.to_string();
    eprintln!("skiff-cni: {details}");
    reply(ErrorReply {
        cni_version: config.cni_version.clone(),
        code,
        msg,
        details,
    })
}

fn fail_raw(details: &str, code: i32) -> ! {
    eprintln!("skiff-cni: {details}");
    println!(
        "{}",
        json!({"cniVersion": "1.0.0", "code": code, "msg": "internal error", "details": details})
    );
    std::process::exit(1);
}
