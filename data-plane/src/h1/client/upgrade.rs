//! A connection that switched protocols (`101`): handed to the proxy, which joins it to the
//! client's upgraded connection.

use std::sync::{Arc, Mutex};

use super::Io;
use crate::h1::Prefixed;

/// An upstream connection after `101 Switching Protocols`: the bytes the client read past
/// the response head come first, then the connection itself.
pub type Upgraded = Prefixed<Box<dyn Io>>;

/// The switched connection `io`, with the bytes read past the head.
pub(super) fn upgraded<IO: Io>(io: IO, pre: bytes::Bytes) -> Upgraded {
    Prefixed::new(pre, Box::new(io))
}

/// Where a response carries its switched connection (a response extension must be
/// cloneable; the connection is taken once).
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Mutex<Option<Upgraded>>>);

impl std::fmt::Debug for UpgradeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpgradeSlot")
    }
}

impl UpgradeSlot {
    pub(super) fn new(u: Upgraded) -> UpgradeSlot {
        UpgradeSlot(Arc::new(Mutex::new(Some(u))))
    }

    /// The switched connection of `resp`, if it has one (taken: a second call gets none).
    pub fn take<B>(resp: &mut http::Response<B>) -> Option<Upgraded> {
        resp.extensions_mut().remove::<UpgradeSlot>()?.0.lock().ok()?.take()
    }
}
