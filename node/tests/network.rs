//! Pod networking against the real kernel (run as root): `skiff-cni` through the agent's CNI
//! invoker, the Debian `bridge` + `host-local` plugins through the same invoker, blackhole
//! routes and node routes.
//!
//! Every test uses names and CIDRs unique to it and to this process (the PID is in them), so
//! tests never clash with each other or with another run, and Drop guards remove every
//! namespace, link, route and data directory made, also when an assertion fails. Traffic goes
//! only to addresses inside the namespaces made here, or to a blackholed address (dropped on
//! this machine).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skiff_node::network::{
    self, create_netns, install_blackhole_routes, list_owned_routes, plugin,
    remove_blackhole_routes, remove_netns, sync_node_routes, Cni, CniArgs, PluginConf,
};

/// A third octet unique to this process.
fn tag() -> u32 {
    std::process::id() % 200
}

fn pid() -> u32 {
    std::process::id()
}

/// Removes a named netns when dropped.
struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn new(label: &str) -> Netns {
        let name = format!("skt-{label}-{}", pid());
        let _ = remove_netns(&name); // a leftover from a killed run
        let path = create_netns(&name).expect("create netns");
        Netns { name, path }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = remove_netns(&self.name);
    }
}

/// Deletes a host link (and so every route through it) when dropped.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Removes blackhole routes when dropped.
struct BlackholeGuard(Vec<IpNet>);

impl Drop for BlackholeGuard {
    fn drop(&mut self) {
        let cidrs = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(remove_blackhole_routes(&cidrs))
        })
        .join();
    }
}

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_skiff-cni"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A skiff-cni network: a conf dir with the conflist, a data dir, the bridge guard.
struct SkiffNet {
    cni: Cni,
    conf: PluginConf,
    _dirs: tempfile::TempDir,
    _bridge: LinkGuard,
}

fn skiff_net(bridge: &str, pod_cidr: &str) -> SkiffNet {
    let dirs = tempfile::tempdir().unwrap();
    let conf = PluginConf {
        bridge: bridge.to_string(),
        pod_cidr: pod_cidr.parse().unwrap(),
        data_dir: dirs.path().join("data"),
        mtu: 1500,
        hairpin_mode: true,
    };
    let bridge_guard = LinkGuard(bridge.to_string());
    drop(LinkGuard(bridge.to_string())); // a leftover from a killed run
    network::write_skiff_conflist(&dirs.path().join("conf"), &conf).unwrap();
    let cni = Cni::load(&dirs.path().join("conf"), &[plugin_dir()])
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    SkiffNet {
        cni,
        conf,
        _dirs: dirs,
        _bridge: bridge_guard,
    }
}

fn args(name: &str) -> CniArgs {
    CniArgs {
        pod_namespace: "default".into(),
        pod_name: name.into(),
        pod_uid: format!("uid-{name}"),
    }
}

/// Pings `ip` once from inside `ns` (busybox from Debian's busybox-static).
fn ping_from(ns: &Netns, ip: IpAddr) -> Result<(), String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "busybox", "ping", "-c", "1", "-W", "3",
        ])
        .arg(ip.to_string())
        .output()
        .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ping {ip} from {} failed: {}{}",
            ns.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn allocated_ips(data_dir: &Path) -> HashSet<IpAddr> {
    std::fs::read_dir(data_dir.join("skiff"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_talk_del_releases_and_addresses_are_reused() {
    let bridge = format!("sk0t{}", pid());
    let cidr = format!("10.250.{}.0/29", tag());
    let net = skiff_net(&bridge, &cidr);
    let subnet: IpNet = cidr.parse().unwrap();
    let a = Netns::new("a");
    let b = Netns::new("b");

    let pa = net
        .cni
        .add("pod-a", &a.path, "eth0", &args("a"))
        .await
        .unwrap();
    let pb = net
        .cni
        .add("pod-b", &b.path, "eth0", &args("b"))
        .await
        .unwrap();
    assert_eq!(pa.ips.len(), 1, "{:?}", pa.result);
    assert_eq!(pb.ips.len(), 1, "{:?}", pb.result);
    let (ia, ib) = (pa.ips[0], pb.ips[0]);
    assert_ne!(ia, ib);
    for ip in [ia, ib] {
        assert!(subnet.contains(&ip), "{ip} outside {subnet}");
        assert_ne!(
            ip,
            network::first_host(&subnet),
            "the gateway was handed out"
        );
    }
    // The result: host veth, then eth0 in the sandbox; the default route via the gateway.
    assert_eq!(pa.interfaces[1], "eth0");
    assert_eq!(
        pa.result["ips"][0]["gateway"],
        format!("10.250.{}.1", tag())
    );
    assert_eq!(pa.result["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(
        pa.result["interfaces"][1]["sandbox"],
        a.path.to_str().unwrap()
    );

    // The pod's MAC follows from its address, so a re-ADD keeps neighbours' caches right.
    let mac = plugin::mac_for(ia)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(pa.result["interfaces"][1]["mac"], mac);

    ping_from(&a, ib).unwrap();
    ping_from(&b, ia).unwrap();
    // The gateway (the bridge) answers too, and lo is up in the pod.
    ping_from(&a, network::first_host(&subnet)).unwrap();
    ping_from(&a, "127.0.0.1".parse().unwrap()).unwrap();

    // The bridge keeps the MAC derived from its gateway address as ports join.
    let bridge_mac = std::fs::read_to_string(format!("/sys/class/net/{bridge}/address")).unwrap();
    let want = plugin::mac_for(network::first_host(&subnet))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(bridge_mac.trim(), want);

    // Hairpin mode on the pod's bridge port.
    let host_veth = plugin::host_veth_name("pod-a", "eth0");
    let hairpin =
        std::fs::read_to_string(format!("/sys/class/net/{host_veth}/brport/hairpin_mode")).unwrap();
    assert_eq!(hairpin.trim(), "1");

    net.cni
        .check("pod-a", &a.path, "eth0", &args("a"))
        .await
        .unwrap();

    // Allocations are files: a new invoker (an agent restart) and new plugin processes see them.
    let files = allocated_ips(&net.conf.data_dir);
    assert_eq!(files, HashSet::from([ia, ib]));
    let owner =
        std::fs::read_to_string(net.conf.data_dir.join("skiff").join(ia.to_string())).unwrap();
    assert!(owner.starts_with("pod-a"), "{owner}");
    let restarted = Cni::load(net.cni.path().parent().unwrap(), &[plugin_dir()]).unwrap();
    restarted
        .check("pod-b", &b.path, "eth0", &args("b"))
        .await
        .unwrap();

    // DEL releases the address and removes the veth; repeating it, or deleting something
    // never added, succeeds.
    net.cni
        .del("pod-a", Some(&a.path), "eth0", &args("a"))
        .await
        .unwrap();
    assert_eq!(allocated_ips(&net.conf.data_dir), HashSet::from([ib]));
    assert!(!Path::new(&format!("/sys/class/net/{host_veth}")).exists());
    net.cni
        .del("pod-a", Some(&a.path), "eth0", &args("a"))
        .await
        .unwrap();
    net.cni
        .del("never-added", None, "eth0", &args("x"))
        .await
        .unwrap();
    let err = net
        .cni
        .check("pod-a", &a.path, "eth0", &args("a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no address"), "{err}");

    // The /29 has five pod addresses: b holds one, three more go to c, d, e, and then the
    // released one comes back for a's re-ADD; one more ADD finds the range exhausted.
    let mut others = Vec::new();
    let mut got = HashSet::from([ib]);
    for name in ["c", "d", "e"] {
        let ns = Netns::new(name);
        let p = net
            .cni
            .add(&format!("pod-{name}"), &ns.path, "eth0", &args(name))
            .await
            .unwrap();
        assert!(got.insert(p.ips[0]), "duplicate {}", p.ips[0]);
        others.push(ns);
    }
    let again = net
        .cni
        .add("pod-a", &a.path, "eth0", &args("a"))
        .await
        .unwrap();
    assert_eq!(again.ips, vec![ia], "the released address is reused");
    ping_from(&b, ia).unwrap();
    let f = Netns::new("f");
    let err = net
        .cni
        .add("pod-f", &f.path, "eth0", &args("f"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no free address"), "{err}");
    // A failed ADD leaves nothing behind.
    assert!(!Path::new(&format!(
        "/sys/class/net/{}",
        plugin::host_veth_name("pod-f", "eth0")
    ))
    .exists());

    for (id, ns) in [("pod-a", &a), ("pod-b", &b)] {
        net.cni
            .del(id, Some(&ns.path), "eth0", &args(id))
            .await
            .unwrap();
    }
    for (name, ns) in ["c", "d", "e"].iter().zip(&others) {
        let id = format!("pod-{name}");
        net.cni
            .del(&id, Some(&ns.path), "eth0", &args(name))
            .await
            .unwrap();
    }
    assert!(allocated_ips(&net.conf.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_get_distinct_addresses() {
    const PODS: usize = 20;
    let bridge = format!("sk1t{}", pid());
    let net = skiff_net(&bridge, &format!("10.251.{}.0/24", tag()));
    let namespaces: Vec<Netns> = (0..PODS).map(|i| Netns::new(&format!("c{i}"))).collect();
    let adds = namespaces.iter().enumerate().map(|(i, ns)| {
        let cni = &net.cni;
        async move {
            cni.add(
                &format!("conc-{i}"),
                &ns.path,
                "eth0",
                &args(&format!("c{i}")),
            )
            .await
        }
    });
    let started = Instant::now();
    let results = futures::future::join_all(adds).await;
    let mut ips = HashSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let net = r.unwrap_or_else(|e| panic!("ADD {i} failed: {e}"));
        assert!(ips.insert(net.ips[0]), "{} handed out twice", net.ips[0]);
    }
    assert_eq!(ips.len(), PODS);
    assert_eq!(allocated_ips(&net.conf.data_dir), ips);
    eprintln!("{PODS} concurrent ADDs took {:?}", started.elapsed());
    // Two of them reach each other over the shared bridge.
    let target = *ips.iter().next().unwrap();
    let from = namespaces
        .iter()
        .find(|ns| {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name, "busybox", "ip", "-4", "addr"])
                .output()
                .unwrap();
            !String::from_utf8_lossy(&out.stdout).contains(&format!("{target}/"))
        })
        .unwrap();
    ping_from(from, target).unwrap();

    let dels = namespaces.iter().enumerate().map(|(i, ns)| {
        let cni = &net.cni;
        async move {
            cni.del(
                &format!("conc-{i}"),
                Some(&ns.path),
                "eth0",
                &args(&format!("c{i}")),
            )
            .await
        }
    });
    for r in futures::future::join_all(dels).await {
        r.unwrap();
    }
    assert!(allocated_ips(&net.conf.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_bridge_and_host_local_plugins_work_through_the_same_invoker() {
    let bridge = format!("sk2t{}", pid());
    let _bridge = LinkGuard(bridge.clone());
    let dirs = tempfile::tempdir().unwrap();
    let conf_dir = dirs.path().join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let subnet = format!("10.252.{}.0/24", tag());
    // No isGateway and no ipMasq: the plugin then changes nothing host-wide (no ip_forward,
    // no iptables rules); the pods talk over the bridge.
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "std-test",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "dataDir": dirs.path().join("ipam"),
            },
        }],
    });
    std::fs::write(conf_dir.join("10-std.conflist"), conflist.to_string()).unwrap();
    let cni = Cni::load(&conf_dir, &[PathBuf::from("/usr/lib/cni")])
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    assert_eq!(cni.plugin_types(), vec!["bridge"]);
    let a = Netns::new("sa");
    let b = Netns::new("sb");
    let pa = cni
        .add("std-a", &a.path, "eth0", &args("sa"))
        .await
        .unwrap();
    // CHECK before the second pod joins: this bridge plugin (1.1) compares the bridge's MAC,
    // which the kernel changes as ports join.
    cni.check("std-a", &a.path, "eth0", &args("sa"))
        .await
        .unwrap();
    let pb = cni
        .add("std-b", &b.path, "eth0", &args("sb"))
        .await
        .unwrap();
    let subnet: IpNet = subnet.parse().unwrap();
    assert!(subnet.contains(&pa.ips[0]) && subnet.contains(&pb.ips[0]));
    assert_ne!(pa.ips, pb.ips);
    ping_from(&a, pb.ips[0]).unwrap();
    ping_from(&b, pa.ips[0]).unwrap();
    // A plugin's error comes back with its code and message.
    let err = cni
        .add(
            "std-a",
            Path::new("/nonexistent-netns"),
            "eth0",
            &args("sa"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, network::CniError::Plugin { .. }), "{err}");
    assert!(err.to_string().contains("bridge"), "{err}");
    for (id, ns) in [("std-a", &a), ("std-b", &b)] {
        cni.del(id, Some(&ns.path), "eth0", &args(id))
            .await
            .unwrap();
    }
    // host-local released both addresses.
    let left: Vec<_> = std::fs::read_dir(dirs.path().join("ipam").join("std-test"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<IpAddr>().ok())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn blackholes_shown_by_ip() -> String {
    let out = Command::new("ip")
        .args(["route", "show", "type", "blackhole"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_routes_drop_what_nothing_more_specific_routes() {
    let even = (pid() % 100) * 2;
    let bridge = format!("sk3t{}", pid());
    let pod_cidr = format!("10.253.{even}.0/24");
    let cluster: IpNet = format!("10.253.{even}.0/23").parse().unwrap();
    let service: IpNet = format!("10.248.{}.0/24", tag()).parse().unwrap();
    let _guard = BlackholeGuard(vec![cluster, service]);
    let net = skiff_net(&bridge, &pod_cidr);
    let pod = Netns::new("bh");
    let p = net
        .cni
        .add("bh-pod", &pod.path, "eth0", &args("bh"))
        .await
        .unwrap();

    install_blackhole_routes(&[cluster, service]).await.unwrap();
    install_blackhole_routes(&[cluster, service]).await.unwrap(); // idempotent
    let owned = list_owned_routes().await.unwrap();
    for cidr in [cluster, service] {
        let n = owned
            .iter()
            .filter(|r| r.blackhole && r.dst == cidr)
            .count();
        assert_eq!(n, 1, "{cidr} in {owned:?}");
        assert!(
            blackholes_shown_by_ip().contains(&format!("blackhole {cidr} proto 113")),
            "{}",
            blackholes_shown_by_ip()
        );
    }

    // The node's own podCIDR on the bridge is more specific and still wins: the pod answers
    // from the host, and the pod reaches its gateway.
    let host_ping = Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "3", &p.ips[0].to_string()])
        .output()
        .unwrap();
    assert!(host_ping.status.success(), "{host_ping:?}");
    // An address in the cluster CIDR outside the podCIDR, and a Service address, are dropped
    // on this machine: connect fails at once instead of leaving by the default route.
    for dst in [
        format!("10.253.{}.7", even + 1),
        format!("10.248.{}.10", tag()),
    ] {
        let addr: SocketAddr = format!("{dst}:80").parse().unwrap();
        let started = Instant::now();
        let res = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
        assert!(res.is_err(), "connect to blackholed {dst} succeeded");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "connect to {dst} was not refused locally: {res:?} after {:?}",
            started.elapsed()
        );
    }

    remove_blackhole_routes(&[cluster, service]).await.unwrap();
    let owned = list_owned_routes().await.unwrap();
    assert!(!owned.iter().any(|r| r.dst == cluster || r.dst == service));
    net.cni
        .del("bh-pod", Some(&pod.path), "eth0", &args("bh"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_routes_follow_the_desired_set_and_leave_others_alone() {
    let t = tag();
    let link = format!("skd{}", pid());
    let _link = LinkGuard(link.clone());
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // A bridge with no ports stands in for the node network (no dummy module here).
    run(&["link", "add", &link, "type", "bridge"]);
    run(&["addr", "add", &format!("10.254.{t}.1/24"), "dev", &link]);
    run(&["link", "set", &link, "up"]);
    // Someone else's route, which Skiff must never remove.
    let foreign = format!("10.246.{t}.0/24");
    run(&[
        "route",
        "add",
        &foreign,
        "via",
        &format!("10.254.{t}.9"),
        "proto",
        "static",
    ]);

    let peer1: IpNet = format!("10.249.{t}.0/24").parse().unwrap();
    let peer2: IpNet = format!("10.247.{t}.0/24").parse().unwrap();
    let via1: IpAddr = format!("10.254.{t}.2").parse().unwrap();
    let via2: IpAddr = format!("10.254.{t}.3").parse().unwrap();
    let mine = |routes: &[network::routes::OwnedRoute]| -> HashSet<(IpNet, IpAddr)> {
        routes
            .iter()
            .filter(|r| !r.blackhole && (r.dst == peer1 || r.dst == peer2))
            .filter_map(|r| Some((r.dst, r.via?)))
            .collect()
    };

    sync_node_routes(&[(peer1, via1), (peer2, via2)])
        .await
        .unwrap();
    sync_node_routes(&[(peer1, via1), (peer2, via2)])
        .await
        .unwrap();
    assert_eq!(
        mine(&list_owned_routes().await.unwrap()),
        HashSet::from([(peer1, via1), (peer2, via2)])
    );
    // A node moved (new InternalIP) and another left.
    sync_node_routes(&[(peer1, via2)]).await.unwrap();
    assert_eq!(
        mine(&list_owned_routes().await.unwrap()),
        HashSet::from([(peer1, via2)])
    );
    let shown = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["route", "show", "dev", &link])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        shown.contains(&foreign),
        "the foreign route was removed: {shown}"
    );
    assert!(
        shown.contains(&format!("{peer1} via {via2} proto 113")),
        "{shown}"
    );
    // Someone else's route for the same prefix is neither replaced nor removed.
    let foreign_net: IpNet = foreign.parse().unwrap();
    let err = sync_node_routes(&[(foreign_net, via1)]).await.unwrap_err();
    assert!(err.to_string().contains("did not make"), "{err}");
    let err = install_blackhole_routes(&[foreign_net]).await.unwrap_err();
    assert!(err.to_string().contains("did not make"), "{err}");
    sync_node_routes(&[]).await.unwrap();
    assert!(mine(&list_owned_routes().await.unwrap()).is_empty());
    let shown = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["route", "show", &foreign])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(shown.contains(&format!("via 10.254.{t}.9")), "{shown}");
    // Mixed families are refused, not half-applied.
    let err = sync_node_routes(&[(peer1, "fd00::1".parse().unwrap())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("families"), "{err}");
}

#[test]
fn netns_create_is_exclusive_and_remove_is_idempotent() {
    let name = format!("skt-ns-{}", pid());
    let _ = remove_netns(&name);
    let path = create_netns(&name).unwrap();
    let guard = Netns {
        name: name.clone(),
        path: path.clone(),
    };
    assert_eq!(path, Path::new("/run/netns").join(&name));
    let ns_inode = std::fs::metadata(&path).unwrap();
    let own_inode = std::fs::metadata("/proc/self/ns/net").unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_ne!(ns_inode.ino(), own_inode.ino(), "not a new namespace");
    // `ip` sees it and it has only lo, down.
    let out = Command::new("ip")
        .args(["netns", "exec", &name, "ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"), "{links}");
    let err = create_netns(&name).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    for bad in ["", "..", "a/b"] {
        assert_eq!(
            create_netns(bad).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
    }
    // run_in_netns really runs inside it.
    let inside = network::run_in_netns(&path, || {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    })
    .unwrap();
    assert_eq!(inside, ns_inode.ino());
    // Forwarding is per namespace: turned on inside, the host's setting is untouched.
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let inside = network::run_in_netns(&path, || {
        network::enable_ip_forwarding(false).unwrap();
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
    })
    .unwrap();
    assert_eq!(inside.trim(), "1");
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(host_before, host_after);
    drop(guard);
    assert!(!path.exists());
    remove_netns(&name).unwrap();
}

/// Runs the skiff-cni binary directly, as a runtime would.
fn run_plugin(command: &str, env: &[(&str, &str)], stdin: &str) -> (i32, serde_json::Value) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn plugin_binary_speaks_cni_version_errors_and_legacy_results() {
    let (code, v) = run_plugin("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0, "{v}");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        supported.contains(&"1.0.0") && supported.contains(&"0.4.0"),
        "{v}"
    );

    let ns = Netns::new("bin");
    let dirs = tempfile::tempdir().unwrap();
    let bridge = format!("sk5t{}", pid());
    let _bridge = LinkGuard(bridge.clone());
    let env = [
        ("CNI_CONTAINERID", "bin-pod"),
        ("CNI_NETNS", ns.path.to_str().unwrap()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];
    // A bad configuration is refused with CNI's "invalid network config" code and a reason.
    let (code, v) = run_plugin(
        "ADD",
        &env,
        r#"{"cniVersion":"1.0.0","name":"bin","type":"skiff-cni","podCIDR":"10.245.0.7/24"}"#,
    );
    assert_ne!(code, 0);
    assert_eq!(v["code"], 7, "{v}");
    assert!(v["details"].as_str().unwrap().contains("host bits"), "{v}");

    // A 0.4.0 configuration gets a 0.4.0 result (addresses carry their IP version).
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "bin",
        "type": "skiff-cni",
        "bridge": bridge,
        "podCIDR": format!("10.245.{}.0/24", tag()),
        "dataDir": dirs.path(),
    })
    .to_string();
    let (code, v) = run_plugin("ADD", &env, &conf);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["ips"][0]["version"], "4");
    assert_eq!(v["ips"][0]["address"], format!("10.245.{}.2/24", tag()));
    let (code, v) = run_plugin("CHECK", &env, &conf);
    assert_eq!(code, 0, "{v}");
    let (code, v) = run_plugin("DEL", &env, &conf);
    assert_eq!(code, 0, "{v}");
    let (code, v) = run_plugin("CHECK", &env, &conf);
    assert_ne!(code, 0);
    assert!(v["details"].as_str().unwrap().contains("no address"), "{v}");
    // An ADD that fails half-way (no such namespace) gives its address back and leaves no veth.
    let bad_env = [
        ("CNI_CONTAINERID", "bin-pod2"),
        ("CNI_NETNS", "/run/netns/skt-does-not-exist"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, v) = run_plugin("ADD", &bad_env, &conf);
    assert_ne!(code, 0);
    assert_eq!(v["code"], 102, "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("skt-does-not-exist"),
        "{v}"
    );
    let left: Vec<_> = std::fs::read_dir(dirs.path().join("bin"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<IpAddr>().ok())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!Path::new(&format!(
        "/sys/class/net/{}",
        plugin::host_veth_name("bin-pod2", "eth0")
    ))
    .exists());
    // DEL without a namespace (it is gone) still succeeds.
    let (code, v) = run_plugin(
        "DEL",
        &env[..1]
            .iter()
            .chain(&env[2..])
            .copied()
            .collect::<Vec<_>>(),
        &conf,
    );
    assert_eq!(code, 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_prepares_the_node_and_sets_sandboxes_up_and_down() {
    use skiff_node::network::{
        prepare_node, CniNetworking, NodeNetworkConfig, PodNetworking, Sandbox,
    };
    let bridge = format!("sk6t{}", pid());
    let _bridge = LinkGuard(bridge.clone());
    let dirs = tempfile::tempdir().unwrap();
    let cluster: IpNet = format!("10.242.{}.0/24", tag()).parse().unwrap();
    let service: IpNet = format!("10.243.{}.0/24", tag()).parse().unwrap();
    let _blackholes = BlackholeGuard(vec![cluster, service]);
    let config = NodeNetworkConfig {
        conf_dir: dirs.path().join("net.d"),
        bin_dirs: vec![PathBuf::from("/usr/lib/cni"), plugin_dir()],
        default_conf: Some(PluginConf {
            bridge: bridge.clone(),
            pod_cidr: format!("10.242.{}.0/25", tag()).parse().unwrap(),
            data_dir: dirs.path().join("data"),
            mtu: 1500,
            hairpin_mode: true,
        }),
        blackhole: vec![cluster, service],
        result_cache_dir: Some(dirs.path().join("results")),
    };
    let cni = prepare_node(&config).await.unwrap();
    assert_eq!(cni.plugin_types(), vec!["skiff-cni"]);
    // Again (an agent restart): the existing conflist is kept, the routes stay single.
    let cni = prepare_node(&config).await.unwrap();
    let owned = list_owned_routes().await.unwrap();
    assert_eq!(owned.iter().filter(|r| r.dst == cluster).count(), 1);

    let net = CniNetworking::new(cni);
    let sandbox = Sandbox {
        id: format!("sandbox{}", pid()),
        pod_namespace: "default".into(),
        pod_name: "web".into(),
        pod_uid: "uid-web".into(),
    };
    let _ns_guard = Netns {
        name: sandbox.netns_name(),
        path: PathBuf::new(),
    };
    let up = net.setup(&sandbox).await.unwrap();
    assert!(up.netns.exists());
    assert_eq!(up.ips.len(), 1);
    // The pod's address is inside the cluster CIDR's blackhole, yet reachable: the node's own
    // podCIDR route is more specific.
    let ping = Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "3", &up.ips[0].to_string()])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    // A retried setup returns the same address.
    assert_eq!(net.setup(&sandbox).await.unwrap(), up);
    net.check(&sandbox).await.unwrap();
    let cached = std::fs::read_dir(dirs.path().join("results"))
        .unwrap()
        .count();
    assert_eq!(cached, 1, "the ADD result is cached for CHECK and DEL");
    net.teardown(&sandbox).await.unwrap();
    assert!(!up.netns.exists());
    net.teardown(&sandbox).await.unwrap();
    assert!(allocated_ips(&config.default_conf.as_ref().unwrap().data_dir).is_empty());
}
