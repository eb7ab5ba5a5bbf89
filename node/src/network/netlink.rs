//! Small helpers over `rtnetlink` shared by the plugin and the route code: a connection on the
//! current tokio runtime, link lookups, and errno checks.

use std::net::IpAddr;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::Handle;

use super::Error;

/// Opens a netlink route socket in the calling thread's network namespace and drives it on
/// the current tokio runtime.
pub(crate) fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Io {
        what: "open a netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The positive errno of a netlink error, if it carries one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// A link as the plugin needs it.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub controller: Option<u32>,
    pub up: bool,
    pub mtu: Option<u32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            mac: None,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mtu: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(bytes);
                    link.mac = Some(mac);
                }
                LinkAttribute::Controller(i) => link.controller = Some(*i),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                _ => {}
            }
        }
        link
    }
}

/// Looks a link up by name; `None` when there is no such link.
pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(Error::Netlink {
            what: format!("look up link {name}"),
            source,
        }),
    }
}

/// The addresses (with prefix lengths) on a link.
pub(crate) async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, Error> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    loop {
        match stream.try_next().await {
            Ok(Some(m)) => {
                for a in &m.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        out.push((*ip, m.header.prefix_len));
                    }
                }
            }
            Ok(None) => return Ok(out),
            Err(source) => {
                return Err(Error::Netlink {
                    what: format!("list the addresses of link {index}"),
                    source,
                })
            }
        }
    }
}

/// Formats a MAC address the usual way (`aa:bb:cc:dd:ee:ff`).
pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
