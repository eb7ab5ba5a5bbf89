//! Which kubeconfig to use, as kubectl chooses it, with skiff-master's admin kubeconfig as
//! the last resort: `--kubeconfig`, else `$KUBECONFIG` (a `:`-separated list, merged), else
//! `~/.kube/config`, else `/etc/skiff/admin.kubeconfig`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where skiff-master writes its admin kubeconfig by default (`--admin-kubeconfig`).
pub const SKIFF_ADMIN_KUBECONFIG: &str = "/etc/skiff/admin.kubeconfig";

/// Where the kubeconfig comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One file (`--kubeconfig`, `~/.kube/config` or skiff's default).
    File(PathBuf),
    /// `$KUBECONFIG`, as it is set.
    Env(OsString),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "KUBECONFIG={}", v.to_string_lossy()),
        }
    }
}

/// Chooses the kubeconfig from the flag, `$KUBECONFIG` and `$HOME`; `exists` says whether a
/// default file is there.
pub fn choose(
    flag: Option<&Path>,
    env: Option<OsString>,
    home: Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> anyhow::Result<Source> {
    if let Some(path) = flag {
        return Ok(Source::File(path.to_path_buf()));
    }
    if let Some(value) = env.filter(|v| !v.is_empty()) {
        return Ok(Source::Env(value));
    }
    let candidates = home
        .map(|h| h.join(".kube/config"))
        .into_iter()
        .chain([PathBuf::from(SKIFF_ADMIN_KUBECONFIG)]);
    for candidate in candidates {
        if exists(&candidate) {
            return Ok(Source::File(candidate));
        }
    }
    anyhow::bail!(
        "no kubeconfig found: pass --kubeconfig FILE or set KUBECONFIG (skiff-master writes \
         one to {SKIFF_ADMIN_KUBECONFIG}, or where its --admin-kubeconfig says)"
    )
}

/// The client configuration from `source` (its current context).
pub async fn load(source: &Source) -> anyhow::Result<kube::Config> {
    let kubeconfig = match source {
        Source::File(path) => {
            Kubeconfig::read_from(path).with_context(|| format!("cannot read {source}"))?
        }
        Source::Env(_) => Kubeconfig::from_env()
            .with_context(|| format!("cannot read {source}"))?
            .with_context(|| format!("{source} names no file"))?,
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("cannot use the kubeconfig {source}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_is_found_as_kubectl_finds_it() {
        let home = Some(PathBuf::from("/home/u"));
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        let check = |flag: Option<&str>,
                     env: Option<&str>,
                     exists: &dyn Fn(&Path) -> bool,
                     want: Option<Source>| {
            let got = choose(
                flag.map(Path::new),
                env.map(OsString::from),
                home.clone(),
                exists,
            )
            .ok();
            assert_eq!(got, want, "{flag:?} {env:?}");
        };
        let file = |p: &str| Some(Source::File(PathBuf::from(p)));
        check(Some("/k"), Some("/e"), &all, file("/k"));
        check(None, Some("/a:/b"), &all, Some(Source::Env("/a:/b".into())));
        check(None, Some(""), &all, file("/home/u/.kube/config"));
        check(None, None, &all, file("/home/u/.kube/config"));
        check(
            None,
            None,
            &|p: &Path| p == Path::new(SKIFF_ADMIN_KUBECONFIG),
            file(SKIFF_ADMIN_KUBECONFIG),
        );
        check(None, None, &none, None);
        let e = choose(None, None, None, none).unwrap_err().to_string();
        assert!(e.contains("pass --kubeconfig"), "{e}");
    }
}
