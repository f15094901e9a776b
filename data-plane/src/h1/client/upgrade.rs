//! A connection that switched protocols (`101`): handed to the proxy, which joins it to the
//! client's upgraded connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Io;

/// An upstream connection after `101 Switching Protocols`: the bytes the client read past
/// the response head come first, then the connection itself.
pub struct Upgraded {
    io: Box<dyn Io>,
    pre: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded").field("pre", &self.pre.len()).finish()
    }
}

impl Upgraded {
    pub(super) fn new<IO: Io>(io: IO, pre: Bytes) -> Upgraded {
        Upgraded { io: Box::new(io), pre }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where a response carries its switched connection (a response extension must be
/// cloneable; the connection is taken once).
#[derive(Clone, Debug)]
pub struct UpgradeSlot(Arc<Mutex<Option<Upgraded>>>);

impl UpgradeSlot {
    pub(super) fn new(u: Upgraded) -> UpgradeSlot {
        UpgradeSlot(Arc::new(Mutex::new(Some(u))))
    }

    /// The switched connection of `resp`, if it has one (taken: a second call gets none).
    pub fn take<B>(resp: &mut http::Response<B>) -> Option<Upgraded> {
        resp.extensions_mut().remove::<UpgradeSlot>()?.0.lock().ok()?.take()
    }
}
