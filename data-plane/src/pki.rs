//! Development PKI: one CA per installation, leaf certificates issued from it.
//!
//! `atrium certs init --dir D` writes `D/ca.pem` and `D/ca-key.pem`;
//! `atrium certs issue --dir D --name N` writes `D/N.pem` and `D/N-key.pem`, valid for
//! both server and client authentication, with `N`, `localhost` and `127.0.0.1` (and any
//! `--san`) as names. Private keys are written with mode 0600. Every atrium component
//! accepts only peers whose certificate chains to the CA of its `--tls-dir`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

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
    pub fn read(&self) -> Result<Pems, String> {
        let r = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok((r(&self.ca)?, r(&self.cert)?, r(&self.key)?))
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The CA's parameters. Issuing only needs the CA's name and key, so they are rebuilt here
/// rather than parsed back from the certificate.
fn ca_params() -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, "atrium development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Creates the CA in `dir` unless it exists. Returns whether it was created.
pub fn init_ca(dir: &Path) -> Result<bool, String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.is_file() && key_path.is_file() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let params = ca_params()?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    Ok(true)
}

/// Issues a leaf certificate for `name` from the CA in `dir`.
pub fn issue(dir: &Path, name: &str, extra_sans: &[String]) -> Result<NodeFiles, String> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!("invalid certificate name {name:?}"));
    }
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .map_err(|e| format!("{}: {e} (run `atrium certs init` first)", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| format!("CA key: {e}"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut names: Vec<String> = vec![name.to_string(), "localhost".into(), "127.0.0.1".into()];
    names.extend(extra_sans.iter().cloned());
    names.dedup();
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|e| format!("invalid name {n:?}: {e}")),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let files = NodeFiles::new(dir, name);
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, cert.pem()).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    // Each node directory carries the CA certificate it trusts.
    Ok(files)
}

/// The CA and `name`'s certificate in `dir`, created when missing (the development
/// default: mTLS on, even on a laptop).
pub fn ensure(dir: &Path, name: &str) -> Result<NodeFiles, String> {
    if init_ca(dir)? {
        tracing::info!(dir = %dir.display(), "created a development CA");
    }
    let files = NodeFiles::new(dir, name);
    if files.cert.is_file() && files.key.is_file() {
        return Ok(files);
    }
    let f = issue(dir, name, &[])?;
    tracing::info!(name, dir = %dir.display(), "issued a development certificate");
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_then_leaf_and_private_keys_are_0600() {
        let dir = std::env::temp_dir().join(format!("atrium-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(init_ca(&dir).unwrap());
        assert!(!init_ca(&dir).unwrap(), "an existing CA is kept");
        let f = issue(&dir, "dp-1", &["10.1.2.3".into()]).unwrap();
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
        assert!(issue(&dir, "../evil", &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
