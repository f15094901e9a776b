//! atrium's wire types.
//!
//! The snapshot (`atrium.v1.Snapshot`) is the compiled configuration a data plane runs. It
//! is produced by the compiler in `atrium-model` and turned into a route table by
//! `atrium-data-plane`. Its encoding is deterministic (sorted repeated fields, no maps), so
//! the SHA-256 of the encoded body identifies a configuration.
#![forbid(unsafe_code)]

/// Version 1 of atrium's protocol messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/atrium.v1.rs"));
}

pub use prost::Message;

/// The SHA-256 of an encoded snapshot body: what identifies a configuration (equal
/// configurations encode, and so hash, equally). The one place it is computed.
pub fn body_hash(encoded: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(encoded).to_vec()
}

/// A body encoded, and the hash of the encoding: equal configurations give equal hashes.
pub fn encode(body: &v1::SnapshotBody) -> (Vec<u8>, Vec<u8>) {
    let encoded = body.encode_to_vec();
    let hash = body_hash(&encoded);
    (encoded, hash)
}

/// A snapshot of `body` at `version`: the body encoded once and hashed.
pub fn seal(version: v1::Version, body: &v1::SnapshotBody) -> v1::Snapshot {
    let (encoded, hash) = encode(body);
    v1::Snapshot { version: Some(version), hash, body: encoded.into() }
}

/// Why a data plane's version is refused by a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSkew {
    /// A version that is not `MAJOR.MINOR[.PATCH]`.
    Unreadable {
        /// The control plane's version.
        control_plane: String,
        /// The data plane's version.
        data_plane: String,
    },
    /// Another major version.
    Major {
        /// The control plane's major version.
        control_plane: u64,
        /// The data plane's major version.
        data_plane: u64,
    },
    /// A data plane newer than the control plane.
    Newer {
        /// The control plane's version.
        control_plane: String,
        /// The data plane's version.
        data_plane: String,
    },
}

impl std::fmt::Display for VersionSkew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionSkew::Unreadable { control_plane, data_plane } => {
                write!(f, "unreadable versions (control plane {control_plane:?}, data plane {data_plane:?})")
            }
            VersionSkew::Major { control_plane, data_plane } => {
                write!(
                    f,
                    "major version {data_plane} of the data plane differs from the control plane's {control_plane}"
                )
            }
            VersionSkew::Newer { control_plane, data_plane } => {
                write!(f, "data plane {data_plane} is newer than control plane {control_plane}")
            }
        }
    }
}

impl std::error::Error for VersionSkew {}

/// Version handshake between a control plane and a data plane: the major versions must be
/// equal, and the data plane's minor version must not be newer than the control plane's
/// (an older data plane understands everything it is sent; a newer one may expect more).
pub fn compatible(control_plane: &str, data_plane: &str) -> Result<(), VersionSkew> {
    fn parse(v: &str) -> Option<(u64, u64)> {
        let mut it = v.trim_start_matches('v').split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
    let (Some((cmaj, cmin)), Some((dmaj, dmin))) = (parse(control_plane), parse(data_plane)) else {
        return Err(VersionSkew::Unreadable { control_plane: control_plane.into(), data_plane: data_plane.into() });
    };
    if cmaj != dmaj {
        return Err(VersionSkew::Major { control_plane: cmaj, data_plane: dmaj });
    }
    if dmin > cmin {
        return Err(VersionSkew::Newer { control_plane: control_plane.into(), data_plane: data_plane.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_handshake() {
        assert!(super::compatible("1.4.0", "1.4.2").is_ok());
        assert!(super::compatible("1.4.0", "1.3.9").is_ok());
        assert!(super::compatible("1.4.0", "1.5.0").unwrap_err().to_string().contains("newer"));
        assert!(super::compatible("1.4.0", "2.0.0").unwrap_err().to_string().contains("major"));
        assert!(super::compatible("1.4.0", "garbage").is_err());
    }
}
