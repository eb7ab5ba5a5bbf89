//! The node's QoS cgroups: `/kubepods`, `/kubepods/burstable` and `/kubepods/besteffort`, made
//! at start-up as kubelet makes them, so that the OCI runtime only adds a pod's and a
//! container's levels below them.
//!
//! On a cgroup v1 host they carry one setting the runtime would not make: `cgroup.clone_children`
//! in the cpuset hierarchy. A new v1 cpuset starts with no CPUs; runc and crun then copy its
//! parent's `cpuset.cpus` into it, and every such write to a load-balanced cpuset makes the
//! kernel rebuild the scheduler domains under a global mutex (about half a millisecond of
//! system time each on a 2-core VM, twice per container, serialised across a burst). With
//! `clone_children` the kernel copies the parent's CPUs and memory nodes into each new child
//! itself, the runtime finds them set and writes nothing, and the rebuild never happens. The
//! flag is inherited by the pod cgroups made below, so it holds at every level. cgroup2's cpuset
//! has no such cost and needs nothing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The QoS parents, top first (kubelet's cgroupfs names).
pub const QOS_PARENTS: [&str; 3] = ["kubepods", "kubepods/burstable", "kubepods/besteffort"];

/// Where a v1 hierarchy carrying `controller` is mounted, from `/proc/self/mounts`.
pub fn v1_mount(mounts: &str, controller: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype, options) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        (fstype == "cgroup" && options.split(',').any(|o| o == controller)).then(|| dir.into())
    })
}

/// Makes the QoS parents in the v1 cpuset hierarchy, if there is one, with their CPUs and
/// memory nodes set and `cgroup.clone_children` on. Returns the hierarchy's mount, or `None` on
/// a host without one (pure cgroup2), where there is nothing to do.
pub fn prepare_cpuset() -> anyhow::Result<Option<PathBuf>> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let Some(root) = v1_mount(&mounts, "cpuset") else {
        return Ok(None);
    };
    for parent in QOS_PARENTS {
        prepare_cpuset_dir(&root.join(parent))?;
    }
    Ok(Some(root))
}

/// One level: made if missing, CPUs and memory nodes copied from its parent if still empty,
/// and `clone_children` switched on.
fn prepare_cpuset_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let parent = dir.parent().context("a QoS cgroup has a parent")?;
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = read_trimmed(&dir.join(file))?;
        if own.is_empty() {
            let inherited = read_trimmed(&parent.join(file))?;
            write(&dir.join(file), &inherited)?;
        }
    }
    write(&dir.join("cgroup.clone_children"), "1")
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_hierarchy_of_a_controller() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup-malformed
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,net_cls,net_prio 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        assert_eq!(
            v1_mount(mounts, "cpuset"),
            Some(PathBuf::from("/sys/fs/cgroup/cpuset"))
        );
        assert_eq!(
            v1_mount(mounts, "net_prio"),
            Some(PathBuf::from("/sys/fs/cgroup/net_cls,net_prio"))
        );
        // No substring matches (`cpuacct` is not `cpu`), and short lines are skipped.
        assert_eq!(v1_mount(mounts, "cpuacct"), None);
        assert_eq!(
            v1_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "cpuset"),
            None
        );
    }
}
