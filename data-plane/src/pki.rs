//! Development PKI: one CA per installation, leaf certificates issued from it.
//!
//! `atrium certs init --dir D` writes `D/ca.pem` and `D/ca-key.pem`;
//! `atrium certs issue --dir D --name N [--role R]` writes `D/N.pem` and `D/N-key.pem`,
//! valid for both server and client authentication, with `N`, `localhost` and `127.0.0.1`
//! (and any `--san`) as names and the role as a URI SAN (see [`crate::trust`]). Private
//! keys are written with mode 0600. Every atrium component accepts only peers whose
//! certificate chains to the CA of its `--tls-dir` and carries a role allowed on that link.
//!
//! The CA is valid for 10 years, leaf certificates for one ([`LEAF_DAYS`]). The development
//! default ([`ensure`]) issues a leaf again when it expires within 30 days or was signed by
//! another CA (the CA was created anew).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// What an atrium component is, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The parent's control plane.
    ControlPlane,
    /// A parent's data plane (the control plane's embedded one uses this role too).
    DataPlane,
    /// A child's agent.
    Agent,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::ControlPlane, Role::DataPlane, Role::Agent];

    /// `control-plane`, `data-plane` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::DataPlane => "data-plane",
            Role::Agent => "agent",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role a certificate named `name` gets when none is given: `control-plane` and
    /// `data-plane` are those roles, any other name is an agent (a cluster's name).
    pub fn for_name(name: &str) -> Role {
        Role::parse(name).unwrap_or(Role::Agent)
    }

    /// The URI SAN that carries the role: `spiffe://atrium/<role>/<name>`.
    pub fn uri(self, name: &str) -> String {
        format!("{URI_PREFIX}{}/{name}", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scheme and authority of the URI SAN that carries a role.
const URI_PREFIX: &str = "spiffe://atrium/";

/// The role a certificate carries, if it carries one (its first atrium URI SAN).
pub fn role_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<Role> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(URI_PREFIX)?.split('/').next().and_then(Role::parse),
        _ => None,
    })
}

/// The DNS names and IP addresses a certificate names (as text).
pub(crate) fn names_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// CA certificate, node certificate and node key, as PEM.
pub type Pems = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Paths of a node's TLS material in a directory.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

impl NodeFiles {
    /// The files of node `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> NodeFiles {
        NodeFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    /// Reads the three PEM files: CA, certificate, key.
    pub fn read(&self) -> Result<Pems, PkiError> {
        let r = |p: &Path| std::fs::read(p).map_err(|source| PkiError::Io { file: p.to_path_buf(), source });
        Ok((r(&self.ca)?, r(&self.cert)?, r(&self.key)?))
    }
}

/// Writes a file only its owner can read: mode 0600 whether it is created or already
/// existed with a looser mode (the mode is set before the bytes are written).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    let io = |source| PkiError::Io { file: path.to_path_buf(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io)?;
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)
}

/// Why development PKI material cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA key is missing (no `atrium certs init`).
    #[error("{file}: {source} (run `atrium certs init` first)")]
    NoCa {
        /// The CA key file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name that cannot be a certificate's.
    #[error("invalid certificate name {0:?}")]
    BadName(String),
    /// Generating or signing failed.
    #[error("{0}")]
    Generate(#[from] rcgen::Error),
}

/// Days a CA certificate is valid.
pub const CA_DAYS: i64 = 3650;

/// Days a leaf certificate is valid.
pub const LEAF_DAYS: i64 = 365;

/// A leaf expiring within this many days is issued again by [`ensure`].
const RENEW_DAYS: i64 = 30;

/// Valid from an hour ago (peers' clocks differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// The CA's parameters. Issuing only needs the CA's name and key, so they are rebuilt here
/// rather than parsed back from the certificate.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "atrium development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Creates the CA in `dir` unless it exists. Returns whether it was created.
pub fn init_ca(dir: &Path) -> Result<bool, PkiError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.is_file() && key_path.is_file() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { file: dir.to_path_buf(), source })?;
    let mut params = ca_params()?;
    validity(&mut params, CA_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(|source| PkiError::Io { file: cert_path, source })?;
    Ok(true)
}

/// Issues a leaf certificate for `name` with `role` (a URI SAN, see [`Role::uri`]) from
/// the CA in `dir`, valid for server and client authentication, for `name`, `localhost`,
/// `127.0.0.1` and `extra_sans`.
pub fn issue(dir: &Path, name: &str, role: Role, extra_sans: &[String]) -> Result<NodeFiles, PkiError> {
    issue_for(dir, name, role, extra_sans, LEAF_DAYS)
}

/// [`issue`], valid for `days`.
fn issue_for(dir: &Path, name: &str, role: Role, extra_sans: &[String], days: i64) -> Result<NodeFiles, PkiError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(PkiError::BadName(name.to_string()));
    }
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key_pem =
        std::fs::read_to_string(&ca_key_path).map_err(|source| PkiError::NoCa { file: ca_key_path.clone(), source })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut names: Vec<String> = vec![name.to_string(), "localhost".into(), "127.0.0.1".into()];
    names.extend(extra_sans.iter().cloned());
    names.dedup();
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let mut sans = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|_| PkiError::BadName(n.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    sans.push(SanType::URI(role.uri(name).try_into().map_err(|_| PkiError::BadName(name.to_string()))?));
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let files = NodeFiles::new(dir, name);
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, cert.pem()).map_err(|source| PkiError::Io { file: files.cert.clone(), source })?;
    Ok(files)
}

/// Why a certificate in the directory is issued again, if it must be: signed by another CA,
/// expiring within [`RENEW_DAYS`], or unreadable.
fn renewal_reason(leaf: &rustls::pki_types::CertificateDer<'_>, ca_pem: &[u8]) -> Option<&'static str> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(leaf.as_ref()) else { return Some("it does not parse") };
    let ca = CertificateDer::pem_slice_iter(ca_pem).next().and_then(Result::ok);
    let Some(Ok((_, ca))) = ca.as_ref().map(|c| X509Certificate::from_der(c.as_ref())) else {
        return Some("the CA certificate does not parse");
    };
    if parsed.verify_signature(Some(ca.public_key())).is_err() {
        return Some("it was signed by another CA");
    }
    let renew_at = time::OffsetDateTime::now_utc() + time::Duration::days(RENEW_DAYS);
    if parsed.validity().not_after.timestamp() < renew_at.unix_timestamp() {
        return Some("it expires within 30 days");
    }
    None
}

/// The CA and `name`'s certificate in `dir` (also for `extra_sans`), created when missing
/// (the development default: mTLS on, even on a laptop). A certificate there without the
/// role its name gives (one issued before certificates carried roles), without one of
/// `extra_sans`, signed by another CA or expiring within 30 days is issued again.
pub fn ensure(dir: &Path, name: &str, extra_sans: &[String]) -> Result<NodeFiles, PkiError> {
    if init_ca(dir)? {
        tracing::info!(dir = %dir.display(), "created a development CA");
    }
    let files = NodeFiles::new(dir, name);
    let role = Role::for_name(name);
    if files.cert.is_file() && files.key.is_file() {
        let cert = std::fs::read(&files.cert).ok().and_then(|pem| {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            CertificateDer::pem_slice_iter(&pem).next()?.ok()
        });
        let has_role = cert.as_ref().and_then(role_of) == Some(role);
        let has_names = cert.as_ref().is_some_and(|c| {
            let names = names_of(c);
            extra_sans.iter().all(|s| names.contains(s))
        });
        let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap_or_default();
        let renew = cert.as_ref().map_or(Some("it does not parse"), |c| renewal_reason(c, &ca_pem));
        if has_role && has_names && renew.is_none() {
            return Ok(files);
        }
        let why = renew.unwrap_or("it lacks its role or one of its names");
        tracing::warn!(name, role = %role, reason = why, "development certificate issued again");
    }
    let f = issue(dir, name, role, extra_sans)?;
    tracing::info!(name, role = %role, dir = %dir.display(), "issued a development certificate");
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first certificate of a PEM file, parsed: (not before, not after) as Unix seconds.
    fn validity_of(file: &Path) -> (i64, i64) {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = CertificateDer::pem_file_iter(file).unwrap().next().unwrap().unwrap();
        let (_, c) = X509Certificate::from_der(der.as_ref()).unwrap();
        (c.validity().not_before.timestamp(), c.validity().not_after.timestamp())
    }

    #[test]
    fn certificates_expire_and_ensure_renews_them_before_they_do_or_when_the_ca_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;
        let f = ensure(dir, "cluster-a", &[]).unwrap();
        let (from, to) = validity_of(&f.cert);
        assert!(from <= now && from > now - 2 * 3600, "valid from about now");
        assert!((to - now - LEAF_DAYS * day).abs() < day, "a leaf is valid for a year");
        let (_, ca_to) = validity_of(&dir.join("ca.pem"));
        assert!((ca_to - now - CA_DAYS * day).abs() < day, "the CA for ten years");
        // Unchanged, it is kept.
        let first = std::fs::read(&f.cert).unwrap();
        ensure(dir, "cluster-a", &[]).unwrap();
        assert_eq!(std::fs::read(&f.cert).unwrap(), first);
        // Expiring within 30 days: issued again.
        issue_for(dir, "cluster-a", Role::Agent, &[], 10).unwrap();
        ensure(dir, "cluster-a", &[]).unwrap();
        assert!(validity_of(&f.cert).1 > now + 300 * day, "renewed for a year");
        // A new CA: the old leaf would not chain to it, so it is issued again.
        let kept = std::fs::read(&f.cert).unwrap();
        std::fs::remove_file(dir.join("ca.pem")).unwrap();
        std::fs::remove_file(dir.join("ca-key.pem")).unwrap();
        ensure(dir, "cluster-a", &[]).unwrap();
        let renewed = std::fs::read(&f.cert).unwrap();
        assert_ne!(renewed, kept);
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let leaf = CertificateDer::pem_slice_iter(&renewed).next().unwrap().unwrap();
        assert_eq!(renewal_reason(&leaf, &std::fs::read(dir.join("ca.pem")).unwrap()), None, "signed by the new CA");
        let old = CertificateDer::pem_slice_iter(&kept).next().unwrap().unwrap();
        assert_eq!(
            renewal_reason(&old, &std::fs::read(dir.join("ca.pem")).unwrap()),
            Some("it was signed by another CA")
        );
    }

    #[test]
    fn ca_then_leaf_and_private_keys_are_0600() {
        let dir = std::env::temp_dir().join(format!("atrium-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(init_ca(&dir).unwrap());
        assert!(!init_ca(&dir).unwrap(), "an existing CA is kept");
        let f = issue(&dir, "dp-1", Role::DataPlane, &["10.1.2.3".into()]).unwrap();
        let (ca, cert, key) = f.read().unwrap();
        assert!(String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"));
        assert!(String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE"));
        assert!(String::from_utf8_lossy(&key).contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [dir.join("ca-key.pem"), f.key.clone()] {
                assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
            }
        }
        assert!(issue(&dir, "../evil", Role::Agent, &[]).is_err());
        // Rewriting a private file that had a looser mode makes it 0600 again.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap();
            write_private(&f.key, b"rewritten").unwrap();
            assert_eq!(std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
