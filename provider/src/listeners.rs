//! The entrypoints a node binds: the values' `ports`, each moved by `--entrypoint
//! NAME=ADDR` or turned off by `NAME=off`.

use std::net::IpAddr;

use atrium_data_plane::node::{AddrError, Listener, parse_addr};
use atrium_model::values::Values;

/// The entrypoints of a node, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// HTTP entrypoints (TCP).
    pub http: Vec<Listener>,
    /// Uplink entrypoints (`uplink: true`: QUIC, served by an agent).
    pub uplink: Vec<Listener>,
}

/// Why the entrypoint flags do not fit the values.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// `--entrypoint NAME=…` names no entrypoint of the values.
    #[error("--entrypoint {name}: no such entrypoint in the values (known: {known:?})")]
    Unknown {
        /// The name given.
        name: String,
        /// The entrypoints the values declare.
        known: Vec<String>,
    },
    /// `--entrypoint NAME=ADDR` has an address that does not parse.
    #[error("--entrypoint {name}={addr}: {source}")]
    Address {
        /// The entrypoint.
        name: String,
        /// The address given.
        addr: String,
        /// Why it does not parse.
        source: AddrError,
    },
}

/// The entrypoints `values` declares, bound on `bind_ip` unless `overrides` (`NAME=ADDR`
/// or `NAME=off`) move or disable them.
pub fn listeners(values: &Values, overrides: &[(String, String)], bind_ip: IpAddr) -> Result<Listeners, ListenerError> {
    if let Some((name, _)) = overrides.iter().find(|(n, _)| !values.entry_points().any(|(name, _)| name == n)) {
        return Err(ListenerError::Unknown {
            name: name.clone(),
            known: values.entry_points().map(|(n, _)| n.clone()).collect(),
        });
    }
    let mut out = Listeners::default();
    for (name, ep) in values.entry_points() {
        let addr = match overrides.iter().find(|(n, _)| n == name) {
            Some((_, v)) if v == "off" => continue,
            Some((_, v)) => parse_addr(v).map_err(|source| ListenerError::Address {
                name: name.clone(),
                addr: v.clone(),
                source,
            })?,
            None => std::net::SocketAddr::new(bind_ip, ep.port),
        };
        let l = Listener { name: name.clone(), addr, tls: ep.tls };
        if ep.uplink { out.uplink.push(l) } else { out.http.push(l) }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        let text = "ports:\n  web:\n    port: 8000\n  websecure:\n    port: 8443\n    tls:\n      enabled: true\n  multicluster:\n    port: 9443\n    uplink: true\n";
        let (v, d) = Values::parse(std::path::Path::new("values.yaml"), text);
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        v
    }

    #[test]
    fn values_ports_become_listeners_and_flags_move_or_disable_them() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let l = listeners(&values(), &[], ip).unwrap();
        let names: Vec<_> = l.http.iter().map(|l| (l.name.as_str(), l.addr.port(), l.tls)).collect();
        assert!(names.contains(&("web", 8000, false)) && names.contains(&("websecure", 8443, true)), "{names:?}");
        assert_eq!(l.uplink.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), vec!["multicluster"]);

        let moved = [("web".to_string(), "127.0.0.1:0".to_string()), ("websecure".to_string(), "off".to_string())];
        let l = listeners(&values(), &moved, ip).unwrap();
        assert_eq!(l.http.len(), 1);
        assert_eq!(l.http[0].addr.port(), 0);
    }

    #[test]
    fn unknown_names_and_bad_addresses_are_errors_that_say_which() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let e = listeners(&values(), &[("webb".into(), ":1".into())], ip).unwrap_err().to_string();
        assert!(e.contains("--entrypoint webb") && e.contains("websecure"), "{e}");
        let e = listeners(&values(), &[("web".into(), "nowhere".into())], ip).unwrap_err().to_string();
        assert!(e.contains("--entrypoint web=nowhere"), "{e}");
    }
}
