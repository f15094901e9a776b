use std::sync::Arc;

use super::*;
use crate::pki;

/// A CA with one certificate per role (and one issued without a role), in a fresh
/// directory.
fn pki_dir() -> tempfile_dir::Dir {
    let d = tempfile_dir::Dir::new();
    pki::init_ca(&d.0).unwrap();
    for (name, role) in
        [("control-plane", Role::ControlPlane), ("data-plane", Role::DataPlane), ("cluster-a", Role::Agent)]
    {
        pki::issue(&d.0, name, role, &[]).unwrap();
    }
    d
}

mod tempfile_dir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = std::env::temp_dir().join(format!("atrium-trust-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn trust(dir: &std::path::Path, name: &str) -> NodeTrust {
    NodeTrust::load(&pki::NodeFiles::new(dir, name)).unwrap()
}

#[test]
fn issued_certificates_carry_their_role_and_names_decide_the_default() {
    let d = pki_dir();
    for (name, role) in
        [("control-plane", Role::ControlPlane), ("data-plane", Role::DataPlane), ("cluster-a", Role::Agent)]
    {
        let pem = std::fs::read(d.0.join(format!("{name}.pem"))).unwrap();
        assert_eq!(role_of(&pem_certificates(&pem).unwrap()[0]), Some(role), "{name}");
    }
    assert_eq!(Role::for_name("control-plane"), Role::ControlPlane);
    assert_eq!(Role::for_name("data-plane"), Role::DataPlane);
    assert_eq!(Role::for_name("dp-7"), Role::Agent);
    assert_eq!(Role::DataPlane.uri("dp-7"), "spiffe://atrium/data-plane/dp-7");
    // A certificate with no atrium URI has no role.
    let plain = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    assert_eq!(role_of(plain.cert.der()), None);
}

/// Runs a TLS handshake between `server` and `client` over a pipe; the server's result.
async fn handshake(server: rustls::ServerConfig, client: rustls::ClientConfig) -> Result<(), String> {
    let (c, s) = tokio::io::duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // The server's stream is dropped as soon as it is accepted, so the client's read ends.
    let server = async move { acceptor.accept(s).await.map(drop) };
    let client = async move {
        let mut t = connector.connect(name, c).await?;
        // TLS 1.3 client auth fails on the server after the client's handshake ends: read
        // to see the alert.
        let mut b = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut t, &mut b).await;
        Ok::<_, std::io::Error>(())
    };
    let both = async { tokio::join!(server, client) };
    let (srv, _) = tokio::time::timeout(std::time::Duration::from_secs(10), both).await.expect("a handshake in time");
    srv.map_err(|e| e.to_string())
}

#[tokio::test]
async fn servers_let_in_only_the_roles_of_their_link() {
    let d = pki_dir();
    let cp = trust(&d.0, "control-plane");
    // The snapshot stream: data planes only.
    let grpc = || cp.server_config(&[Role::DataPlane], "snapshot stream", &[b"h2"], false).unwrap();
    for (name, ok) in [("data-plane", true), ("cluster-a", false), ("control-plane", false)] {
        let me = trust(&d.0, name);
        let client =
            me.client_config(me.server_verifier(Role::ControlPlane, "test").unwrap(), &[b"h2"], false).unwrap();
        let r = handshake(grpc(), client).await;
        assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
        if !ok {
            assert!(r.unwrap_err().to_string().contains("only data-plane may connect"), "{name}: the refusal says why");
        }
    }
}

#[tokio::test]
async fn clients_check_the_servers_role_too() {
    let d = pki_dir();
    let dp = trust(&d.0, "data-plane");
    // A data plane dialling the control plane finds an agent's certificate: refused.
    let agent = trust(&d.0, "cluster-a");
    let server = agent.server_config(&[Role::DataPlane], "test", &[b"h2"], false).unwrap();
    let client =
        dp.client_config(dp.server_verifier(Role::ControlPlane, "snapshot stream").unwrap(), &[b"h2"], false).unwrap();
    assert!(handshake(server, client).await.is_err());
    let server = trust(&d.0, "control-plane").server_config(&[Role::DataPlane], "test", &[b"h2"], false).unwrap();
    let client =
        dp.client_config(dp.server_verifier(Role::ControlPlane, "snapshot stream").unwrap(), &[b"h2"], false).unwrap();
    assert!(handshake(server, client).await.is_ok());
}

#[tokio::test]
async fn rotated_certificates_are_served_without_a_restart_and_broken_ones_are_not() {
    let d = pki_dir();
    let files = pki::NodeFiles::new(&d.0, "control-plane");
    let id = FileIdentity::load(&files.cert, &files.key).unwrap();
    let first = id.current().cert[0].clone();
    // A new certificate for the same name: served from the next look at the files.
    pki::issue(&d.0, "control-plane", Role::ControlPlane, &["cp.example".into()]).unwrap();
    id.0.look_again();
    let second = id.current().cert[0].clone();
    assert_ne!(first, second, "the rotated certificate is in force");
    // A rotation caught half-way (a new key, the old certificate): the previous pair stays,
    // and the next look, once the certificate is there too, takes the new pair.
    let old_cert = std::fs::read(&files.cert).unwrap();
    pki::issue(&d.0, "control-plane", Role::ControlPlane, &["third.example".into()]).unwrap();
    let third_cert = std::fs::read(&files.cert).unwrap();
    std::fs::write(&files.cert, &old_cert).unwrap();
    id.0.look_again();
    assert_eq!(id.current().cert[0], second, "a key without its certificate is not served");
    std::fs::write(&files.cert, &third_cert).unwrap();
    id.0.look_again();
    assert_ne!(id.current().cert[0], second, "the whole new pair is served");
    let third = id.current().cert[0].clone();
    // A broken file: the previous certificate stays.
    std::fs::write(&files.cert, "not PEM").unwrap();
    id.0.look_again();
    assert_eq!(id.current().cert[0], third);
}
