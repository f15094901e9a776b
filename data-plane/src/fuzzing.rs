//! The inputs an attacker controls on the data plane's sockets, each fed to the code that
//! parses it (router rules are fuzzed in `atrium_routing::fuzzing`): what the fuzz
//! targets in `fuzz/` run, and what the stable tests below replay from their corpora (so
//! a finding stays fixed, and the targets cannot rot without CI noticing).
//!
//! Every function here must return for any input, without panicking.

use bytes::BytesMut;

/// Bytes from a client, as the HTTP/1.1 fast path reads them: request heads taken off the
/// buffer one after another, each turned into a request, its path sanitized and its
/// routing view built. The same bytes as an upstream's response head, too.
pub fn http1_head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        let Some(head) = crate::h1::server::next_head(&mut buf) else { break };
        let path = head.uri().path().to_string();
        if let Ok(clean) = atrium_routing::path_security::sanitize(&path) {
            // What every lane routes on is already clean: sanitizing again changes nothing,
            // and no dot segment is left.
            assert_eq!(atrium_routing::path_security::sanitize(&clean).as_deref(), Ok(&*clean), "{path:?}");
            let dots = |seg: &str| seg == "." || seg == ".." || seg.starts_with(".;") || seg.starts_with("..;");
            assert!(!clean.starts_with('/') || !clean.split('/').any(dots), "{path:?}");
        }
        let Some(req) = head.into_request() else { continue };
        let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let _ = atrium_routing::request::RequestView::with_client_ip(
            req.method().as_str(),
            host,
            req.uri().path(),
            req.uri().query(),
            req.headers(),
            None,
        );
    }
    crate::h1::client::fuzz_response_head(data);
}

/// Bytes on an uplink stream: a stream header, then control frames, read as a child and a
/// parent read them.
pub fn uplink_frames(data: &[u8]) {
    use atrium_proto::v1 as pb;
    use futures_util::FutureExt;
    let mut one = data;
    let _ = crate::uplink::frame::read_frame::<_, pb::StreamHeader>(&mut one).now_or_never();
    let mut frames = crate::uplink::frame::FrameReader::new(data, 4096);
    for i in 0..64u32 {
        let read = if i.is_multiple_of(2) {
            frames.next::<pb::AgentMessage>().now_or_never().map(|r| r.map(drop))
        } else {
            frames.next::<pb::ParentMessage>().now_or_never().map(|r| r.map(drop))
        };
        if !matches!(read, Some(Ok(()))) {
            break;
        }
    }
}

/// A snapshot as a data plane receives it (stream, or cache file): decoded, its hash
/// checked, and the body compiled into a route table.
pub fn snapshot(data: &[u8]) {
    use atrium_proto::v1 as pb;
    use prost::Message;
    if let Ok(s) = pb::Snapshot::decode(data) {
        let _ = crate::proxy::Compiled::from_snapshot(&s);
    }
    if let Ok(body) = pb::SnapshotBody::decode(data) {
        let _ = crate::proxy::Compiled::build(body, 1);
    }
}

/// Replays every file of `fuzz/corpus/<target>` through `f`.
#[cfg(test)]
pub(crate) fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        f(&std::fs::read(&p).unwrap());
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_corpora_replay_without_a_panic() {
        for (target, f) in
            [("http1_head", http1_head as fn(&[u8])), ("uplink_frames", uplink_frames), ("snapshot", snapshot)]
        {
            let n = replay(target, f);
            assert!(n > 0, "the {target} corpus is empty");
        }
    }
}
