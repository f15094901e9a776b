//! Static configuration in the shape of Traefik's Helm values.
//!
//! Users bring the `values.yaml` they give the Traefik Helm chart. It is merged over the
//! chart's defaults (`web` :8000, `websecure` :8443 with TLS, `traefik` :8080 as the admin
//! listener, `metrics` :9100). atrium reads a few keys; every other chart key gets a
//! warning (it is valid for the chart, but atrium does not act on it). Inside the keys it
//! reads, it is strict: a wrong type or unknown field is an error with file, line and path.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use atrium_routing::middleware::config::{IntOrString, NotSupported};
use atrium_routing::path_security::EncodedCharacters;
use serde::Deserialize;

use crate::diagnostic::{Diagnostic, Severity};
use crate::yaml::{DeError, Node, NodeKind, from_node_at, parse_documents};

/// Ports that are not routing entrypoints.
pub const ADMIN_PORT: &str = "traefik";
/// The metrics port of the chart.
pub const METRICS_PORT: &str = "metrics";

/// One listener from `ports.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPointConfig {
    /// Container port.
    pub port: u16,
    /// Serves uplinks to a parent (QUIC).
    pub uplink: bool,
    /// Terminates TLS.
    pub tls: bool,
    /// Encoded characters request paths may carry (`http.encodedCharacters`; none by
    /// default).
    pub encoded_characters: EncodedCharacters,
}

impl EntryPointConfig {
    /// A port with nothing but its number, TLS and uplink flags set.
    pub fn new(port: u16, uplink: bool, tls: bool) -> Self {
        EntryPointConfig { port, uplink, tls, encoded_characters: EncodedCharacters::default() }
    }
}

/// `hub.providers.multicluster`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Multicluster {
    #[serde(default)]
    pub enabled: bool,
    /// Seconds between polls of each child (default 5).
    #[serde(default)]
    pub poll_interval: Option<IntOrString>,
    /// Seconds after which a silent child is unreachable (default 5).
    #[serde(default)]
    pub poll_timeout: Option<IntOrString>,
    #[serde(default)]
    pub children: BTreeMap<String, ChildConfig>,
}

/// `hub.providers.multicluster.children.<name>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ChildConfig {
    pub address: String,
    #[serde(default)]
    pub servers_transport: Option<ServersTransport>,
}

/// `portal` (atrium's own section, not a chart key): accounts the control plane creates in
/// the portal's store when they do not exist yet, for examples and bootstrapping.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalValues {
    #[serde(default)]
    pub users: Vec<PortalUser>,
}

/// `portal.users[]`: a local account. Without `passwordHash` (an argon2id PHC string), the
/// control plane logs a one-time password when it creates the account.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PortalUser {
    pub email: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// `hub.redis`, as the Traefik Hub chart has it: where plan counters are kept for every
/// data plane together. An empty `endpoints` (the chart's default) leaves counters local.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Redis {
    /// `host:port`; the chart takes a comma-separated list, atrium one standalone server.
    #[serde(default)]
    pub endpoints: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// The database number (the chart's is a string).
    #[serde(default)]
    pub database: Option<IntOrString>,
    /// How long one counter update may take (Go duration; default 500ms, at most 5s).
    #[serde(default)]
    pub timeout: Option<IntOrString>,
    /// Redis Cluster: only `false` (or unset) is built.
    #[serde(default)]
    pub cluster: Option<bool>,
    #[serde(default)]
    pub tls: Option<NotSupported>,
    #[serde(default)]
    pub sentinel: Option<NotSupported>,
}

impl Redis {
    /// The database number; an error names what is wrong.
    pub fn database(&self) -> Result<i64, String> {
        match &self.database {
            None => Ok(0),
            Some(IntOrString::Int(i)) if *i >= 0 => Ok(*i),
            Some(IntOrString::Str(s)) if s.is_empty() => Ok(0),
            Some(IntOrString::Str(s)) => {
                s.parse::<u32>().map(i64::from).map_err(|_| format!("database {s:?} is not a number"))
            }
            Some(IntOrString::Int(i)) => Err(format!("database {i} is negative")),
        }
    }

    /// The timeout of one counter update.
    pub fn timeout(&self) -> Result<std::time::Duration, String> {
        match &self.timeout {
            None => Ok(std::time::Duration::from_millis(500)),
            Some(IntOrString::Str(s)) if s.is_empty() || s == "0s" || s == "0" => {
                Ok(std::time::Duration::from_millis(500))
            }
            Some(t) => match t.as_duration().map_err(|e| e.to_string())? {
                d if d > std::time::Duration::from_secs(5) => {
                    Err(format!("timeout {t} is longer than 5s: every API request may wait that long"))
                }
                d => Ok(d),
            },
        }
    }
}

/// How the parent connects to a child.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ServersTransport {
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, rename = "rootCAs")]
    pub root_cas: Vec<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub certificates: Vec<CertificatePair>,
    #[serde(default)]
    pub max_idle_conns_per_host: Option<NotSupported>,
    #[serde(default)]
    pub forwarding_timeouts: Option<NotSupported>,
    #[serde(default, rename = "disableHTTP2")]
    pub disable_http2: Option<NotSupported>,
    #[serde(default, rename = "peerCertURI")]
    pub peer_cert_uri: Option<NotSupported>,
    #[serde(default)]
    pub spiffe: Option<NotSupported>,
}

/// A client certificate and its key, as file paths.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct CertificatePair {
    pub cert_file: String,
    pub key_file: String,
}

/// Merged static configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    /// All ports, by name, defaults included.
    pub ports: BTreeMap<String, EntryPointConfig>,
    /// The multi-cluster provider, when configured.
    pub multicluster: Option<Multicluster>,
    /// Redis for plan counters shared by every data plane (`hub.redis`), when it names
    /// an endpoint.
    pub redis: Option<Redis>,
    /// Portal accounts to create (`portal.users`).
    pub portal_users: Vec<PortalUser>,
    /// The file it came from, for positions.
    pub file: Option<Arc<Path>>,
    /// The document, for positions.
    pub doc: Option<Node>,
}

impl Default for Values {
    fn default() -> Self {
        let mut ports = BTreeMap::new();
        ports.insert("web".to_string(), EntryPointConfig::new(8000, false, false));
        ports.insert("websecure".to_string(), EntryPointConfig::new(8443, false, true));
        ports.insert(ADMIN_PORT.to_string(), EntryPointConfig::new(8080, false, false));
        ports.insert(METRICS_PORT.to_string(), EntryPointConfig::new(9100, false, false));
        Values { ports, multicluster: None, redis: None, portal_users: Vec::new(), file: None, doc: None }
    }
}

impl Values {
    /// The routing entrypoints: every port but the admin and metrics ones.
    pub fn entry_points(&self) -> impl Iterator<Item = (&String, &EntryPointConfig)> {
        self.ports.iter().filter(|(n, _)| n.as_str() != ADMIN_PORT && n.as_str() != METRICS_PORT)
    }

    /// The children the parent dials, if the multi-cluster provider is on.
    pub fn children(&self) -> impl Iterator<Item = (&String, &ChildConfig)> {
        self.multicluster.iter().filter(|m| m.enabled).flat_map(|m| m.children.iter())
    }

    /// Loads a values file. Problems are returned as findings; the values are the merge of
    /// whatever was readable over the defaults.
    pub fn load(path: &Path) -> (Values, Vec<Diagnostic>) {
        match crate::loader::read_text(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) => {
                let d = Diagnostic::general(Severity::Error, "io", e.to_string());
                (Values::default(), vec![d])
            }
        }
    }

    /// [`Values::load`] for an optional file: the defaults, with no finding, when there is
    /// none. How every role and tool reads its `--values`.
    pub fn load_optional(path: Option<&Path>) -> (Values, Vec<Diagnostic>) {
        match path {
            Some(p) => Values::load(p),
            None => (Values::default(), Vec::new()),
        }
    }

    /// Parses values text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> (Values, Vec<Diagnostic>) {
        let file: Arc<Path> = Arc::from(path);
        let mut v = Values { file: Some(file.clone()), ..Values::default() };
        let mut diags = Vec::new();
        let docs = match parse_documents(text) {
            Ok(d) => d,
            Err(e) => {
                diags.push(Diagnostic::at(
                    Severity::Error,
                    "yaml-syntax",
                    &file,
                    e.mark,
                    format!("invalid YAML: {}", e.message),
                ));
                return (v, diags);
            }
        };
        let Some(doc) = docs.into_iter().next() else { return (v, diags) };
        let mut r = Reader { file: &file, diags: &mut diags };
        let NodeKind::Map(entries) = &doc.kind else {
            r.error(&doc, "", format!("values must be a mapping, found {}", doc.describe()));
            return (v, diags);
        };
        for (k, val) in entries {
            match k.as_str().unwrap_or("") {
                "hub" => r.hub(val, &mut v),
                "portal" => r.portal(val, &mut v),
                "ports" => r.ports(val, &mut v),
                // Read once every port is known: arguments may refer to any of them.
                "additionalArguments" => {}
                other => r.unread(k, other),
            }
        }
        for (k, val) in entries {
            if k.as_str() == Some("additionalArguments") {
                r.arguments(val, &mut v);
            }
        }
        v.doc = Some(doc);
        (v, diags)
    }
}

struct Reader<'a> {
    file: &'a Arc<Path>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn error(&mut self, node: &Node, path: &str, msg: String) {
        self.diags.push(Diagnostic {
            field: (!path.is_empty()).then(|| path.to_string()),
            ..Diagnostic::at(Severity::Error, "values", self.file, node.mark, msg)
        });
    }

    fn de_error(&mut self, e: DeError, fallback: &Node) {
        let code = if e.message.contains("not supported yet") { "unsupported-field" } else { "values" };
        self.diags.push(Diagnostic {
            field: (!e.path.is_empty()).then(|| e.path.clone()),
            ..Diagnostic::at(Severity::Error, code, self.file, e.mark.unwrap_or(fallback.mark), e.message)
        });
    }

    fn unread(&mut self, key: &Node, path: &str) {
        self.diags.push(Diagnostic {
            field: Some(path.to_string()),
            ..Diagnostic::at(
                Severity::Warning,
                "unknown-chart-key",
                self.file,
                key.mark,
                "chart key not read by atrium; it has no effect here".to_string(),
            )
        });
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> &'n [(Node, Node)] {
        match &node.kind {
            NodeKind::Map(e) => e,
            NodeKind::Null => &[],
            _ => {
                self.error(node, path, format!("expected a mapping, found {}", node.describe()));
                &[]
            }
        }
    }

    fn hub(&mut self, node: &Node, v: &mut Values) {
        for (k, val) in self.map(node, "hub") {
            let key = k.as_str().unwrap_or("");
            if key == "redis" {
                self.redis(val, v);
                continue;
            }
            if key != "providers" {
                self.unread(k, &format!("hub.{key}"));
                continue;
            }
            for (pk, pv) in self.map(val, "hub.providers") {
                let pkey = pk.as_str().unwrap_or("");
                if pkey != "multicluster" {
                    self.unread(pk, &format!("hub.providers.{pkey}"));
                    continue;
                }
                match from_node_at::<Multicluster>(pv, "hub.providers.multicluster") {
                    Ok(mc) => {
                        self.check_children(pv, &mc);
                        v.multicluster = Some(mc);
                    }
                    Err(e) => self.de_error(e, pv),
                }
            }
        }
    }

    fn portal(&mut self, node: &Node, v: &mut Values) {
        let p = match from_node_at::<PortalValues>(node, "portal") {
            Ok(p) => p,
            Err(e) => return self.de_error(e, node),
        };
        let users = match &node.kind {
            NodeKind::Map(e) => e.iter().find(|(k, _)| k.as_str() == Some("users")).map(|(_, u)| u),
            _ => None,
        };
        let at = |i: usize, field: &str| -> Node {
            let item = users.and_then(|u| match &u.kind {
                NodeKind::Seq(items) => items.get(i),
                _ => None,
            });
            let value = item.and_then(|it| match &it.kind {
                NodeKind::Map(e) => e.iter().find(|(k, _)| k.as_str() == Some(field)).map(|(_, v)| v),
                _ => None,
            });
            value.or(item).unwrap_or(node).clone()
        };
        for (i, u) in p.users.iter().enumerate() {
            if !u.email.contains('@') {
                self.error(
                    &at(i, "email"),
                    &format!("portal.users[{i}].email"),
                    format!("{:?} is not an email address", u.email),
                );
            }
            if let Some(h) = &u.password_hash {
                if !h.starts_with("$argon2id$") {
                    let msg = "an argon2id PHC string ($argon2id$…); leave it out for a one-time password".to_string();
                    self.error(&at(i, "passwordHash"), &format!("portal.users[{i}].passwordHash"), msg);
                }
            }
        }
        v.portal_users = p.users;
    }

    fn redis(&mut self, node: &Node, v: &mut Values) {
        let r = match from_node_at::<Redis>(node, "hub.redis") {
            Ok(r) => r,
            Err(e) => return self.de_error(e, node),
        };
        let at = |name: &str| node.get(name).unwrap_or(node);
        let endpoints: Vec<&str> = r.endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if r.cluster == Some(true) {
            let msg = "Redis Cluster is not supported yet: point endpoints at one standalone server".to_string();
            self.diags.push(Diagnostic {
                field: Some("hub.redis.cluster".into()),
                ..Diagnostic::at(Severity::Error, "unsupported-field", self.file, at("cluster").mark, msg)
            });
        }
        match endpoints.as_slice() {
            [] => return,
            [one] => {
                if atrium_routing::children::parse_address(&format!("https://{one}")).is_err() || !one.contains(':') {
                    let msg = format!("endpoint {one:?} must be host:port");
                    self.error(at("endpoints"), "hub.redis.endpoints", msg);
                }
            }
            [..] => {
                let msg = "one standalone Redis endpoint is supported (Cluster and Sentinel are not yet)".to_string();
                self.error(at("endpoints"), "hub.redis.endpoints", msg);
            }
        }
        if let Err(e) = r.database() {
            self.error(at("database"), "hub.redis.database", e);
        }
        if let Err(e) = r.timeout() {
            self.error(at("timeout"), "hub.redis.timeout", e);
        }
        v.redis = Some(Redis { endpoints: endpoints.join(","), ..r });
    }

    fn check_children(&mut self, node: &Node, mc: &Multicluster) {
        for d in [("pollInterval", &mc.poll_interval), ("pollTimeout", &mc.poll_timeout)] {
            if let (name, Some(val)) = d {
                if let Err(e) = val.as_duration() {
                    let at = node.get(name).unwrap_or(node);
                    self.error(at, &format!("hub.providers.multicluster.{name}"), e.to_string());
                }
            }
        }
        for (name, child) in &mc.children {
            let path = format!("hub.providers.multicluster.children.{name}.address");
            let at = node.locate(&format!("children.{name}.address"));
            if let Err(e) = atrium_routing::children::parse_address(&child.address) {
                self.error(at, &path, e.to_string());
            }
            if !atrium_routing::children::is_valid_name(name) {
                let at = node.locate(&format!("children.{name}"));
                self.error(
                    at,
                    &format!("hub.providers.multicluster.children.{name}"),
                    format!("child name {name:?} must be a DNS label (lower-case letters, digits and '-')"),
                );
            }
        }
    }

    fn ports(&mut self, node: &Node, v: &mut Values) {
        for (k, val) in self.map(node, "ports") {
            let name = k.as_str().unwrap_or("").to_string();
            let path = format!("ports.{name}");
            if val.kind == NodeKind::Null {
                continue;
            }
            let mut ep = v.ports.get(&name).cloned().unwrap_or(EntryPointConfig::new(0, false, false));
            for (fk, fv) in self.map(val, &path) {
                let field = fk.as_str().unwrap_or("");
                let fpath = format!("{path}.{field}");
                match field {
                    "port" => match from_node_at::<u16>(fv, &fpath) {
                        Ok(p) if p > 0 => ep.port = p,
                        Ok(_) => self.error(fv, &fpath, "port must be between 1 and 65535".into()),
                        Err(e) => self.de_error(e, fv),
                    },
                    "uplink" => match from_node_at::<bool>(fv, &fpath) {
                        Ok(b) => ep.uplink = b,
                        Err(e) => self.de_error(e, fv),
                    },
                    "tls" => {
                        for (tk, tv) in self.map(fv, &fpath) {
                            let tkey = tk.as_str().unwrap_or("");
                            let tpath = format!("{fpath}.{tkey}");
                            if tkey == "enabled" {
                                match from_node_at::<bool>(tv, &tpath) {
                                    Ok(b) => ep.tls = b,
                                    Err(e) => self.de_error(e, tv),
                                }
                            } else {
                                self.unread(tk, &tpath);
                            }
                        }
                    }
                    "http" => {
                        for (hk, hv) in self.map(fv, &fpath) {
                            let hkey = hk.as_str().unwrap_or("");
                            let hpath = format!("{fpath}.{hkey}");
                            if hkey == "encodedCharacters" {
                                match from_node_at::<EncodedCharacters>(hv, &hpath) {
                                    Ok(e) => ep.encoded_characters = e,
                                    Err(e) => self.de_error(e, hv),
                                }
                            } else {
                                self.unread(hk, &hpath);
                            }
                        }
                    }
                    _ => self.unread(fk, &fpath),
                }
            }
            if ep.port == 0 {
                self.error(val, &path, format!("port {name:?} has no `port`"));
                continue;
            }
            v.ports.insert(name, ep);
        }
    }

    fn arguments(&mut self, node: &Node, v: &mut Values) {
        let items = match &node.kind {
            NodeKind::Seq(items) => items.as_slice(),
            NodeKind::Null => &[],
            _ => {
                self.error(node, "additionalArguments", format!("expected a list, found {}", node.describe()));
                return;
            }
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("additionalArguments[{i}]");
            let Some(arg) = item.as_str() else {
                self.error(item, &path, format!("expected a string, found {}", item.describe()));
                continue;
            };
            if let Some(parsed) = parse_encoded_characters_argument(arg) {
                let applied = parsed.and_then(|(ep, flag, allow)| {
                    let e = v
                        .ports
                        .get_mut(&ep)
                        .ok_or_else(|| ArgumentError::NoSuchPort { arg: arg.to_string(), name: ep.clone() })?;
                    if e.encoded_characters.set(&flag, allow) {
                        Ok(())
                    } else {
                        Err(ArgumentError::UnknownOption(arg.to_string()))
                    }
                });
                if let Err(e) = applied {
                    self.error(item, &path, e.to_string());
                }
                continue;
            }
            match parse_uplink_tls_argument(arg) {
                Some(Ok((ep, tls))) => {
                    let e = v.ports.entry(ep).or_insert(EntryPointConfig::new(9443, true, tls));
                    e.tls = tls;
                }
                Some(Err(e)) => self.error(item, &path, e.to_string()),
                None => self.diags.push(Diagnostic {
                    field: Some(path),
                    ..Diagnostic::at(
                        Severity::Warning,
                        "unknown-chart-key",
                        self.file,
                        item.mark,
                        format!("argument {arg:?} is not read by atrium; it has no effect here"),
                    )
                }),
            }
        }
    }
}

/// Why an `additionalArguments` flag that atrium reads cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentError {
    /// The entrypoint name in the flag is empty or has a dot.
    #[error("invalid entrypoint name in {0:?}")]
    EntryPointName(String),
    /// The value after `=` is not a boolean.
    #[error("{0:?}: expected true or false after '='")]
    NotABool(String),
    /// The flag names an entrypoint that `ports` does not declare.
    #[error("{arg:?}: no port named {name:?} (declare it under `ports`)")]
    NoSuchPort {
        /// The flag.
        arg: String,
        /// The entrypoint.
        name: String,
    },
    /// An `encodedCharacters` option Traefik does not have.
    #[error("{0:?}: unknown encodedCharacters option")]
    UnknownOption(String),
}

/// `<key>=<bool>` in `arg` (a bare key is `true`) → the key and the value.
fn bool_flag<'a>(arg: &str, rest: &'a str) -> Result<(&'a str, bool), ArgumentError> {
    let (key, value) = rest.split_once('=').unwrap_or((rest, "true"));
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok((key, true)),
        "false" => Ok((key, false)),
        _ => Err(ArgumentError::NotABool(arg.to_string())),
    }
}

/// An entrypoint name taken from a flag: not empty, no dot.
fn flag_entry_point(arg: &str, name: &str) -> Result<String, ArgumentError> {
    if name.is_empty() || name.contains('.') {
        return Err(ArgumentError::EntryPointName(arg.to_string()));
    }
    Ok(name.to_string())
}

/// `--entryPoints.<name>.http.encodedCharacters.<flag>=<bool>` (Traefik's flags are
/// case-insensitive in their first part) → (name, flag, value). `None` when the argument
/// is something else.
fn parse_encoded_characters_argument(arg: &str) -> Option<Result<(String, String, bool), ArgumentError>> {
    let rest = arg.strip_prefix("--")?;
    let (head, rest) = rest.split_once('.')?;
    if !head.eq_ignore_ascii_case("entryPoints") {
        return None;
    }
    let key = rest.split_once('=').map_or(rest, |(k, _)| k);
    let (name, flag) = key.split_once(".http.encodedCharacters.")?;
    Some(bool_flag(arg, rest).and_then(|(_, allow)| Ok((flag_entry_point(arg, name)?, flag.to_string(), allow))))
}

/// `--hub.uplinkEntryPoints.<name>.http.tls=<bool>` → (name, tls). `None` when the
/// argument is something else.
fn parse_uplink_tls_argument(arg: &str) -> Option<Result<(String, bool), ArgumentError>> {
    let rest = arg.strip_prefix("--hub.uplinkEntryPoints.")?;
    let key = rest.split_once('=').map_or(rest, |(k, _)| k);
    let name = key.strip_suffix(".http.tls")?;
    Some(bool_flag(arg, rest).and_then(|(_, tls)| Ok((flag_entry_point(arg, name)?, tls))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PARENT: &str = "hub:
  providers:
    multicluster:
      enabled: true
      pollInterval: 5
      pollTimeout: 5
      children:
        cluster-a:
          address: \"https://child-a.example.com:9443\"
          serversTransport:
            insecureSkipVerify: true
";

    const CHILD: &str = "hub:
  providers:
    multicluster:
      enabled: true
ports:
  multicluster:
    port: 9443
    uplink: true
additionalArguments:
  - --hub.uplinkEntryPoints.multicluster.http.tls=true
";

    #[test]
    fn parent_values_read_children() {
        let (v, d) = Values::parse(Path::new("v.yaml"), PARENT);
        assert!(d.is_empty(), "{d:?}");
        let children: Vec<_> = v.children().collect();
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].1.address, "https://child-a.example.com:9443");
        assert_eq!(children[0].1.servers_transport.as_ref().unwrap().insecure_skip_verify, Some(true));
        // Defaults are there.
        assert_eq!(v.ports["web"].port, 8000);
        assert!(v.ports["websecure"].tls);
    }

    #[test]
    fn child_values_declare_a_tls_uplink_entrypoint() {
        let (v, d) = Values::parse(Path::new("v.yaml"), CHILD);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(v.ports["multicluster"], EntryPointConfig::new(9443, true, true));
        assert_eq!(v.entry_points().count(), 3);
    }

    #[test]
    fn unknown_chart_keys_warn_and_read_keys_are_strict() {
        let text = "image:\n  tag: v3\nports:\n  web:\n    port: 80\n    exposedPort: 80\n  websecure:\n    port: high\nhub:\n  token: abc\n  providers:\n    multicluster:\n      enabled: yes\n";
        let (v, d) = Values::parse(Path::new("v.yaml"), text);
        let s: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            s.iter().any(|l| l.starts_with("v.yaml:1:1: warning: image:") && l.ends_with("[unknown-chart-key]")),
            "{s:#?}"
        );
        assert!(s.iter().any(|l| l.starts_with("v.yaml:6:5: warning: ports.web.exposedPort")), "{s:#?}");
        assert!(
            s.iter().any(|l| l.starts_with("v.yaml:8:11: error: ports.websecure.port: expected an integer")),
            "{s:#?}"
        );
        assert!(s.iter().any(|l| l.starts_with("v.yaml:10:3: warning: hub.token")), "{s:#?}");
        assert!(
            s.iter()
                .any(|l| l.starts_with("v.yaml:13:16: error: hub.providers.multicluster.enabled: expected a boolean")),
            "{s:#?}"
        );
        assert_eq!(v.ports["web"].port, 80);
    }

    #[test]
    fn portal_users_are_read_and_checked() {
        let text = "portal:\n  users:\n    - {email: dev@example.com, groups: [developers]}\n    - {email: ops@example.com, passwordHash: \"$argon2id$v=19$x\"}\n";
        let (v, d) = Values::parse(Path::new("v.yaml"), text);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(v.portal_users.len(), 2);
        assert_eq!(v.portal_users[0].groups, ["developers"]);
        let (_, d) =
            Values::parse(Path::new("v.yaml"), "portal:\n  users:\n    - {email: nope, passwordHash: plain}\n");
        let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(lines.iter().any(|l| l.contains("v.yaml:3:") && l.contains("portal.users[0].email")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("portal.users[0].passwordHash") && l.contains("argon2id")),
            "{lines:?}"
        );
        let (_, d) = Values::parse(Path::new("v.yaml"), "portal:\n  users:\n    - {email: a@b, role: admin}\n");
        assert!(d.iter().any(|d| d.is_error()), "unknown fields are errors");
    }

    #[test]
    fn redis_reads_the_charts_keys_and_names_what_is_not_built() {
        let text = "hub:\n  redis:\n    endpoints: \"127.0.0.1:6379\"\n    database: \"2\"\n    password: s3cret\n    timeout: 1s\n";
        let (v, d) = Values::parse(Path::new("v.yaml"), text);
        assert!(d.is_empty(), "{d:?}");
        let r = v.redis.unwrap();
        assert_eq!(
            (r.endpoints.as_str(), r.database(), r.timeout()),
            ("127.0.0.1:6379", Ok(2), Ok(Duration::from_secs(1)))
        );
        let (v, d) = Values::parse(Path::new("v.yaml"), "hub:\n  redis:\n    endpoints: \"\"\n");
        assert!(d.is_empty() && v.redis.is_none(), "the chart's empty default leaves counters local");

        let (_, d) = Values::parse(Path::new("v.yaml"), "hub:\n  redis:\n    tls: {ca: /ca.pem}\n");
        assert_eq!(
            d[0].to_string(),
            "v.yaml:3:10: error: hub.redis.tls: not supported yet by atrium [unsupported-field]"
        );
        let text = "hub:\n  redis:\n    endpoints: \"a:1,b:2\"\n    cluster: true\n";
        let (_, d) = Values::parse(Path::new("v.yaml"), text);
        let s: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        for want in [
            "v.yaml:4:14: error: hub.redis.cluster: Redis Cluster is not supported yet",
            "v.yaml:3:16: error: hub.redis.endpoints: one standalone Redis endpoint is supported",
        ] {
            assert!(s.iter().any(|l| l.starts_with(want)), "{want}\n{s:#?}");
        }
        let text = "hub:\n  redis:\n    endpoints: \"redis\"\n    database: x\n";
        let (_, d) = Values::parse(Path::new("v.yaml"), text);
        let s: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(s.iter().any(|l| l.contains("hub.redis.endpoints: endpoint \"redis\" must be host:port")), "{s:#?}");
        assert!(s.iter().any(|l| l.contains("hub.redis.database: database \"x\" is not a number")), "{s:#?}");
    }

    #[test]
    fn bad_child_address_and_unknown_transport_field() {
        let text = PARENT
            .replace("https://child-a.example.com:9443", "child-a")
            .replace("insecureSkipVerify", "insecureSkipVerfy");
        let (_, d) = Values::parse(Path::new("v.yaml"), &text);
        let s: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            s.iter().any(|l| l.contains("unknown field `insecureSkipVerfy`") && l.contains("v.yaml:11:13")),
            "{s:#?}"
        );
        let (_, d) = Values::parse(Path::new("v.yaml"), &PARENT.replace("https://child-a.example.com:9443", "child-a"));
        assert!(d.iter().any(|d| d.to_string().contains("children.cluster-a.address")), "{d:?}");
    }

    #[test]
    fn uplink_tls_argument() {
        assert_eq!(
            parse_uplink_tls_argument("--hub.uplinkEntryPoints.mc.http.tls=true"),
            Some(Ok(("mc".into(), true)))
        );
        assert_eq!(
            parse_uplink_tls_argument("--hub.uplinkEntryPoints.mc.http.tls=false"),
            Some(Ok(("mc".into(), false)))
        );
        assert!(matches!(parse_uplink_tls_argument("--hub.uplinkEntryPoints.mc.http.tls=maybe"), Some(Err(_))));
        assert_eq!(parse_uplink_tls_argument("--log.level=DEBUG"), None);
    }
}
